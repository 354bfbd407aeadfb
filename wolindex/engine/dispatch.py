"""Engine entry points: argument plumbing, memory bounds, workspaces and the choice of kernel."""
from __future__ import annotations

import threading

import numba
import numpy as np

from . import cpu, numpy_ref
from .buckets import Buckets, check_probes

ENGINES = ("numba", "numpy")
PATHS = ("auto", "fused", "grouped")
QUERY_BLOCK = 4096        # queries per kernel call: bounds heap memory for any N
ITEM_QUERIES = 64         # queries per work item of the grouped path
GROUPED_MIN_SHARING = 4.0  # auto path: grouped when probes per distinct bucket reach this
_STAMP_LIMIT = 2**31 - 1

_local = threading.local()
_launch_lock = threading.Lock()
_layer_is_threadsafe: bool | None = None


def _threadsafe() -> bool:
    """Whether Numba's threading layer allows parallel kernels from several threads at once
    (omp and tbb do; workqueue does not, and then launches are serialised by a lock)."""
    global _layer_is_threadsafe
    if _layer_is_threadsafe is None:
        with _launch_lock:
            cpu.exact_topk_kernel(np.zeros((1, 1), np.float32), np.zeros(1, np.float32),
                                  np.zeros((1, 1), np.float32), 1, 1, 1,
                                  np.empty((1, 1), np.float32), np.empty((1, 1), np.int64))
            _layer_is_threadsafe = numba.threading_layer() != "workqueue"
    return _layer_is_threadsafe


def _launch(kernel, *args):
    if _threadsafe():
        return kernel(*args)
    with _launch_lock:
        return kernel(*args)


def _row_block(dim: int) -> int:
    """Rows per cache block: about 128 KiB of float32 rows."""
    return max(8, (128 * 1024) // (4 * dim))


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")


def exact_topk(W: np.ndarray, b: np.ndarray, H: np.ndarray, k: int, engine: str = "numba"):
    """Exact top-k of H @ W.T + b.  W (D, d) f32, b (D,) f32, H (N, d) f32 ->
    scores (N, k) float32, labels (N, k) int64, best first. Inputs must already be checked."""
    check_engine(engine)
    if engine == "numpy":
        return numpy_ref.exact_topk(W, b, H, k)
    N = H.shape[0]
    out_s = np.empty((N, k), np.float32)
    out_l = np.empty((N, k), np.int64)
    n_chunks = max(1, min(4 * numba.get_num_threads(), W.shape[0] // 64))
    for q0 in range(0, N, QUERY_BLOCK):
        q1 = min(N, q0 + QUERY_BLOCK)
        _launch(cpu.exact_topk_kernel, W, b, H[q0:q1], k, n_chunks, _row_block(W.shape[1]),
                out_s[q0:q1], out_l[q0:q1])
    return out_s, out_l


def _stamp_workspace(n_chunks: int, n_classes: int, n_queries: int):
    """This thread's (stamps, cand, first stamp) for the fused kernel, reused across calls."""
    key = (n_chunks, n_classes)
    spaces = getattr(_local, "spaces", None)
    if spaces is None:
        spaces = _local.spaces = {}
    ws = spaces.get(key)
    if ws is None or ws[2] + n_queries >= _STAMP_LIMIT:
        ws = [np.zeros((n_chunks, n_classes), np.int32), np.empty((n_chunks, n_classes), np.int32), 1]
        spaces[key] = ws
    stamp0 = ws[2]
    ws[2] += n_queries
    return ws[0], ws[1], stamp0


def _fused(W, b, H, k, buckets, probes):
    N = H.shape[0]
    n_chunks = max(1, min(N, numba.get_num_threads()))
    out_s = np.empty((N, k), np.float32)
    out_l = np.empty((N, k), np.int64)
    n_scored = np.empty(N, np.int64)
    for q0 in range(0, N, QUERY_BLOCK):
        q1 = min(N, q0 + QUERY_BLOCK)
        stamps, cand, stamp0 = _stamp_workspace(n_chunks, W.shape[0], q1 - q0)
        _launch(cpu.fused_candidates_kernel, W, b, H[q0:q1], probes[q0:q1], buckets.indptr, buckets.indices,
                k, stamps, cand, stamp0, _row_block(W.shape[1]), out_s[q0:q1], out_l[q0:q1], n_scored[q0:q1])
    return out_s, out_l, n_scored


def _work_items(probes: np.ndarray, sizes: np.ndarray):
    """Group (query, probe slot) pairs by bucket and cut each group into runs of ITEM_QUERIES queries;
    items are ordered by cost (rows x queries), largest first, for dynamic scheduling."""
    m = probes.shape[1]
    flat = probes.ravel()
    slots = np.flatnonzero(flat >= 0)
    order = np.argsort(flat[slots], kind="stable")
    pair_slot = slots[order]
    pair_bucket = flat[pair_slot]
    group_start = np.flatnonzero(np.r_[True, pair_bucket[1:] != pair_bucket[:-1]])
    group_stop = np.r_[group_start[1:], pair_bucket.size]
    starts = [np.arange(a, z, ITEM_QUERIES) for a, z in zip(group_start, group_stop)]
    item_start = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    item_stop = np.minimum(item_start + ITEM_QUERIES, np.repeat(group_stop, [len(s) for s in starts]))
    item_bucket = pair_bucket[item_start] if item_start.size else np.zeros(0, np.int32)
    cost = sizes[item_bucket] * (item_stop - item_start)
    by_cost = np.argsort(-cost, kind="stable")
    return (item_bucket[by_cost].astype(np.int32), item_start[by_cost].astype(np.int64),
            item_stop[by_cost].astype(np.int64), (pair_slot // m).astype(np.int64), pair_slot.astype(np.int64))


def _grouped(W, b, H, k, buckets, probes):
    N, m = probes.shape
    out_s = np.empty((N, k), np.float32)
    out_l = np.empty((N, k), np.int64)
    sizes = buckets.sizes()
    for q0 in range(0, N, QUERY_BLOCK):
        q1 = min(N, q0 + QUERY_BLOCK)
        items = _work_items(probes[q0:q1], sizes)
        with numba.parallel_chunksize(1):
            _launch(cpu.grouped_candidates_kernel, W, b, H[q0:q1], buckets.indptr, buckets.indices, *items,
                    k, m, _row_block(W.shape[1]), out_s[q0:q1], out_l[q0:q1])
    n_scored = np.where(probes >= 0, sizes[np.maximum(probes, 0)], 0).sum(axis=1)
    return out_s, out_l, n_scored


def choose_path(probes: np.ndarray) -> str:
    """'grouped' when queries share buckets enough for row reuse to pay, else 'fused'."""
    valid = probes[probes >= 0]
    if valid.size == 0:
        return "fused"
    return "grouped" if valid.size / np.unique(valid).size >= GROUPED_MIN_SHARING else "fused"


def candidate_topk(W: np.ndarray, b: np.ndarray, H: np.ndarray, k: int, buckets: Buckets, probes,
                   engine: str = "numba", path: str = "auto"):
    """Exact top-k over the union of each query's probed buckets.

    probes: (N, m) bucket ids, -1 for none. Returns scores (N, k) float32, labels (N, k) int64 (padded
    with -inf / -1 where a query has fewer than k candidates) and n_scored (N,) int64: classes scored per
    query (distinct classes on the fused path; on the grouped path a class probed twice counts twice)."""
    check_engine(engine)
    if path not in PATHS:
        raise ValueError(f"path: expected one of {PATHS}, got {path!r}")
    probes = check_probes(probes, buckets.n_buckets, H.shape[0])
    if engine == "numpy":
        return numpy_ref.candidate_topk(W, b, H, k, buckets, probes)
    if path == "auto":
        path = choose_path(probes)
    return (_grouped if path == "grouped" else _fused)(W, b, H, k, buckets, probes)
