"""Data sets for benchmarks, tests and the demo, behind one registry.

- ``debian-lm-100k``: a real word-level LM output layer (D = 100,000, d = 256) with real hidden states,
  read from the folder named by the environment variable WOLINDEX_DATA (its CARD.md describes it).
- ``debian-cbow``: a word2vec CBOW output layer built on the spot from Debian packages (see
  wolindex.contrib.debian_cbow), read from WOLINDEX_DATA/debian-cbow or the cache folder (WOLINDEX_CACHE, default
  ~/.cache/wolindex), and built there on first use.
- ``synthetic``: a seeded generator with Zipfian class frequencies and clustered hidden states."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..params import check_int

DATA_ENV = "WOLINDEX_DATA"
CACHE_ENV = "WOLINDEX_CACHE"


@dataclass
class Dataset:
    """An output layer plus queries. W (D, d) and H_* (N, d) are float16 or float32 as stored;
    y_* (N,) int; class_counts (D,) int64 training frequencies."""

    name: str
    W: np.ndarray
    b: np.ndarray
    H_train: np.ndarray
    y_train: np.ndarray
    H_test: np.ndarray
    y_test: np.ndarray
    class_counts: np.ndarray
    description: str
    reference: dict = field(default_factory=dict)

    @property
    def n_classes(self) -> int:
        return self.W.shape[0]

    @property
    def dim(self) -> int:
        return self.W.shape[1]


def data_dir() -> Path | None:
    """The folder named by WOLINDEX_DATA, or None when unset."""
    value = os.environ.get(DATA_ENV)
    return Path(value) if value else None


def debian_lm_100k_path() -> Path | None:
    """Where debian-lm-100k lies, or None when WOLINDEX_DATA is unset or lacks it."""
    root = data_dir()
    if root is None:
        return None
    folder = root / "debian-lm-100k"
    return folder if (folder / "W.npy").exists() else None


def debian_lm_100k(extra_train: int = 0, extra_seed: int = 2) -> Dataset:
    """The debian-lm-100k layer; test split = the card's validation split (25,600 queries).

    extra_train: this many more training rows (hidden states of the train text with their next words)
    appended to the shipped 153,600, drawn by the folder's hidden.py with seed extra_seed into the cache
    folder on first use (about 8 minutes per million rows on 2 cores)."""
    folder = debian_lm_100k_path()
    if folder is None:
        raise FileNotFoundError(f"debian-lm-100k: set {DATA_ENV} to the folder that holds debian-lm-100k/")
    W = np.load(folder / "W.npy", mmap_mode="r")
    with np.load(folder / "tokens_train.npz") as z:
        counts = np.bincount(z["tokens"], minlength=W.shape[0]).astype(np.int64)
    H_train, y_train = np.load(folder / "H_train.npy", mmap_mode="r"), np.load(folder / "y_train.npy")
    if extra_train:
        more = drawn_train_rows(folder, extra_train, extra_seed)
        H_train = np.concatenate([H_train, np.load(more / "H.npy", mmap_mode="r")[:extra_train]])
        y_train = np.concatenate([y_train, np.load(more / "y.npy")[:extra_train]])
    return Dataset(
        name="debian-lm-100k", W=W, b=np.load(folder / "b.npy"), H_train=H_train, y_train=y_train,
        H_test=np.load(folder / "H_valid.npy", mmap_mode="r"), y_test=np.load(folder / "y_valid.npy"),
        class_counts=counts,
        description="word-level transformer LM on Debian text, D=100,000, d=256 (float16 weights)"
                    + (f", {len(y_train):,} training rows" if extra_train else ""),
        reference={"R_true@1": 0.3014, "R_true@5": 0.4846, "R_true@10": 0.5604},
    )


def drawn_train_rows(folder: Path, n: int, seed: int) -> Path:
    """The cache folder holding H.npy / y.npy with at least n rows drawn by folder/hidden.py (seed), made now
    when missing."""
    check_int("extra_train", n, 1)
    check_int("extra_seed", seed, 0)
    out = cache_dir() / f"debian-lm-100k-more-n{n}-seed{seed}"
    if not (out / "y.npy").exists():
        subprocess.run([sys.executable, str(folder / "hidden.py"), "--n", str(n), "--seed", str(seed),
                        "--out", str(out)], check=True)
    return out


def cache_dir() -> Path:
    """Where built data sets are kept: WOLINDEX_CACHE, else ~/.cache/wolindex."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "wolindex")


def debian_cbow_path() -> Path | None:
    """A built debian-cbow folder (in WOLINDEX_DATA or the cache), or None."""
    for root in (data_dir(), cache_dir()):
        if root is not None and (root / "debian-cbow" / "W.npy").exists():
            return root / "debian-cbow"
    return None


def debian_cbow(build: bool = True, say=print) -> Dataset:
    """The debian-cbow layer, built into the cache folder first if it is nowhere yet (a few minutes;
    needs apt-get, dpkg-deb and gensim)."""
    folder = debian_cbow_path()
    if folder is None:
        if not build:
            raise FileNotFoundError("debian-cbow: not built yet; run python datasets/debian_cbow.py")
        from .debian_cbow import build_debian_cbow

        folder = build_debian_cbow(cache_dir() / "debian-cbow", say=say)
    return Dataset(
        name="debian-cbow", W=np.load(folder / "W.npy"), b=np.load(folder / "b.npy"),
        H_train=np.load(folder / "H_train.npy", mmap_mode="r"), y_train=np.load(folder / "y_train.npy"),
        H_test=np.load(folder / "H_test.npy", mmap_mode="r"), y_test=np.load(folder / "y_test.npy"),
        class_counts=np.load(folder / "class_counts.npy"),
        description="word2vec CBOW output layer over Debian text (see its CARD.md)",
    )


def synthetic(n_classes: int = 10_000, dim: int = 64, n_train: int = 20_000, n_test: int = 2_000,
              n_clusters: int | None = None, zipf: float = 1.1, seed: int = 0) -> Dataset:
    """A seeded output layer with the structure real ones have.

    Class c has frequency ~ (c + 1)^-zipf (ids sorted by frequency, as LM vocabularies are) and a bias
    log p_c; classes fall into n_clusters (default sqrt(D)) groups whose rows share a centre; a query for
    true label y points along W[y] plus its cluster centre plus Gaussian noise. float32 throughout."""
    rng = np.random.default_rng(seed)
    n_clusters = n_clusters or max(2, int(np.sqrt(n_classes)))
    p = (np.arange(n_classes) + 1.0) ** -zipf
    p /= p.sum()
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    cluster = rng.integers(0, n_clusters, n_classes)
    W = np.empty((n_classes, dim), np.float32)
    for lo in range(0, n_classes, 1 << 18):
        hi = min(n_classes, lo + (1 << 18))
        W[lo:hi] = (centres[cluster[lo:hi]] + 0.7 * rng.standard_normal((hi - lo, dim), np.float32)) / np.sqrt(dim)
    b = np.log(p).astype(np.float32)

    def queries(n):
        y = rng.choice(n_classes, size=n, p=p)
        u = W[y] / np.linalg.norm(W[y], axis=1, keepdims=True)
        c = centres[cluster[y]] / np.linalg.norm(centres[cluster[y]], axis=1, keepdims=True)
        H = 3.0 * u + 2.0 * c + 12.0 * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
        return H.astype(np.float32), y.astype(np.int64)

    H_train, y_train = queries(n_train)
    H_test, y_test = queries(n_test)
    counts = np.bincount(y_train, minlength=n_classes).astype(np.int64)
    return Dataset(
        name="synthetic", W=W, b=b, H_train=H_train, y_train=y_train, H_test=H_test, y_test=y_test,
        class_counts=counts,
        description=f"synthetic (seed {seed}): D={n_classes}, d={dim}, Zipf {zipf}, {n_clusters} clusters",
    )


DATASETS = {"debian-lm-100k": debian_lm_100k, "debian-cbow": debian_cbow, "synthetic": synthetic}


def load_dataset(name: str, **options) -> Dataset:
    """A data set by registry name; options go to its loader (for example synthetic's n_classes)."""
    if name not in DATASETS:
        raise ValueError(f"name: expected one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name](**options)


def debian_lm_100k_or_synthetic(n_test: int = 4096) -> Dataset:
    """debian-lm-100k when WOLINDEX_DATA provides it, else a synthetic layer of its shape (D = 100,000,
    d = 256) with n_test test queries: for the benchmarks that time a layer of that size."""
    try:
        return load_dataset("debian-lm-100k")
    except FileNotFoundError:
        return load_dataset("synthetic", n_classes=100_000, dim=256, n_train=2000, n_test=n_test)
