"""Build the `debian-cbow` data set on any Debian-based machine: a word2vec CBOW output layer over the text
of four Debian packages, with held-out context windows as queries.

Steps: `apt-get download` dict-gcide, wordnet-base, linux-doc-6.1 and python3.11-doc; extract their text
(the GCIDE dictionary, WordNet glosses, the kernel's .rst documentation, Python's .rst sources); lower-case
and tokenize with ``[a-z0-9]+(?:'[a-z]+)?``; cut the token stream into 10,000-token chunks assigned at random
(seed 0) to train (95 %) and test (5 %); train gensim's CBOW (128-d, window 5, 5 negatives, words seen at
least twice, single worker and a fixed hash, so the result is deterministic) on the train chunks, without
frequent-word subsampling: subsampling would change which (context, word) pairs the model fits and break
the negative-sampling-to-softmax identity below.

The output layer is the negative-sampling output matrix ``syn1neg`` with the bias
``0.75 log count_c - log sum_c' count_c'^0.75 + log(negatives)``: at the optimum of negative sampling
``h . w_c = log p(c | h) - log(negatives * P_noise(c))``, so ``h . w_c + b_c`` are softmax logits. A query is
the mean of the input vectors of the (in-vocabulary) words within 5 positions of a word (gensim's CBOW
hidden state), its label that word. Needs `gensim` (pip install 'wolindex[data]'), apt-get and dpkg-deb.
"""
from __future__ import annotations

import gzip
import json
import re
import subprocess
import tempfile
import zlib
from pathlib import Path

import numpy as np

PACKAGES = ("dict-gcide", "wordnet-base", "linux-doc-6.1", "python3.11-doc")
TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
CHUNK = 10_000
DIM, WINDOW, NEGATIVE, MIN_COUNT, EPOCHS = 128, 5, 5, 2, 5


def _download_and_extract(workdir: Path, say) -> Path:
    root = workdir / "root"
    root.mkdir()
    say(f"apt-get download {' '.join(PACKAGES)}")
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=workdir, check=True, capture_output=True)
    for deb in sorted(workdir.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def _texts(root: Path):
    """The packages' text documents, in a fixed order."""
    share = root / "usr" / "share"
    with gzip.open(share / "dictd" / "gcide.dict.dz", "rt", encoding="utf-8", errors="replace") as f:
        yield f.read()
    for part in ("noun", "verb", "adj", "adv"):
        lines = (share / "wordnet" / f"data.{part}").read_text(encoding="utf-8", errors="replace").splitlines()
        yield "\n".join(line.split(" | ", 1)[1] for line in lines if " | " in line and not line.startswith("  "))
    for path in sorted((share / "doc" / "linux-doc-6.1" / "Documentation").rglob("*.rst.gz")):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            yield f.read()
    for path in sorted((share / "doc" / "python3.11" / "html" / "_sources").rglob("*.rst.txt")):
        yield path.read_text(encoding="utf-8", errors="replace")


def _stable_hash(text: str) -> int:
    """A hash that does not change between Python runs (gensim seeds its initial vectors with it)."""
    return zlib.crc32(text.encode("utf-8"))


def _windows(ids: np.ndarray, centres: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """CBOW hidden states: mean input vector of the words within WINDOW of each centre (same chunk)."""
    H = np.empty((centres.size, vectors.shape[1]), np.float32)
    for n, i in enumerate(centres):
        context = np.r_[ids[max(0, i - WINDOW):i], ids[i + 1:i + 1 + WINDOW]]
        H[n] = vectors[context].mean(axis=0)
    return H


def _queries(chunks: list[np.ndarray], n: int, vectors: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    """n (hidden state, centre word) pairs drawn at random from the chunks (in-vocabulary ids only)."""
    sizes = np.array([c.size for c in chunks])
    pick = np.sort(rng.choice(sizes.sum(), size=min(n, int(sizes.sum())), replace=False))
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    owner = np.searchsorted(starts, pick, side="right") - 1
    H, y = [], []
    for c in np.unique(owner):
        centres = pick[owner == c] - starts[c]
        H.append(_windows(chunks[c], centres, vectors))
        y.append(chunks[c][centres])
    return np.concatenate(H), np.concatenate(y).astype(np.int32)


def build_debian_cbow(out: Path, n_train_queries: int = 200_000, n_test_queries: int = 50_000,
                      say=print) -> Path:
    """Download, extract, tokenize, train, and write the data set to `out` (a new folder); returns it."""
    from gensim.models import Word2Vec

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        root = _download_and_extract(Path(tmp), say)
        say("tokenizing")
        tokens = [t for text in _texts(root) for t in TOKEN.findall(text.lower())]
    chunks = [tokens[i:i + CHUNK] for i in range(0, len(tokens), CHUNK)]
    is_test = np.random.default_rng(0).random(len(chunks)) < 0.05
    train = [c for c, t in zip(chunks, is_test) if not t]
    test = [c for c, t in zip(chunks, is_test) if t]
    say(f"{len(tokens):,} tokens, {len(train)} train / {len(test)} test chunks; training CBOW ({EPOCHS} epochs)")
    model = Word2Vec(sentences=train, vector_size=DIM, window=WINDOW, negative=NEGATIVE, sg=0, cbow_mean=1,
                     min_count=MIN_COUNT, sample=0, workers=1, epochs=EPOCHS, seed=0, hashfxn=_stable_hash)
    vocab = list(model.wv.index_to_key)
    index_of = model.wv.key_to_index
    counts = np.array([model.wv.get_vecattr(w, "count") for w in vocab], np.int64)
    W = np.ascontiguousarray(model.syn1neg, dtype=np.float32)
    b = (0.75 * np.log(counts) - np.log((counts ** 0.75).sum()) + np.log(NEGATIVE)).astype(np.float32)

    def encode(chunk_list):
        return [np.array([index_of[t] for t in c if t in index_of], np.int64) for c in chunk_list]

    rng = np.random.default_rng(1)
    vectors = model.wv.vectors.astype(np.float32)
    H_train, y_train = _queries(encode(train), n_train_queries, vectors, rng)
    H_test, y_test = _queries(encode(test), n_test_queries, vectors, rng)
    tmp_out = out.parent / f".{out.name}.partial"
    tmp_out.mkdir(parents=True, exist_ok=True)
    for name, a in {"W": W, "b": b, "class_counts": counts, "H_train": H_train.astype(np.float16),
                    "y_train": y_train, "H_test": H_test.astype(np.float16), "y_test": y_test}.items():
        np.save(tmp_out / f"{name}.npy", a)
    (tmp_out / "vocab.json").write_text(json.dumps(vocab))
    logits_top1 = _top1(W, b, H_test.astype(np.float16).astype(np.float32))
    (tmp_out / "CARD.md").write_text(_card(len(tokens), W.shape, len(H_train), len(H_test),
                                            float(np.mean(logits_top1 == y_test))))
    tmp_out.rename(out)
    say(f"wrote {out}")
    return out


def _top1(W, b, H):
    from ..engine import exact_topk

    return exact_topk(W, b, H, 1)[1][:, 0]


def _card(n_tokens, shape, n_train, n_test, recall1) -> str:
    return f"""# debian-cbow — a word2vec CBOW output layer over Debian text

Built by `wolindex.contrib.debian_cbow.build_debian_cbow` (see its docstring for every step).

| file | shape / dtype | what |
|---|---|---|
| `W.npy` | ({shape[0]}, {shape[1]}) float32 | CBOW output vectors (syn1neg); class id = frequency rank |
| `b.npy` | ({shape[0]},) float32 | 0.75 log count - log sum count^0.75 + log 5: turns scores into softmax logits |
| `class_counts.npy` | ({shape[0]},) int64 | training counts |
| `H_train.npy`, `y_train.npy` | ({n_train}, {shape[1]}) float16, int32 | CBOW states of train windows, centre words |
| `H_test.npy`, `y_test.npy` | ({n_test}, {shape[1]}) float16, int32 | the same from held-out chunks |
| `vocab.json` | list of str | word of each class id |

Corpus: {", ".join(PACKAGES)} ({n_tokens:,} tokens), 10,000-token chunks, 5 % held out (seed 0).
Training: gensim CBOW, d={DIM}, window {WINDOW}, {NEGATIVE} negatives, min count {MIN_COUNT}, no subsampling,
{EPOCHS} epochs, one worker. Full-softmax true-label recall@1 on H_test: {recall1:.4f}.
"""
