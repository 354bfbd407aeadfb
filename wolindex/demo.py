"""The main job: build indexes on real data when it can be had (else synthetic, said plainly) and print
their accuracy and speed against exact search and the NumPy / FAISS exact baselines, measured in one run."""
from __future__ import annotations

import numpy as np

from . import build
from .bench import compare_speed, faiss_flat, machine_info, numpy_topk, set_threads
from .data import DATA_ENV, debian_lm_100k, debian_lm_100k_path, synthetic
from .metrics import p_at_k, true_recall_at_k

K = 10


def _dataset(name: str | None, say, synthetic_classes: int):
    if name in (None, "debian-lm-100k") and debian_lm_100k_path() is not None:
        ds = debian_lm_100k()
        say(f"data: debian-lm-100k (real LM output layer) from {DATA_ENV}={debian_lm_100k_path().parent}")
        return ds
    if name == "debian-lm-100k":
        raise SystemExit(f"debian-lm-100k not found: set {DATA_ENV} to the folder holding debian-lm-100k/")
    if name is None:
        say(f"data: SYNTHETIC (no real data: {DATA_ENV} is unset or has no debian-lm-100k/); "
            f"numbers below are not those of a real model")
    ds = synthetic(n_classes=synthetic_classes, dim=256, n_train=4_000, n_test=4_000)
    if name == "synthetic":
        say(f"data: {ds.description}")
    return ds


def run_demo(data: str | None = None, threads: int = 2, n_queries: int = 2048, batch_large: int = 256,
             say=print, synthetic_classes: int = 100_000) -> dict:
    """Build, measure, print; returns the measured figures."""
    set_threads(threads)
    ds = _dataset(data, say, synthetic_classes)
    W = np.ascontiguousarray(ds.W, dtype=np.float32)
    b = np.asarray(ds.b, dtype=np.float32)
    H = np.ascontiguousarray(ds.H_test[:n_queries], dtype=np.float32)
    y = np.asarray(ds.y_test[:n_queries])
    info = machine_info()
    say(f"D={W.shape[0]:,} classes, d={W.shape[1]}, {H.shape[0]:,} test queries, k={K}; "
        f"{threads} threads on {info['cpu']}, float32")

    index = build(W, b, method="exact")
    ref_s, ref_l = numpy_topk(W, b, H, K)
    s, lab = index.search(H, K)
    acc = {"P@1": p_at_k(lab, ref_l, 1, scores=s, exact_scores=ref_s),
           "P@10": p_at_k(lab, ref_l, K, scores=s, exact_scores=ref_s),
           **{f"R_true@{k}": true_recall_at_k(lab, y, k) for k in (1, 5, 10)}}
    say("\naccuracy of wolindex exact against NumPy's full logits: "
        + ", ".join(f"{n} {v:.4f}" for n, v in acc.items()))
    if ds.reference:
        say("  (data card, full softmax: " + ", ".join(f"{n} {v}" for n, v in ds.reference.items()) + ")")

    runners = {"numpy matmul + argpartition": lambda Hb: numpy_topk(W, b, Hb, K)}
    try:
        runners["faiss IndexFlatIP"] = (lambda f: (lambda Hb: f(Hb, K)))(faiss_flat(W, b))
    except ImportError:
        say("(faiss-cpu not installed: the FAISS baseline is skipped; pip install wolindex[faiss])")
    runners["wolindex exact (numba)"] = lambda Hb: index.search(Hb, K)

    say("\nspeed: queries/s, median over distinct batches after warm-up; x = speedup over NumPy")
    say(f"  {'method':32s} {'batch 1':>10s} {'x':>6s} {f'batch {batch_large}':>11s} {'x':>6s}")
    small = compare_speed(runners, H, 1, 100)
    large = compare_speed(runners, H, batch_large, 5, warmup=1)
    results = {name: {"batch1_qps": small[name]["qps"], f"batch{batch_large}_qps": large[name]["qps"]}
               for name in runners}
    base = results["numpy matmul + argpartition"]
    for name, r in results.items():
        say(f"  {name:32s} {r['batch1_qps']:10.1f} {r['batch1_qps'] / base['batch1_qps']:6.2f}"
            f" {r[f'batch{batch_large}_qps']:11.1f} {r[f'batch{batch_large}_qps'] / base[f'batch{batch_large}_qps']:6.2f}")
    return {"dataset": ds.name, "accuracy": acc, "speed": results, "machine": info}
