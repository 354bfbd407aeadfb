"""Why a search slows down right after a model layer, and what helps: each option timed at batch 1 on
debian-lm-100k (or the synthetic layer without it), clean and right after an untimed NumPy product
(1, d) @ (d, 16 d), the options interleaved in one run.

    WOLINDEX_DATA=../shared/data python benchmarks/blas_spin.py

Options: the default parallel search; a search on the calling thread only (one Numba thread); OpenBLAS held
to one thread during the search (threadpoolctl); the layer's product on one BLAS thread; and
set_blas_policy('park') (stop OpenBLAS's spinning workers before the search). A second process repeats the
default with OPENBLAS_THREAD_TIMEOUT=4 (workers sleep at once), timing the layer's product too."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def measure(n_calls: int) -> dict:
    import numba
    from threadpoolctl import threadpool_limits

    import wolindex
    from wolindex.contrib.datasets import debian_lm_100k_or_synthetic
    from wolindex.contrib.timing import compare_speed, machine_info, set_threads

    set_threads(2)
    ds = debian_lm_100k_or_synthetic()
    W, b = np.asarray(ds.W, np.float32), np.asarray(ds.b, np.float32)
    H = np.ascontiguousarray(ds.H_test[:4096], np.float32)
    M = np.random.default_rng(0).standard_normal((W.shape[1], 16 * W.shape[1])).astype(np.float32)
    indexes = {"exact": wolindex.build(W, b, verbose=False),
               "screen": wolindex.build(W, b, method="screen", verbose=False)}
    indexes["screen"].default_search = indexes["screen"].search_params(n_candidates=16).to_dict()

    def layer(h):
        return h @ M

    def layer_one_thread(h):
        with threadpool_limits(1, user_api="blas"):
            return h @ M

    def variant(index, how):
        def run(h):
            if how == "calling thread":
                numba.set_num_threads(1)
                try:
                    return index.search(h, 10)
                finally:
                    numba.set_num_threads(2)
            if how == "blas held to 1 thread":
                with threadpool_limits(1, user_api="blas"):
                    return index.search(h, 10)
            if how == "park":
                wolindex.set_blas_policy("park")
                try:
                    return index.search(h, 10)
                finally:
                    wolindex.set_blas_policy("keep")
            return index.search(h, 10)
        return run

    hows = ("default", "calling thread", "blas held to 1 thread", "park")
    runners = {f"{name} / {how}": variant(index, how) for name, index in indexes.items() for how in hows}
    out = {"machine": machine_info(), "OPENBLAS_THREAD_TIMEOUT": os.environ.get("OPENBLAS_THREAD_TIMEOUT", ""),
           "layer": f"(1, {W.shape[1]}) @ ({W.shape[1]}, {M.shape[1]}) float32", "dataset": ds.name, "ms": {}}
    for name, before in (("clean", None), ("after layer", layer), ("after layer on 1 BLAS thread", layer_one_thread)):
        speed = compare_speed(runners, H, 1, n_calls, warmup=5, before=before)
        out["ms"][name] = {k: v["median_s"] * 1e3 for k, v in speed.items()}
    t0 = time.perf_counter()
    for i in range(200):
        layer(H[i:i + 1])
    out["layer_ms"] = (time.perf_counter() - t0) / 200 * 1e3
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(measure(a.calls)))
        return None
    result = {"default": measure(a.calls)}
    env = {**os.environ, "OPENBLAS_THREAD_TIMEOUT": "4"}
    child = subprocess.run([sys.executable, __file__, "--child", "--calls", str(a.calls)], env=env, check=True,
                           capture_output=True, text=True)
    result["OPENBLAS_THREAD_TIMEOUT=4"] = json.loads(child.stdout.strip().splitlines()[-1])
    result["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for run, res in result.items():
        if run != "date":
            print(run, f"layer {res['layer_ms']:.3f} ms")
            for mode, row in res["ms"].items():
                print(f"  {mode:30s}", "  ".join(f"{k} {v:.2f}" for k, v in row.items()))
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"blas-spin-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
