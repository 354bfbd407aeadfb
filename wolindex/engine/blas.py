"""Keeping a model's BLAS threads from slowing the search that follows it.

After a multi-threaded product, OpenBLAS's worker threads keep spinning, by default for about 2^28 cycles,
waiting for the next one. A search right after a model layer then runs beside them, and its memory-bound
kernels slow down several-fold, on the calling thread as much as on the engine's threads (see
benchmarks/blas_spin.py for the measurements). Limiting OpenBLAS's thread count does not stop threads that
already spin; stopping them does: OpenBLAS restarts them on its next multi-threaded call.

set_blas_policy('park') makes every search of at most PARK_MAX_QUERIES queries stop the spinning workers
first. It is off by default: stopping OpenBLAS's threads while another Python thread is inside a BLAS call
is not safe, so only a process that runs its model and its searches on one thread should turn it on.
Setting OPENBLAS_THREAD_TIMEOUT (e.g. 4) before NumPy loads has the same effect on searches for the whole
process, at the price of waking the workers at every BLAS call."""
from __future__ import annotations

import threading

POLICIES = ("keep", "park")
PARK_MAX_QUERIES = 16
_state = {"policy": "keep", "stoppers": None}
_lock = threading.Lock()


def set_blas_policy(policy: str) -> None:
    """'park': searches of at most PARK_MAX_QUERIES queries first stop OpenBLAS's spinning worker threads
    (single-threaded pipelines only, see the module docstring); 'keep' (default): leave them alone."""
    if policy not in POLICIES:
        raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
    _state["policy"] = policy


def blas_policy() -> str:
    return _state["policy"]


def _stoppers() -> list:
    """The thread-stopping entry point of every OpenBLAS loaded in the process (found by threadpoolctl)."""
    with _lock:
        if _state["stoppers"] is None:
            from threadpoolctl import ThreadpoolController

            found = []
            for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers:
                stop = getattr(getattr(lib, "dynlib", None), "blas_thread_shutdown_", None)
                if stop is not None:
                    found.append(stop)
            _state["stoppers"] = found
    return _state["stoppers"]


def park_blas_threads() -> int:
    """Stop OpenBLAS's worker threads now (they restart on its next multi-threaded call); returns how many
    OpenBLAS libraries were told to."""
    stoppers = _stoppers()
    for stop in stoppers:
        stop()
    return len(stoppers)


def before_search(n_queries: int) -> None:
    """What the policy asks before a search of n_queries queries."""
    if _state["policy"] == "park" and n_queries <= PARK_MAX_QUERIES:
        park_blas_threads()
