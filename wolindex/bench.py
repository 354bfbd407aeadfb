"""Timing helpers and exact baselines shared by the demo and benchmarks/.

Speed protocol (DESIGN.md): warm-up calls first (JIT compilation excluded), then one call per batch over
distinct query batches, the methods interleaved, median of the per-call times; queries/s = batch / median.
Report it as a ratio against `exact` measured in the same run."""
from __future__ import annotations

import os
import platform
import time
from typing import Callable

import numpy as np


def _batch_starts(n: int, batch: int, count: int) -> list[int]:
    if batch > n:
        raise ValueError(f"batch: {batch} is larger than the {n} queries available")
    return [(i * batch) % (n - batch + 1) for i in range(count)]


def compare_speed(runners: dict[str, Callable[[np.ndarray], object]], H: np.ndarray, batch: int,
                  n_batches: int, rounds: int = 5, warmup: int = 2) -> dict[str, dict]:
    """Time each runner on the same distinct batches H[s:s + batch], interleaving the runners in `rounds`
    rounds so that machine noise falls on all of them alike.

    Returns {name: {"batch", "n_batches", "median_s", "qps"}}: median seconds per call, batch / median."""
    starts = _batch_starts(H.shape[0], batch, warmup + n_batches)
    for fn in runners.values():
        for s in starts[:warmup]:
            fn(H[s:s + batch])
    times: dict[str, list[float]] = {name: [] for name in runners}
    timed = starts[warmup:]
    for r in range(rounds):
        part = timed[r::rounds]
        for name, fn in runners.items():
            for s in part:
                Hb = H[s:s + batch]
                t0 = time.perf_counter()
                fn(Hb)
                times[name].append(time.perf_counter() - t0)
    out = {}
    for name, ts in times.items():
        median = float(np.median(ts))
        out[name] = {"batch": batch, "n_batches": len(ts), "median_s": median, "qps": batch / median}
    return out


def numpy_topk(W: np.ndarray, b: np.ndarray, H: np.ndarray, k: int):
    """The plain NumPy baseline: H @ W.T + b, argpartition, then sort the k survivors."""
    logits = H @ W.T + b
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(logits, part, axis=1)
    order = np.argsort(-top, axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


def faiss_flat(W: np.ndarray, b: np.ndarray):
    """faiss.IndexFlatIP over [W, b]; returns search(H, k) -> (scores, labels) with H augmented by 1."""
    import faiss

    from .methods.faiss_baselines import with_bias_column, with_one_column

    index = faiss.IndexFlatIP(W.shape[1] + 1)
    index.add(with_bias_column(W, b))

    def search(H: np.ndarray, k: int):
        return index.search(with_one_column(H), k)

    return search


def set_threads(n: int) -> None:
    """Use n threads in Numba, the BLAS libraries and FAISS (when present)."""
    import numba
    from threadpoolctl import threadpool_limits

    numba.set_num_threads(n)
    threadpool_limits(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass


def machine_info() -> dict:
    """CPU, thread counts and library versions, recorded with every result."""
    import numba

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "numba_threads": numba.get_num_threads(),
            "python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__,
            "dtype": "float32"}
    try:
        info["numba_threading_layer"] = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        pass
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [f"{x['internal_api']} {x.get('version')} ({x['num_threads']} threads)"
                        for x in threadpool_info() if x["user_api"] == "blas"]
    except ImportError:
        pass
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        pass
    return info
