"""Engine entry points: argument plumbing, memory bounds, workspaces and the choice of kernel.

The Numba kernels (cpu.py) and Numba itself load on the first search that needs them (_kernels), so that
`import wolindex` stays light."""
from __future__ import annotations

import threading

import numpy as np

from ..rows import STORAGE, kernel_rows, row_dtype
from . import numpy_ref
from .buckets import Buckets, PackedRows, check_probes
from .names import ENGINES, PATHS, QUERY_BLOCK, check_engine

__all__ = ["ENGINES", "PATHS", "candidate_topk", "check_engine", "check_rows", "choose_path", "exact_topk",
           "merge_topk", "query_products", "rescore_topk"]

ITEM_QUERIES = 64         # queries per work item of the grouped path
GROUPED_MIN_SHARING = 4.0  # auto path: grouped when probes per distinct bucket reach this
SERIAL_MAX_WORK = 2**19   # exact top-k or products of at most this many multiply-adds run on the calling thread
PRODUCT_QUERIES = 64      # queries per work item of query_products
_STAMP_LIMIT = 2**31 - 1

_local = threading.local()
_launch_lock = threading.Lock()
_layer_is_threadsafe: bool | None = None
_cpu = None               # the kernel module, once loaded


def _kernels():
    """The Numba kernel module (engine/cpu.py), imported on first use (compiling or loading the kernels)."""
    global _cpu
    if _cpu is None:
        from . import cpu

        _cpu = cpu
    return _cpu


def _num_threads() -> int:
    import numba

    return numba.get_num_threads()


def _threadsafe() -> bool:
    """Whether Numba's threading layer allows parallel kernels from several threads at once
    (omp and tbb do; workqueue does not, and then launches are serialised by a lock)."""
    global _layer_is_threadsafe
    if _layer_is_threadsafe is None:
        import numba

        with _launch_lock:
            _kernels().exact_topk_kernel(readonly(np.zeros((1, 1), np.float32)), readonly(np.zeros(1, np.float32)),
                                         readonly(np.zeros((1, 1), np.float32)), 1, readonly(np.zeros(0, np.int32)),
                                         1, 1, False, np.empty((1, 1), np.float32), np.empty((1, 1), np.int64))
            _layer_is_threadsafe = numba.threading_layer() != "workqueue"
    return _layer_is_threadsafe


def _launch(kernel, *args):
    if _threadsafe():
        return kernel(*args)
    with _launch_lock:
        return kernel(*args)


def readonly(a: np.ndarray) -> np.ndarray:
    """a as a read-only view (a itself when already read-only). Kernels take the arrays a caller hands over
    (rows, queries, an index's arrays) read-only, so that arrays mapped read-only from an index file and
    arrays in memory run one compiled kernel instead of two."""
    if not a.flags.writeable:
        return a
    view = a.view()
    view.flags.writeable = False
    return view


def _row_block(W: np.ndarray) -> int:
    """Rows of W per cache block: about 128 KiB of them."""
    return max(8, (128 * 1024) // (W.itemsize * W.shape[1]))


def check_rows(W: np.ndarray, b: np.ndarray, H: np.ndarray, k) -> None:
    """O(1) checks that keep the kernels' reads inside W, b and H: NumPy arrays W (D, d) of a row dtype
    (wolindex.rows), float32 b (D,) and H (N, d), k an int >= 1 (their values are the caller's to check)."""
    if isinstance(W, np.ndarray):
        row_dtype(W)
    for name, a, ndim in (("W", W, 2), ("b", b, 1), ("H", H, 2)):
        if not isinstance(a, np.ndarray) or (a.dtype != np.float32 and name != "W"):
            raise TypeError(f"{name}: expected a float32 NumPy array, got {getattr(a, 'dtype', type(a).__name__)}")
        if a.ndim != ndim:
            raise ValueError(f"{name}: expected a {ndim}-D array, got shape {a.shape}")
    if b.shape[0] != W.shape[0]:
        raise ValueError(f"b: expected shape ({W.shape[0]},) to match W, got {b.shape}")
    if H.shape[1] != W.shape[1]:
        raise ValueError(f"H: expected {W.shape[1]} columns to match W, got shape {H.shape}")
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k: expected an int >= 1, got {k}")


def exact_topk(W: np.ndarray, b: np.ndarray, H: np.ndarray, k: int, engine: str = "numba", square: bool = False,
               labels: np.ndarray | None = None):
    """Exact top-k of H @ W.T + b (of its square when `square`: spherical layers).  W (D, d) rows of a row
    dtype (wolindex.rows: scores in float32 from the stored values), b (D,) f32,
    H (N, d) f32 -> scores (N, k) float32, labels (N, k) int64, best first (ties: smaller label first).
    labels: (D,) int32, the class of each row (a permuted layer's row_class); None: row r is class r. Their
    values must already be checked (finite, labels a permutation); shapes and dtypes are checked here."""
    check_engine(engine)
    check_rows(W, b, H, k)
    if labels is None:
        labels = np.zeros(0, np.int32)
    elif labels.dtype != np.int32 or labels.shape != (W.shape[0],):
        raise ValueError(f"labels: expected int32 of shape ({W.shape[0]},), got {labels.dtype} {labels.shape}")
    if engine == "numpy":
        return numpy_ref.exact_topk(W, b, H, k, square, labels if labels.size else None)
    N = H.shape[0]
    out_s = np.empty((N, k), np.float32)
    out_l = np.empty((N, k), np.int64)
    cpu = _kernels()
    W, b, H, labels = readonly(kernel_rows(W)), readonly(b), readonly(H), readonly(labels)
    k = int(k)
    if N * W.shape[0] * W.shape[1] <= SERIAL_MAX_WORK:
        cpu.exact_topk_serial_kernel(W, b, H, k, labels, _row_block(W), square, out_s, out_l)
        return out_s, out_l
    n_chunks = max(1, min(4 * _num_threads(), W.shape[0] // 64))
    for q0 in range(0, N, QUERY_BLOCK):
        q1 = min(N, q0 + QUERY_BLOCK)
        _launch(cpu.exact_topk_kernel, W, b, H[q0:q1], k, labels, n_chunks, _row_block(W), square,
                out_s[q0:q1], out_l[q0:q1])
    return out_s, out_l


def query_products(H: np.ndarray, V: np.ndarray, c: np.ndarray | None = None) -> np.ndarray:
    """H (N, d) @ V (R, d).T + c (R,) -> (N, R), float32 or float64 (H, V and c of one dtype; V may also be
    rows in float16 / bfloat16 with float32 H and c, see wolindex.rows), by the engine's
    own kernels: a search's small products (projections, gates, bounds) make no BLAS call, whose worker threads
    keep spinning after it and slow the engine's threads and the model that called the search."""
    dtype = H.dtype
    rows_ok = V.dtype == dtype or (dtype == np.float32 and V.dtype in STORAGE)
    if dtype not in (np.float32, np.float64) or not rows_ok or (c is not None and c.dtype != dtype):
        raise TypeError(f"H, V, c: expected one dtype, float32 or float64 (V float32, float16 or bfloat16 bits with "
                        f"float32 H), got {H.dtype}, {V.dtype}, "
                        f"{None if c is None else c.dtype}")
    if H.ndim != 2 or V.ndim != 2 or H.shape[1] != V.shape[1]:
        raise ValueError(f"H, V: expected (N, d) and (R, d), got {H.shape} and {V.shape}")
    if c is None:
        c = np.zeros(V.shape[0], dtype)
    elif c.shape != (V.shape[0],):
        raise ValueError(f"c: expected shape ({V.shape[0]},), got {c.shape}")
    H, V, c = readonly(np.ascontiguousarray(H)), readonly(kernel_rows(np.ascontiguousarray(V))), readonly(c)
    out = np.empty((H.shape[0], V.shape[0]), dtype)
    if out.size == 0:
        return out
    cpu = _kernels()
    if H.shape[0] * V.shape[0] * V.shape[1] <= SERIAL_MAX_WORK:
        cpu.products_serial_kernel(V, c, H, out)
    else:
        rows = max(2, min(V.shape[0], _row_block(V)))
        _launch(cpu.products_kernel, V, c, H, PRODUCT_QUERIES, rows + rows % 2, out)
    return out


class _FusedWorkspace:
    """Per-thread scratch of the fused kernel: visited stamps and candidate lists, (n_chunks, D) int32."""

    def __init__(self, n_chunks: int, n_classes: int):
        self.stamps = np.zeros((n_chunks, n_classes), np.int32)
        self.cand_rows = np.empty((n_chunks, n_classes), np.int32)
        self.cand_labels = np.empty((n_chunks, n_classes), np.int32)
        self.next_stamp = 1

    def take_stamps(self, n_queries: int) -> int:
        """First stamp of a call scoring n_queries; stamps are cleared before the counter would overflow."""
        if self.next_stamp + n_queries >= _STAMP_LIMIT:
            self.stamps[:] = 0
            self.next_stamp = 1
        first = self.next_stamp
        self.next_stamp += n_queries
        return first


def _fused_workspace(n_chunks: int, n_classes: int) -> _FusedWorkspace:
    """This thread's workspace for (n_chunks, n_classes), reused across calls."""
    spaces = getattr(_local, "spaces", None)
    if spaces is None:
        spaces = _local.spaces = {}
    key = (n_chunks, n_classes)
    if key not in spaces:
        spaces[key] = _FusedWorkspace(n_chunks, n_classes)
    return spaces[key]


def _fused(W, b, row_of, n_classes, H, k, buckets, probes, square):
    N = H.shape[0]
    cpu = _kernels()
    threads = _num_threads()
    n_chunks = max(1, min(N, threads))
    out_s = np.empty((N, k), np.float32)
    out_l = np.empty((N, k), np.int64)
    n_scored = np.empty(N, np.int64)
    ws = _fused_workspace(n_chunks, n_classes)
    indptr, indices = readonly(buckets.indptr), readonly(buckets.indices)
    for q0 in range(0, N, QUERY_BLOCK):
        q1 = min(N, q0 + QUERY_BLOCK)
        args = (W, b, row_of, H[q0:q1], probes[q0:q1], indptr, indices, k, ws.stamps,
                ws.cand_rows, ws.cand_labels, ws.take_stamps(q1 - q0))
        outs = (_row_block(W), square, out_s[q0:q1], out_l[q0:q1], n_scored[q0:q1])
        if N < threads:
            _launch(cpu.split_candidates_kernel, *args, threads, *outs)
        else:
            _launch(cpu.fused_candidates_kernel, *args, *outs)
    return out_s, out_l, n_scored


def _work_items(probes: np.ndarray, sizes: np.ndarray):
    """Group (query, probe slot) pairs by bucket and cut each group into runs of ITEM_QUERIES queries;
    items are ordered by cost (rows x queries), largest first, for dynamic scheduling. Each valid pair
    gets its own heap, numbered in (query, slot) order, so query i owns heaps heap_ptr[i]:heap_ptr[i + 1]."""
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
    heap_ptr = np.searchsorted(slots, np.arange(probes.shape[0] + 1) * m).astype(np.int64)
    return (item_bucket[by_cost].astype(np.int32), item_start[by_cost].astype(np.int64),
            item_stop[by_cost].astype(np.int64), (pair_slot // m).astype(np.int64), order.astype(np.int64),
            heap_ptr)


def _grouped(W, b, row_of, H, k, buckets, probes, square):
    import numba

    cpu = _kernels()
    N = probes.shape[0]
    out_s = np.empty((N, k), np.float32)
    out_l = np.empty((N, k), np.int64)
    sizes = buckets.sizes()
    for q0 in range(0, N, QUERY_BLOCK):
        q1 = min(N, q0 + QUERY_BLOCK)
        items = _work_items(probes[q0:q1], sizes)
        with numba.parallel_chunksize(1):
            _launch(cpu.grouped_candidates_kernel, W, b, row_of, H[q0:q1], readonly(buckets.indptr),
                    readonly(buckets.indices), *items,
                    k, _row_block(W), square, out_s[q0:q1], out_l[q0:q1])
    n_scored = np.where(probes >= 0, sizes[np.maximum(probes, 0)], 0).sum(axis=1)
    return out_s, out_l, n_scored


def choose_path(probes: np.ndarray) -> str:
    """'grouped' when queries share buckets enough for row reuse to pay, else 'fused' (always for fewer
    queries than GROUPED_MIN_SHARING, which cannot share a bucket that often without repeating it)."""
    if probes.shape[0] < GROUPED_MIN_SHARING:
        return "fused"
    valid = probes[probes >= 0]
    if valid.size == 0:
        return "fused"
    return "grouped" if valid.size / np.unique(valid).size >= GROUPED_MIN_SHARING else "fused"


def candidate_topk(W: np.ndarray, b: np.ndarray, H: np.ndarray, k: int, buckets: Buckets, probes,
                   engine: str = "numba", path: str = "auto", packed: PackedRows | None = None, square: bool = False):
    """Exact top-k over the union of each query's probed buckets.

    probes: (N, m) bucket ids, -1 for none; packed: the buckets' rows stored contiguously (then W and b
    are not read); square: rank by the squared score (spherical layers). Returns scores (N, k) float32,
    labels (N, k) int64 (padded with -inf / -1 where a query has fewer than k candidates) and n_scored (N,)
    int64: classes scored per query (distinct classes on the fused path; on the grouped path a class probed
    twice counts twice). buckets (and packed) are validated on their first use (Buckets.check), probes on
    every call."""
    check_engine(engine)
    if path not in PATHS:
        raise ValueError(f"path: expected one of {PATHS}, got {path!r}")
    check_rows(W, b, H, k)
    buckets.check(W.shape[0])
    if packed is not None:
        packed.check(buckets, W.shape[1])
    probes = check_probes(probes, buckets.n_buckets, H.shape[0])
    return _candidate_topk(W, b, H, k, buckets, probes, engine, path, packed, square)


def _candidate_topk(W, b, H, k, buckets, probes, engine, path, packed, square):
    """candidate_topk on checked arguments."""
    if engine == "numpy":
        return numpy_ref.candidate_topk(W, b, H, k, buckets, probes, packed, square)
    if path == "auto":
        path = choose_path(probes)
    rows = (W, b, buckets.indices) if packed is None else (packed.W, packed.b, packed.row_of)
    rows = tuple(readonly(a) for a in (kernel_rows(rows[0]), rows[1], rows[2]))
    H, probes, k = readonly(H), readonly(probes), int(k)
    if path == "grouped":
        return _grouped(*rows, H, k, buckets, probes, square)
    return _fused(*rows, W.shape[0], H, k, buckets, probes, square)


def rescore_topk(W: np.ndarray, b: np.ndarray, H: np.ndarray, k: int, candidates: np.ndarray,
                 engine: str = "numba", square: bool = False, class_row: np.ndarray | None = None):
    """Exact top-k over each query's own candidate list (from FAISS, say); square as in candidate_topk.

    candidates: (N, c) integer class ids in [0, D), -1 for none (as FAISS pads), repeats allowed; anything
    else is refused. class_row: (D,) int32, the row of W holding each class (a permuted layer's), None for
    row c = class c. Returns scores (N, k), labels (N, k) and n_scored (N,) like candidate_topk."""
    check_engine(engine)
    check_rows(W, b, H, k)
    cand = np.asarray(candidates)
    if cand.dtype.kind not in "iu":
        raise TypeError(f"candidates: expected an integer dtype, got {cand.dtype}")
    if cand.ndim != 2 or cand.shape[0] != H.shape[0]:
        raise ValueError(f"candidates: expected shape ({H.shape[0]}, c), got {cand.shape}")
    if cand.size and (cand.min() < -1 or cand.max() >= W.shape[0]):
        raise ValueError(f"candidates: class ids must lie in [-1, {W.shape[0]}), got {cand.min()} .. {cand.max()}")
    valid = cand >= 0
    indptr = np.zeros(cand.shape[0] + 1, np.int64)
    np.cumsum(valid.sum(axis=1), out=indptr[1:])
    buckets = Buckets(indptr, cand[valid].astype(np.int32))
    probes = np.arange(cand.shape[0], dtype=np.int32)[:, None]
    packed = None if class_row is None else PackedRows(W, b, class_row[buckets.indices])
    return _candidate_topk(W, b, H, k, buckets, probes, engine, "fused", packed, square)


def merge_topk(scores_a, labels_a, scores_b, labels_b):
    """Two top-k lists (N, k) over disjoint classes -> their joint top-k (N, k), in ranking order
    (score desc, label asc), padding (-inf, -1) last."""
    k = scores_a.shape[1]
    scores = np.concatenate([scores_a, scores_b], axis=1)
    labels = np.concatenate([labels_a, labels_b], axis=1)
    order = np.lexsort((np.where(labels < 0, np.iinfo(np.int64).max, labels), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(labels, order, axis=1)
