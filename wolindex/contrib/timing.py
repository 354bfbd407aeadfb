"""Timing helpers and the NumPy exact baseline shared by the demo and benchmarks/.

Speed protocol (DESIGN.md): warm-up calls first (JIT compilation excluded), then one call per batch over
distinct query batches, the methods interleaved, median of the per-call times; queries/s = batch / median.
Report it as a ratio against `exact` measured in the same run (compare_speed, which lives in wolindex.tune
because Index.tune uses it). The FAISS exact baseline is the faiss-flat method (wolindex.build(W, b,
method="faiss-flat"))."""
from __future__ import annotations

import os
import platform

import numpy as np

from ..tune import compare_speed

__all__ = ["compare_speed", "machine_info", "model_layer", "numpy_topk", "set_threads"]


def model_layer(dim: int, seed: int = 0):
    """A stand-in for a model's last layer before the head: H (n, dim) -> H @ M, M (dim, 4 dim)
    float32, one NumPy (BLAS) product, as a forward pass runs right before the head's search."""
    M = np.random.default_rng(seed).standard_normal((dim, 4 * dim)).astype(np.float32)
    return lambda H: H @ M


def numpy_topk(W: np.ndarray, b: np.ndarray, H: np.ndarray, k: int):
    """The plain NumPy baseline: H @ W.T + b, argpartition, then sort the k survivors."""
    logits = H @ W.T + b
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(logits, part, axis=1)
    order = np.argsort(-top, axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(part, order, axis=1)


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

        info["blas"] = [f"{x['internal_api']} {x.get('version')} {x.get('architecture', '')} "
                        f"({x['num_threads']} threads)" for x in threadpool_info() if x["user_api"] == "blas"]
        info["OPENBLAS_CORETYPE"] = os.environ.get("OPENBLAS_CORETYPE", "")
    except ImportError:
        pass
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        pass
    return info
