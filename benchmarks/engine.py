"""Engine benchmark (issue 2): the Numba exact engine against NumPy (matmul + argpartition) and
faiss.IndexFlatIP, and the candidate engine scoring a fixed 1 % of the classes per query.

    WOLINDEX_DATA=../shared/data python benchmarks/engine.py --threads 2

Writes benchmarks/results/engine-<data>-<date>.json (its table: benchmarks/report.py). All speeds are from
one run, methods interleaved over the same distinct query batches, median per call after warm-up."""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import wolindex
from wolindex.contrib.timing import compare_speed, machine_info, numpy_topk, set_threads
from wolindex.contrib.datasets import debian_lm_100k, debian_lm_100k_path, synthetic
from wolindex.engine import Buckets, PackedRows, candidate_topk
from wolindex._numeric import with_one_column
from report import engine_block

RESULTS = Path(__file__).parent / "results"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch1", type=int, default=300, help="single-query calls timed")
    ap.add_argument("--batch256", type=int, default=15, help="batch-256 calls timed")
    ap.add_argument("--fraction", type=float, default=0.01, help="classes per query for the candidate engine")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    set_threads(a.threads)
    if debian_lm_100k_path() is not None:
        ds = debian_lm_100k()
    else:
        print("WOLINDEX_DATA has no debian-lm-100k: running on synthetic data")
        ds = synthetic(n_classes=100_000, dim=256, n_train=1000, n_test=8000)
    W = np.ascontiguousarray(ds.W, dtype=np.float32)
    b = np.asarray(ds.b, np.float32)
    H = np.ascontiguousarray(ds.H_test[:8192], dtype=np.float32)
    D, k = W.shape[0], a.k
    index = wolindex.build(W, b)
    # the faiss-flat method's own faiss.IndexFlatIP over [W, b], searched directly (no exact rescoring)
    flat = wolindex.build(W, b, method="faiss-flat", verbose=False).method.faiss_index

    # the candidate engine's workload: a random partition of the classes into 1/fraction buckets and one
    # bucket per query, picked by a stand-in router (a hash of the query's first coordinate, nearly free),
    # so each query scores `fraction` of the classes, their rows scattered over W
    rng = np.random.default_rng(0)
    n_buckets = int(round(1 / a.fraction))
    buckets = Buckets.from_assignment(rng.permutation(D) % n_buckets, n_buckets)
    packed = PackedRows.of(buckets, W, b)

    def candidates(path, rows):
        def run(Hb):
            probes = (np.abs(Hb[:, :1]) * 1e6).astype(np.int64) % n_buckets
            return candidate_topk(W, b, Hb, k, buckets, probes, path=path, packed=rows)
        return run

    runners = {
        "numpy matmul + argpartition": lambda Hb: numpy_topk(W, b, Hb, k),
        "faiss IndexFlatIP": lambda Hb: flat.search(with_one_column(Hb), k),
        "wolindex exact": lambda Hb: index.search(Hb, k),
        f"candidates {a.fraction:.0%}, fused, rows gathered from W": candidates("fused", None),
        f"candidates {a.fraction:.0%}, fused, packed rows": candidates("fused", packed),
        f"candidates {a.fraction:.0%}, grouped, packed rows": candidates("grouped", packed),
    }
    t0 = time.time()
    res1 = compare_speed(runners, H, 1, a.batch1)
    res256 = compare_speed(runners, H, 256, a.batch256, warmup=1)
    exact1, exact256 = res1["wolindex exact"]["qps"], res256["wolindex exact"]["qps"]
    rows = []
    for name in runners:
        rows.append({"method": name, "batch1_qps": res1[name]["qps"], "batch1_vs_exact": res1[name]["qps"] / exact1,
                     "batch256_qps": res256[name]["qps"], "batch256_vs_exact": res256[name]["qps"] / exact256})
    out = {"benchmark": "engine", "dataset": ds.name, "n_classes": D, "dim": W.shape[1], "k": k,
           "threads": a.threads, "dtype": "float32", "machine": machine_info(),
           "protocol": f"median per call over {a.batch1} single queries / {a.batch256} batches of 256, "
                       f"distinct queries, methods interleaved in 5 rounds, 2 warm-up calls",
           "candidate_fraction": a.fraction, "seconds": time.time() - t0,
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    path = a.out or RESULTS / f"engine-{ds.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(engine_block(path))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
