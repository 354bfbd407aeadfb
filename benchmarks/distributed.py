"""Distributed benchmark (issue 19) on one machine: ShardedIndex throughput against the number of shard actors
(each shard on its own actor), Ray Data map_batches throughput against the actor pool size, and the cost of
merging the shards' top-k lists per query.

    WOLINDEX_DATA=../shared/data python benchmarks/distributed.py --threads 1

Threads: `--threads` per actor (its num_cpus; NUMBA / OMP / BLAS thread variables set here before the local
cluster starts, so its workers inherit them: runtime_env env_vars stalled worker start-up on this machine) and
for the local baseline.
- sharded: the classes split over n actors (n_shards = n), timed against the same method's single index
  searched in this process, interleaved over the same distinct batches (median per call after warm-up). Its
  extra time at one actor is Ray's round trip plus the merge.
- stream: `--stream` queries through map_batches over a single index file, pool size n, wall time of each
  run including the pool's start.
- merge: merge_shard_topk alone on random sorted lists, microseconds per query.

Writes benchmarks/results/distributed-<data>-<date>.json."""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np
import ray

import wolindex
from wolindex.contrib.datasets import debian_lm_100k, debian_lm_100k_path, synthetic
from wolindex.contrib.timing import compare_speed, machine_info, set_threads
from wolindex.distributed import ShardedIndex, map_batches, merge_shard_topk

RESULTS = Path(__file__).parent / "results"
THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def sharded_rows(W, b, H, folder: Path, a) -> list[dict]:
    """Per actor count and batch size: sharded and local queries/s, and the sharded call's extra time."""
    local = wolindex.build(W, b, method=a.method, verbose=False)
    rows = []
    for n in a.actors:
        sharded = ShardedIndex.build(W, b, path=folder / f"sharded-{n}", n_shards=n, method=a.method,
                                     actor_options={"num_cpus": a.threads})
        try:
            for batch in a.batches:
                runners = {"local": partial(local.search, k=a.k), "sharded": partial(sharded.search, k=a.k)}
                speed = compare_speed(runners, H, batch, a.calls)
                sh, lo = speed["sharded"], speed["local"]
                rows.append({"actors": n, "batch": batch, "k": a.k, "sharded_qps": sh["qps"], "local_qps": lo["qps"],
                             "sharded_over_local": sh["qps"] / lo["qps"],
                             "extra_ms_per_call": 1e3 * (sh["median_s"] - lo["median_s"])})
                print(f"sharded  actors={n} batch={batch:4d}: {sh['qps']:10.1f} q/s, local {lo['qps']:10.1f} q/s, "
                      f"extra {rows[-1]['extra_ms_per_call']:.2f} ms/call", flush=True)
        finally:
            sharded.shutdown()
    return rows


def stream_rows(W, b, H, folder: Path, a) -> list[dict]:
    """Per pool size: wall seconds of each map_batches run over a.stream queries (the pool's start included)."""
    from ray import data as ray_data

    path = folder / "single.wol"
    wolindex.build(W, b, method=a.method, verbose=False).save(path)
    Q = np.resize(H, (a.stream, H.shape[1]))
    rows = []
    for n in a.actors:
        seconds = []
        for _ in range(a.stream_repeats):
            ds = ray_data.from_numpy(np.array_split(Q, a.blocks)).rename_columns({"data": "hidden"})
            t0 = time.perf_counter()
            out = map_batches(ds, path, k=a.k, concurrency=n, num_cpus=a.threads, batch_size=a.stream_batch)
            count = sum(len(part["ids"]) for part in out.iter_batches(batch_size=None, batch_format="numpy"))
            seconds.append(time.perf_counter() - t0)
            assert count == a.stream
        rows.append({"actors": n, "queries": a.stream, "batch_size": a.stream_batch, "k": a.k, "seconds": seconds,
                     "qps": a.stream / min(seconds)})
        print(f"stream   actors={n}: {rows[-1]['qps']:10.1f} q/s (best of {seconds})", flush=True)
    return rows


def merge_rows(a) -> list[dict]:
    """merge_shard_topk alone: microseconds per query, per k and shard count, over batches of 256 queries."""
    rng = np.random.default_rng(0)
    rows = []
    for k in a.merge_ks:
        for n in a.merge_shards:
            parts = [(-np.sort(-rng.standard_normal((256, k)).astype(np.float32), axis=1),
                      rng.integers(0, 10**8, (256, k)).astype(np.int64)) for _ in range(n)]
            times = []
            for _ in range(a.calls + 2):
                t0 = time.perf_counter()
                merge_shard_topk(parts, k)
                times.append(time.perf_counter() - t0)
            rows.append({"k": k, "shards": n, "batch": 256, "us_per_query": 1e6 * float(np.median(times[2:])) / 256})
            print(f"merge    k={k:3d} shards={n}: {rows[-1]['us_per_query']:.2f} us/query", flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", default="exact")
    ap.add_argument("--threads", type=int, default=1, help="threads per actor (and of the local baseline)")
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 256])
    ap.add_argument("--calls", type=int, default=40, help="timed calls per runner and batch size")
    ap.add_argument("--stream", type=int, default=200_000, help="queries through map_batches per run")
    ap.add_argument("--stream-batch", type=int, default=4096)
    ap.add_argument("--stream-repeats", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=16, help="Ray Data blocks the stream is cut into")
    ap.add_argument("--merge-ks", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--merge-shards", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--classes", type=int, default=100_000, help="synthetic data only")
    ap.add_argument("--dim", type=int, default=256, help="synthetic data only")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    os.environ.update(dict.fromkeys(THREAD_VARIABLES, str(a.threads)))
    set_threads(a.threads)
    if debian_lm_100k_path() is not None and a.classes == 100_000 and a.dim == 256:
        ds = debian_lm_100k()
    else:
        ds = synthetic(n_classes=a.classes, dim=a.dim, n_train=1000, n_test=8192)
    W, b = np.ascontiguousarray(ds.W, np.float32), np.asarray(ds.b, np.float32)
    H = np.ascontiguousarray(ds.H_test[:8192], np.float32)
    print(f"{ds.name}: D={W.shape[0]:,}, d={W.shape[1]}, method {a.method}, {a.threads} thread(s) per actor")
    ray.init(include_dashboard=False, log_to_driver=False)
    t0 = time.time()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sharded, stream = sharded_rows(W, b, H, Path(tmp), a), stream_rows(W, b, H, Path(tmp), a)
        merge = merge_rows(a)
        cpus = ray.cluster_resources().get("CPU")
    finally:
        ray.shutdown()
    out = {"benchmark": "distributed", "dataset": ds.name, "n_classes": W.shape[0], "dim": W.shape[1],
           "method": a.method, "k": a.k, "threads_per_actor": a.threads, "dtype": "float32", "ray": ray.__version__,
           "ray_cpus": cpus, "machine": machine_info(), "settings": {k: v for k, v in vars(a).items() if k != "out"},
           "protocol": f"sharded: median per call over {a.calls} distinct batches, sharded and local interleaved in "
                       f"5 rounds after 2 warm-up calls; stream: wall time of each map_batches run, pool start "
                       f"included; merge: median of {a.calls} calls on 256 queries",
           "seconds": time.time() - t0, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "sharded": sharded, "stream": stream, "merge": merge}
    path = a.out or RESULTS / f"distributed-{ds.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
