"""The GPU query engine: exact top-k (GEMM + selection kernel) and exact scoring of candidate buckets (one
fused launch for small batches, bucket tiles for large ones), on a runtime (see runtime.py).

Shapes and dtypes follow the CPU engine: scores (N, k) float32 and labels (N, k) int64 best first (ties to
the smaller id), padded with -inf / -1; arrays stay on the device."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..engine import Buckets, PackedRows
from ..engine.names import PATHS, QUERY_BLOCK
from ..rows import rows_to_storage
from . import kernels
from .runtime import NULL, queries_to_storage

SCORE_BUDGET = 1 << 26       # float32 scores held at once by exact search and the tile path (256 MiB)
SELECT_SLICE = 4096          # entries per block of the selection kernel
FUSED_SLICE = 128            # candidate rows per block of the fused kernel, at most (16 per warp)
FUSED_MAX_BATCH = 128        # path 'auto': fused up to this many queries, tiles above


def _blocks(n: float, per_block: int, most: int) -> int:
    return int(max(1, min(most, -(-int(n) // per_block))))


def select_topk(rt, scores, k: int, *, n_rows: int, n_cols: int = 0, ids=None, bias=None, row_ptr=None,
                id_offset: int = 0, mean_len: float | None = None, out=None):
    """Top-k of each row of `scores` by the topk_rows kernel (see kernels.cu for the arguments): a dense
    (n_rows, n_cols) matrix, or ragged rows row_ptr (n_rows + 1,) int64 over a flat array. Returns (or
    fills `out`) scores (n_rows, k) float32, labels (n_rows, k) int64."""
    xp = rt.xp
    scores = xp.ascontiguousarray(scores)                         # kernels read raw row-major memory
    ids = None if ids is None else xp.ascontiguousarray(ids, dtype=xp.int32)
    n_parts = _blocks(mean_len if row_ptr is not None else n_cols, SELECT_SLICE, 1024)
    part_s = xp.empty((n_rows, n_parts, k), xp.float32)
    part_i = xp.empty((n_rows, n_parts, k), xp.int32)
    out_s, out_l = out if out is not None else (xp.empty((n_rows, k), xp.float32), xp.empty((n_rows, k), xp.int64))
    args = (scores, NULL if ids is None else ids, NULL if bias is None else bias,
            NULL if row_ptr is None else row_ptr, np.int64(n_cols), np.int32(id_offset),
            np.int32(k), part_s, part_i, rt.counters(n_rows), out_s, out_l)
    rt.kernel("topk_rows")((n_rows, n_parts), (kernels.THREADS,), args)
    return out_s, out_l


def exact_topk(rt, W, b, H, k: int, dtype: str):
    """Top-k of H @ W.T + b. W (D, d) stored rows, b (D,) float32, H (N, d) float32, all on the device;
    the GEMM runs in the storage dtype with float32 accumulation, in blocks of at most SCORE_BUDGET scores."""
    xp = rt.xp
    N, D = H.shape[0], W.shape[0]
    Hs = queries_to_storage(xp, xp.ascontiguousarray(H, dtype=xp.float32), dtype)
    n_q = min(N, QUERY_BLOCK)
    width = max(1, min(D, SCORE_BUDGET // n_q))
    buffer = xp.empty(n_q * width, xp.float32)
    out_s, out_l = xp.empty((N, k), xp.float32), xp.empty((N, k), xp.int64)
    starts = range(0, D, width)
    for q0 in range(0, N, n_q):
        q1 = min(N, q0 + n_q)
        acc_s = xp.empty((len(starts), q1 - q0, k), xp.float32)
        acc_l = xp.empty((len(starts), q1 - q0, k), xp.int64)
        for j, c0 in enumerate(starts):
            c1 = min(D, c0 + width)
            S = buffer[:(q1 - q0) * (c1 - c0)].reshape(q1 - q0, c1 - c0)
            rt.gemm_nt(Hs[q0:q1], W[c0:c1], S, dtype)
            select_topk(rt, S, k, n_rows=q1 - q0, n_cols=c1 - c0, bias=b[c0:c1], id_offset=c0,
                        out=(acc_s[j], acc_l[j]))
        if len(starts) == 1:
            out_s[q0:q1], out_l[q0:q1] = acc_s[0], acc_l[0]
            continue
        flat_s = acc_s.transpose(1, 0, 2).reshape(q1 - q0, -1)
        flat_i = acc_l.transpose(1, 0, 2).reshape(q1 - q0, -1)
        select_topk(rt, flat_s, k, n_rows=q1 - q0, n_cols=flat_s.shape[1], ids=flat_i,
                    out=(out_s[q0:q1], out_l[q0:q1]))
    return out_s, out_l


@dataclass
class DeviceBuckets:
    """A method's buckets on the device with their rows packed bucket by bucket (see engine.PackedRows):
    W (nnz, d) stored rows, b (nnz,) float32, indptr (B + 1,) int64, indices (nnz,) int32, sizes (B,) int64;
    plus the mean and largest bucket size, for launch shapes."""

    W: object
    b: object
    indptr: object
    indices: object
    dtype: str
    sizes: object
    mean_size: float
    max_size: int

    @classmethod
    def upload(cls, rt, buckets: Buckets, packed: PackedRows, dtype: str) -> "DeviceBuckets":
        sizes = buckets.sizes()
        W, b = packed.entry_rows()
        return cls(rt.to_device(rows_to_storage(W, dtype)), rt.to_device(b),
                   rt.to_device(buckets.indptr), rt.to_device(buckets.indices), dtype, rt.to_device(sizes),
                   float(sizes.mean()) if sizes.size else 0.0, int(sizes.max()) if sizes.size else 0)

    @property
    def suffix(self) -> str:
        return kernels.ROW_TYPES[self.dtype]


def candidate_topk(rt, rows: DeviceBuckets, H, probes, k: int, path: str = "auto"):
    """Exact top-k over the union of each query's probed buckets. H (N, d) float32 and probes (N, m) int32
    (-1: none) on the device. Returns scores (N, k), labels (N, k), n_scored (N,) int64: entries scored (a
    class in two probed buckets counts twice)."""
    if path not in PATHS:
        raise ValueError(f"path: expected one of {PATHS}, got {path!r}")
    H = rt.xp.ascontiguousarray(H, dtype=rt.xp.float32)
    probes = rt.xp.ascontiguousarray(probes, dtype=rt.xp.int32)   # kernels read raw row-major memory
    N, m = probes.shape
    if path == "fused" or (path == "auto" and N <= FUSED_MAX_BATCH):
        return _fused(rt, rows, H, probes, k)
    step = max(1, int(SCORE_BUDGET // max(1.0, min(m * rows.mean_size, rows.indices.shape[0]))))
    parts = [_grouped(rt, rows, H[q0:q0 + step], probes[q0:q0 + step], k) for q0 in range(0, N, step)]
    return parts[0] if len(parts) == 1 else tuple(rt.xp.concatenate(p) for p in zip(*parts))


def _fused(rt, rows, H, probes, k):
    xp = rt.xp
    N, d = H.shape
    m = probes.shape[1]
    n_parts = _blocks(min(m * rows.max_size, rows.indices.shape[0]), FUSED_SLICE, 1024)
    part_s = xp.empty((N, n_parts, k), xp.float32)
    part_i = xp.empty((N, n_parts, k), xp.int32)
    out_s, out_l = xp.empty((N, k), xp.float32), xp.empty((N, k), xp.int64)
    n_scored = xp.empty(N, xp.int64)
    args = (rows.W, rows.b, H, np.int32(d), probes, np.int32(m), rows.indptr, rows.indices, np.int32(k), part_s,
            part_i, rt.counters(N), out_s, out_l, n_scored)
    rt.kernel(f"fused_candidates_{rows.suffix}")((N, n_parts), (kernels.THREADS,), args)
    return out_s, out_l, n_scored


def _grouped(rt, rows, H, probes, k):
    """(query, probe) pairs sorted by bucket, cut into items of <= TILE_QUERIES pairs; every item's bucket
    rows times its queries by the tile kernel into a flat score array laid out query by query; then a
    ragged top-k per query."""
    xp = rt.xp
    N, m = probes.shape
    flat = probes.ravel()
    pair = xp.flatnonzero(flat >= 0)
    pair_bucket = flat[pair]
    pair_query = pair // m
    sizes = rows.sizes[pair_bucket]
    ends = xp.cumsum(sizes)
    pair_offset = ends - sizes
    row_ptr = xp.concatenate([xp.zeros(1, xp.int64), ends])[xp.searchsorted(pair_query, xp.arange(N + 1))]
    total = int(row_ptr[-1])
    out_s, out_l = xp.empty((N, k), xp.float32), xp.empty((N, k), xp.int64)
    if total == 0:
        out_s[:], out_l[:] = -np.inf, -1
        return out_s, out_l, xp.zeros(N, xp.int64)
    order = xp.argsort(pair_bucket)
    bucket_sorted = pair_bucket[order]
    group_start = xp.flatnonzero(xp.concatenate([xp.ones(1, bool), bucket_sorted[1:] != bucket_sorted[:-1]]))
    group_end = xp.concatenate([group_start[1:], xp.full(1, pair.shape[0], group_start.dtype)])
    per_group = (group_end - group_start + kernels.TILE_QUERIES - 1) // kernels.TILE_QUERIES
    group_items_end = xp.cumsum(per_group)
    n_items = int(group_items_end[-1])
    item = xp.arange(n_items)
    item_group = xp.searchsorted(group_items_end, item, side="right")
    item_first = group_start[item_group] + (item - (group_items_end - per_group)[item_group]) * kernels.TILE_QUERIES
    item_count = xp.minimum(kernels.TILE_QUERIES, group_end[item_group] - item_first).astype(xp.int32)
    item_bucket = bucket_sorted[item_first].astype(xp.int32)
    scores = xp.empty(total, xp.float32)
    ids = xp.empty(total, xp.int32)
    args = (rows.W, rows.b, H, np.int32(H.shape[1]), rows.indptr, rows.indices, item_bucket,
            item_first.astype(xp.int64), item_count, pair_query[order].astype(xp.int64),
            pair_offset[order].astype(xp.int64), scores, ids)
    row_tiles = _blocks(rows.max_size, kernels.TILE_ROWS, 65535)
    rt.kernel(f"tile_candidates_{rows.suffix}")((n_items, row_tiles), (kernels.THREADS,), args)
    select_topk(rt, scores, k, n_rows=N, ids=ids, row_ptr=row_ptr.astype(xp.int64), mean_len=total / N,
                out=(out_s, out_l))
    return out_s, out_l, xp.diff(row_ptr)
