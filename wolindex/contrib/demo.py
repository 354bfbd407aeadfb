"""The main job: on real data when it can be had (debian-lm-100k from WOLINDEX_DATA, else debian-cbow, built
on the spot when apt-get and gensim are there), else on synthetic data, said plainly: build every method,
tune each approximate one to a P@1 target (0.95 by default; none of the FAISS baselines reaches 0.99 on
debian-lm-100k) on held-out queries, and print accuracy and speed against exact search and the NumPy / FAISS
exact baselines, all measured in one run."""
from __future__ import annotations

from functools import partial

import numpy as np

from .. import build
from ..methods import METHODS
from ..metrics import p_at_k, true_recall_at_k
from .datasets import DATA_ENV, debian_cbow, debian_cbow_path, debian_lm_100k, debian_lm_100k_path, synthetic
from .timing import compare_speed, machine_info, numpy_topk, set_threads

K = 10
EXACT_BASELINES = ("exact", "faiss-flat")
# the methods the demo builds besides exact ('ds' is left out: its build takes too long for a demo)
DEMO_METHODS = ("adaptive", "lss", "faiss-flat", "faiss-ivf", "faiss-hnsw", "faiss-ivfpq")


def _dataset(name: str | None, say, synthetic_classes: int):
    if name in (None, "debian-lm-100k") and debian_lm_100k_path() is not None:
        say(f"data: debian-lm-100k (real LM output layer) from {DATA_ENV}={debian_lm_100k_path().parent}")
        return debian_lm_100k()
    if name == "debian-lm-100k":
        raise SystemExit(f"debian-lm-100k not found: set {DATA_ENV} to the folder holding debian-lm-100k/")
    if name in (None, "debian-cbow"):
        if debian_cbow_path() is None:
            say("data: building debian-cbow from Debian packages (once, a few minutes) ...")
        try:
            ds = debian_cbow(say=lambda msg: say(f"  {msg}"))
            say(f"data: debian-cbow (real word2vec CBOW output layer) from {debian_cbow_path()}")
            return ds
        except (ImportError, OSError, FileNotFoundError) as err:
            if name == "debian-cbow":
                raise SystemExit(f"debian-cbow could not be built: {err}") from None
            say(f"  debian-cbow could not be built here ({type(err).__name__}: {err})")
    ds = synthetic(n_classes=synthetic_classes, dim=256, n_train=20_000, n_test=6_000)
    why = "as asked" if name == "synthetic" else "no real data could be had here"
    say(f"data: SYNTHETIC ({ds.description}), {why}: these numbers are not those of a real model")
    return ds


def _demo_methods(say) -> list[str]:
    """DEMO_METHODS; the FAISS ones only when faiss is installed."""
    names = [m for m in DEMO_METHODS if m in METHODS]
    try:
        import faiss  # noqa: F401
    except ImportError:
        say("(faiss-cpu not installed: FAISS methods skipped; pip install 'wolindex[faiss]')")
        names = [m for m in names if not m.startswith("faiss")]
    return names


def run_demo(data: str | None = None, threads: int = 2, n_queries: int = 2048, n_tune: int = 1024,
             batch_large: int = 256, target_p1: float = 0.95, methods: list[str] | None = None, say=print,
             synthetic_classes: int = 100_000) -> dict:
    """Build, tune, measure, print; returns the measured figures."""
    set_threads(threads)
    ds = _dataset(data, say, synthetic_classes)
    W = np.ascontiguousarray(ds.W, dtype=np.float32)
    b = np.asarray(ds.b, dtype=np.float32)
    H_tune = np.ascontiguousarray(ds.H_test[:n_tune], dtype=np.float32)
    H = np.ascontiguousarray(ds.H_test[n_tune:n_tune + n_queries], dtype=np.float32)
    y = np.asarray(ds.y_test[n_tune:n_tune + n_queries])
    info = machine_info()
    say(f"D={W.shape[0]:,} classes, d={W.shape[1]}; {n_tune:,} queries to tune on, {H.shape[0]:,} others to "
        f"measure on; k={K}; {threads} threads on {info['cpu']}, float32")

    ref_s, ref_l = numpy_topk(W, b, H, K)
    indexes = {"exact": build(W, b, method="exact")}
    for name in methods if methods is not None else _demo_methods(say):
        say(f"building {name} ...")
        index = build(W, b, method=name, train=ds.H_train, labels=ds.y_train, class_counts=ds.class_counts,
                      verbose=False)
        if name not in EXACT_BASELINES:
            try:
                index.tune(H_tune, K, target_p1=target_p1, verbose=False)
            except ValueError as err:
                say(f"  {name}: {err}; using its last (most thorough) setting")
                index.default_search = index.search_params(**index.method.tuning_grid(K)[-1]).to_dict()
        indexes[name] = index

    rows = {}
    for name, index in indexes.items():
        s, lab, n_scored = index.search(H, K, return_n_scored=True)
        rows[name] = {"settings": {k: v for k, v in index.default_search.items() if k != "engine"},
                      "P@1": p_at_k(lab, ref_l, 1, scores=s, exact_scores=ref_s),
                      "P@10": p_at_k(lab, ref_l, K, scores=s, exact_scores=ref_s),
                      "R_true@1": true_recall_at_k(lab, y, 1), "candidates": float(np.mean(n_scored))}
    runners = {"numpy matmul + argpartition": lambda Hb: numpy_topk(W, b, Hb, K)}
    runners.update({name: partial(ix.search, k=K) for name, ix in indexes.items()})
    say("timing ...")
    small = compare_speed(runners, H, 1, 100)
    large = compare_speed(runners, H, batch_large, 5, warmup=1)
    rows["numpy matmul + argpartition"] = {"settings": {}, "P@1": 1.0, "P@10": 1.0,
                                           "R_true@1": true_recall_at_k(ref_l, y, 1), "candidates": W.shape[0]}
    for name in rows:
        rows[name]["qps_b1"] = small[name]["qps"]
        rows[name][f"qps_b{batch_large}"] = large[name]["qps"]

    _print_table(say, rows, H.shape[0], n_tune, target_p1, batch_large)
    if ds.reference:
        say("(data card, full softmax on the whole split: " + ", ".join(f"{n} {v}" for n, v in ds.reference.items())
            + ")")
    return {"dataset": ds.name, "rows": rows, "machine": info}


def _print_table(say, rows: dict, n_queries: int, n_tune: int, target_p1: float, batch_large: int) -> None:
    """The demo's table: accuracy, candidates and speed per method, speed also as a ratio to exact."""
    say(f"\naccuracy on {n_queries:,} held-out queries (P@k against exact top-k, tie-aware; R_true@1 = true label "
        f"first); approximate methods tuned to P@1 >= {target_p1} on the other {n_tune:,}; speed = queries/s, "
        f"median over distinct batches after warm-up, x = speedup over wolindex exact in the same run")
    say(f"{'method':28s} {'settings':28s} {'P@1':>6s} {'P@10':>6s} {'R@1':>6s} {'classes':>8s} "
        f"{'b=1 q/s':>9s} {'x':>6s} {f'b={batch_large} q/s':>10s} {'x':>6s}")
    e1, eL = rows["exact"]["qps_b1"], rows["exact"][f"qps_b{batch_large}"]
    for name, r in rows.items():
        settings = ",".join(f"{k}={v}" for k, v in r["settings"].items())
        say(f"{name:28s} {settings:28s} {r['P@1']:6.3f} {r['P@10']:6.3f} {r['R_true@1']:6.3f} {r['candidates']:8.0f} "
            f"{r['qps_b1']:9.1f} {r['qps_b1'] / e1:6.2f} {r[f'qps_b{batch_large}']:10.1f} "
            f"{r[f'qps_b{batch_large}'] / eL:6.2f}")
