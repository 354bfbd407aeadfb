"""Adaptive's screened search (mode='approximate', screen=n) on the CPU engine, in one kernel call per step of
queries: code the queries, screen and rescore the head, fit the gates, open the tail clusters, screen the
opened clusters' codes and rescore the tail's n best. It returns what the general search (search_with: the head,
the router, the tail, a merge, each its own call) returns, without a call, a Python step or a routing mask
between the stages, which at batch 1 cost more than the stages themselves.

The tail is scanned cluster by cluster: the queries that open a cluster share a pass over its codes, four at a
time (vnni.py's 4-query tiles), so a batch reads each opened cluster's codes once per run of queries. The tail's
blocks are cut into ranges of equal work (opening queries x blocks), one work item per (range, run of
queries), so both threads stay busy at batch 1 as well."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ...engine.cpu import FAST, _dot1, _products_block, _score_block
from ...engine.dispatch import _launch, _num_threads, _row_block, readonly
from ...engine.heap import buffer_clear, buffer_offer, clear, write_sorted
from ...engine.screen import STEP_CELLS
from ...engine.screen_cpu import CHUNK_BYTES, _merge_ranges, code_queries_kernel
from ...engine.vnni import block_scores, tile
from ...rows import kernel_rows

RUN = 64   # queries per work item (a multiple of 4: the gates' register tiles)


@njit(cache=True)
def _scan(blocks, g_lo, g_hi, slot_class, corr, scale, shift, quads, qscale, qconst, n_sel, qid, bs, bl, bn):
    """Blocks g_lo:g_hi against the first n_sel queries of quads / qscale / qconst (contiguous rows), query t
    being query qid[t] of the buffers bs / bl (N, 2 m + 1) with counts bn (N,): each slot's class (slot_class,
    -1 for padding) offered with its approximate score. Cache-sized chunks of blocks, four queries at a time."""
    acc = np.empty((8, 16), np.int32)
    vals = np.empty((8, 16), np.float32)
    mask = np.empty(8, np.int32)
    worst = np.empty(4, np.float32)
    chunk = max(1, CHUNK_BYTES // (64 * blocks.shape[1]))
    for c0 in range(g_lo, g_hi, chunk):
        c1 = min(g_hi, c0 + chunk)
        q = 0
        while q < n_sel:
            g = c0
            n_q = 4 if q + 4 <= n_sel else 1
            while g < c1:
                n_b = (2 if n_q == 4 else 4) if g + (2 if n_q == 4 else 4) <= c1 else 1
                tile(n_q, n_b, blocks, g, quads, q, acc)
                for i in range(n_q):
                    worst[i] = bs[qid[q + i], 0]
                block_scores(n_q, n_b, acc, g, scale, corr, shift, qscale, qconst, q, worst, vals, mask)
                for t in range(n_q * n_b):
                    bits = mask[t]
                    if bits:
                        i = qid[q + t // n_b]
                        first = 16 * (g + t % n_b)
                        n = bn[i]
                        for j in range(16):
                            if (bits >> j) & 1 and slot_class[first + j] >= 0:
                                n = buffer_offer(bs[i], bl[i], n, vals[t, j], slot_class[first + j])
                        bn[i] = n
                g += n_b
            q += n_q


@njit(fastmath=FAST)
def _gates(V, c, H, q_lo, q_hi, r0, r1, out):
    """out[q_lo:q_hi, r0:r1] = H[q_lo:q_hi] @ V[r0:r1].T + c[r0:r1]: whole groups of four queries by the
    engine's products (cpu._products_block), the others four rows at a time (independent sums: at batch 1 a
    row's sum alone is bound by the adds' latency)."""
    q4 = q_lo + (q_hi - q_lo) // 4 * 4
    _products_block(V, c, H, q_lo, q4, r0, r1, out)
    for i in range(q4, q_hi):
        h = H[i]
        j = r0
        while j + 4 <= r1:
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            a2 = np.float32(0.0)
            a3 = np.float32(0.0)
            for t in range(h.shape[0]):
                x = h[t]
                a0 += V[j, t] * x
                a1 += V[j + 1, t] * x
                a2 += V[j + 2, t] * x
                a3 += V[j + 3, t] * x
            out[i, j] = a0 + c[j]
            out[i, j + 1] = a1 + c[j + 1]
            out[i, j + 2] = a2 + c[j + 2]
            out[i, j + 3] = a3 + c[j + 3]
            j += 4
        for t in range(j, r1):
            out[i, t] = _dot1(V[t], h) + c[t]


@njit(cache=True)
def _gather_rescore(i, bs, bl, bn, heap_s, heap_l, W, b, class_row, H, row_block):
    """Query i's m best classes over every range's buffer (bs / bl / bn: (R, N, 2 m + 1), (R, N)) rescored
    exactly into the heap heap_s / heap_l; returns how many were rescored."""
    n = _merge_ranges(i, bs, bl, bn)
    labels = bl[0, i, 1:n + 1]
    rows = labels.copy() if class_row.shape[0] == 0 else class_row[labels].astype(np.int64)
    hs = heap_s.reshape(1, heap_s.shape[0])
    hl = heap_l.reshape(1, heap_l.shape[0])
    _score_block(W, b, rows, labels, H, np.full(1, i, np.int64), hs, hl, np.zeros(1, np.int64), row_block, False)
    return n


@njit(cache=True)
def _head_part(part, q_lo, q_hi, n_head_ranges, block_ptr, blocks, slot_class, corr, scale, shift, quads, qscale,
               qconst, hb_s, hb_l, hb_n):
    """Part `part` of the head's blocks against queries q_lo:q_hi, into their buffers of range `part`."""
    head_blocks = block_ptr[1] - block_ptr[0]
    step = (head_blocks + n_head_ranges - 1) // n_head_ranges
    g_lo = block_ptr[0] + min(head_blocks, part * step)
    g_hi = block_ptr[0] + min(head_blocks, (part + 1) * step)
    for i in range(q_lo, q_hi):
        buffer_clear(hb_s[part, i], hb_l[part, i])
        hb_n[part, i] = 0
    _scan(blocks, g_lo, g_hi, slot_class, corr, scale, shift, quads[q_lo:q_hi], qscale[q_lo:q_hi],
          qconst[q_lo:q_hi], q_hi - q_lo, np.arange(q_lo, q_hi), hb_s[part], hb_l[part], hb_n[part])


@njit(cache=True)
def _open_clusters(i, heap_s, heap_l, gates, margin, rank, opened):
    """opened[i, j]: gate j of query i plus margin reaches the rank-th best score of the heap (heap_s[i],
    heap_l[i]: the head's top-k, left as it is)."""
    k = heap_s.shape[1]
    best_s = np.empty(k, np.float32)
    best_l = np.empty(k, np.int64)
    write_sorted(heap_s[i].copy(), heap_l[i].copy(), best_s, best_l)
    level = best_s[rank - 1]
    for j in range(gates.shape[1]):
        opened[i, j] = gates[i, j] + margin >= level


@njit(cache=True)
def equal_work_cuts(opened, cluster_block, n_ranges):
    """(n_ranges + 1,) int64 block ids: range r of the tail is blocks cuts[r]:cuts[r + 1], the ranges of about
    equal work (queries opening a cluster x its blocks). opened (N, J) bool; cluster_block (J + 1,) int64 the
    first block of each cluster (and the tail's end)."""
    J = opened.shape[1]
    work = np.empty(J + 1, np.int64)            # cumulative work before cluster j
    work[0] = 0
    for j in range(J):
        count = 0
        for i in range(opened.shape[0]):
            count += opened[i, j]
        work[j + 1] = work[j] + count * (cluster_block[j + 1] - cluster_block[j])
    cuts = np.empty(n_ranges + 1, np.int64)
    j = 0
    for r in range(n_ranges + 1):
        target = (work[J] * r + n_ranges - 1) // n_ranges
        while j < J and work[j + 1] < target:
            j += 1
        if j == J:
            cuts[r] = cluster_block[J]
        else:
            size = cluster_block[j + 1] - cluster_block[j]
            count = 0 if size == 0 else (work[j + 1] - work[j]) // size
            ahead = 0 if count == 0 else (target - work[j] + count - 1) // count
            cuts[r] = min(cluster_block[j + 1], cluster_block[j] + ahead)
    cuts[0] = cluster_block[0]
    cuts[n_ranges] = cluster_block[J]
    return cuts


@njit(cache=True)
def _tail_item(r, q_lo, q_hi, cuts, cluster_block, opened, blocks, slot_class, corr, scale, shift, quads, qscale,
               qconst, tb_s, tb_l, tb_n):
    """Tail range r against queries q_lo:q_hi: each cluster of the range scanned by the queries that open it,
    gathered into contiguous rows, into their buffers of range r."""
    for i in range(q_lo, q_hi):
        buffer_clear(tb_s[r, i], tb_l[r, i])
        tb_n[r, i] = 0
    if cuts[r] >= cuts[r + 1]:
        return
    sel_quads = np.empty((RUN, quads.shape[1]), np.int32)
    sel_scale = np.empty(RUN, np.float32)
    sel_const = np.empty(RUN, np.float32)
    qid = np.empty(RUN, np.int64)
    J = opened.shape[1]
    j = np.searchsorted(cluster_block, cuts[r], side="right") - 1
    while j < J and cluster_block[j] < cuts[r + 1]:
        n_sel = 0
        for i in range(q_lo, q_hi):
            if opened[i, j]:
                for t in range(quads.shape[1]):   # a loop, not a row assignment: no shape check to compile
                    sel_quads[n_sel, t] = quads[i, t]
                sel_scale[n_sel] = qscale[i]
                sel_const[n_sel] = qconst[i]
                qid[n_sel] = i
                n_sel += 1
        if n_sel:
            _scan(blocks, max(cuts[r], cluster_block[j]), min(cuts[r + 1], cluster_block[j + 1]), slot_class, corr,
                  scale, shift, sel_quads, sel_scale, sel_const, np.int64(n_sel), qid, tb_s[r], tb_l[r], tb_n[r])
        j += 1


@njit(parallel=True, cache=True)
def adaptive_screen_kernel(blocks, block_ptr, slot_class, corr, scale, shift, mean, gate_V, gate_c, cluster_ptr,
                           margin, rank, n_cand, W, b, class_row, H, k, row_block, threads, out_s, out_l, n_scored):
    """Adaptive's screened search of the queries H (N, d) f32.

    blocks (n_blocks, n_quads, 64) int8 and block_ptr / slot_class / corr / scale / shift: the buckets' codes
    (engine.screen.BucketCodes; bucket 0 the head, bucket 1 + t tail block t); mean (d,) f32 their centre;
    gate_V (J, d) / gate_c (J,) f32 the gates, cluster j owning tail blocks cluster_ptr[j]:cluster_ptr[j + 1];
    margin f32; rank: the head's rank-th best exact score (1-based) a gate plus margin must reach to open its
    cluster; n_cand: classes rescored in the head and in the tail; W (D, d) rows (float32 or 16-bit bits), b
    (D,) f32, class_row (D,) int32 each class's row (empty: row c); row_block: rows per cache block; threads:
    Numba's. Writes out_s (N, k) f32 exact scores, out_l (N, k) int64 (-1 padding), best first, and n_scored (N,)
    int64, the classes rescored."""
    N, J, width = H.shape[0], gate_V.shape[0], 2 * n_cand + 1
    quads = np.empty((N, blocks.shape[1]), np.int32)
    qscale = np.empty(N, np.float32)
    qconst = np.empty(N, np.float32)
    code_queries_kernel(H, H, mean, quads, qscale, qconst, np.empty(H.shape, np.int8))
    n_runs = (N + RUN - 1) // RUN
    n_tail_ranges = max(1, (threads + n_runs - 1) // n_runs)   # every thread has a work item
    n_head_ranges = max(1, min(block_ptr[1] - block_ptr[0], n_tail_ranges))
    hb_s, hb_l = np.empty((n_head_ranges, N, width), np.float32), np.empty((n_head_ranges, N, width), np.int64)
    hb_n = np.empty((n_head_ranges, N), np.int64)
    gates = np.empty((N, J), np.float32)
    gate_step = max(4, -(-J // n_head_ranges))
    parts = n_head_ranges + (J + gate_step - 1) // gate_step   # per run of queries: head ranges, then gate rows
    for item in prange(n_runs * parts):                         # the head's screen, and the gates
        q_lo, part = (item // parts) * RUN, item % parts
        if part < n_head_ranges:
            _head_part(part, q_lo, min(N, q_lo + RUN), n_head_ranges, block_ptr, blocks, slot_class, corr, scale,
                       shift, quads, qscale, qconst, hb_s, hb_l, hb_n)
        else:
            r0 = (part - n_head_ranges) * gate_step
            _gates(gate_V, gate_c, H, q_lo, min(N, q_lo + RUN), r0, min(J, r0 + gate_step), gates)
    heap_s, heap_l = np.empty((N, k), np.float32), np.empty((N, k), np.int64)
    head_n = np.empty(N, np.int64)
    opened = np.empty((N, J), np.bool_)
    for i in prange(N):                                         # the head rescored; the clusters each query opens
        q = np.int64(i)                                         # (one compiled helper for both loops' indexes)
        clear(heap_s[q], heap_l[q])
        head_n[q] = _gather_rescore(q, hb_s, hb_l, hb_n, heap_s[q], heap_l[q], W, b, class_row, H, row_block)
        _open_clusters(q, heap_s, heap_l, gates, margin, rank, opened)
    cluster_block = np.empty(J + 1, np.int64)                   # first block (of `blocks`) of each cluster
    for j in range(J + 1):
        cluster_block[j] = block_ptr[1 + cluster_ptr[j]]
    cuts = equal_work_cuts(opened, cluster_block, n_tail_ranges)
    tb_s, tb_l = np.empty((n_tail_ranges, N, width), np.float32), np.empty((n_tail_ranges, N, width), np.int64)
    tb_n = np.empty((n_tail_ranges, N), np.int64)
    for item in prange(n_runs * n_tail_ranges):                 # the tail's screen
        q_lo = (item // n_tail_ranges) * RUN
        _tail_item(item % n_tail_ranges, q_lo, min(N, q_lo + RUN), cuts, cluster_block, opened, blocks, slot_class,
                   corr, scale, shift, quads, qscale, qconst, tb_s, tb_l, tb_n)
    for i in prange(N):                                         # the tail's best rescored into the head's heap
        q = np.int64(i)
        n_scored[q] = head_n[q] + _gather_rescore(q, tb_s, tb_l, tb_n, heap_s[q], heap_l[q], W, b, class_row, H,
                                                  row_block)
        write_sorted(heap_s[q], heap_l[q], out_s[q], out_l[q])


class ScreenedSearch:
    """The kernel bound to one adaptive index's codes, gates and rows (made once: at batch 1 the per-call
    preparation of its arguments costs as much as the head's screen)."""

    def __init__(self, method, layer):
        codes, a = method.screen_codes, method.arrays
        W = readonly(kernel_rows(layer.W))
        class_row = np.zeros(0, np.int32) if layer.class_row is None else layer.class_row
        self.method, self.layer = method, layer
        self.index_arrays = tuple(readonly(x) for x in (   # read-only whether built or loaded: one compiled kernel
            codes.blocks, codes.block_ptr, codes.slot_class, codes.slot_corr, codes.slot_scale, codes.slot_shift,
            codes.mean, a["gate_V"], a["gate_c"], a["cluster_ptr"]))
        self.rows = (W, readonly(layer.b), readonly(class_row))
        self.row_block = _row_block(W)

    def __call__(self, H: np.ndarray, k: int, params):
        """H (N, d) float32 in steps of queries (the method's search_step) -> scores (N, k) f32, labels (N, k)
        int64, n_scored (N,) int64: what method.search_with returns with the same settings."""
        from ..ops import in_steps

        n_cand = max(k, params.screen)
        settings = (np.float32(params.margin), self.method.threshold_rank(k, params), n_cand)
        step = max(1, min(self.method.search_step(), STEP_CELLS // n_cand))

        def search(part):
            N = part.shape[0]
            out = np.empty((N, k), np.float32), np.empty((N, k), np.int64), np.empty(N, np.int64)
            _launch(adaptive_screen_kernel, *self.index_arrays, *settings, *self.rows, readonly(part), k,
                    self.row_block, _num_threads(), *out)
            return out

        return in_steps(np, H, k, step, search)
