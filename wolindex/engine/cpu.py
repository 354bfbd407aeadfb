"""Numba CPU kernels of the query engine.

All scoring goes through `_score_block`: a register-tiled (2 rows x 4 queries) dot-product kernel that
reads each class row once per row block and keeps it in cache while all of the block's queries use it,
feeding per-query top-k heaps directly (no N x D score buffer, no separate selection pass). Rows may be
stored in float16 or bfloat16 (wolindex.rows.kernel_rows): `widen` converts each value to float32 exactly
as it is read, so products are float32 products of the stored values.

Kernels use fastmath without 'nnan'/'ninf', so the -inf heap sentinels compare correctly; only the
summation order of a dot product is left to the compiler (scores may differ from numpy in the last ulps).
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

from .heap import clear, offer, offer_unique, write_sorted

FAST = {"reassoc", "contract", "nsz"}


HALF_BY_F16C = None   # float16 -> float32 by the F16C instruction (None: when the target CPU has it)


def _f16c(context) -> bool:
    if HALF_BY_F16C is not None:
        return HALF_BY_F16C
    return "+f16c" in getattr(context.codegen(), "_tm_features", "")


@intrinsic
def _float16_bits_to_float32(typingctx, bits):
    """Exact float16 -> float32: LLVM's fpext (vcvtph2ps) where the target CPU has F16C, else integer
    operations and selects (without F16C, fpext would call a runtime function Numba's JIT may not provide):
    normal values rebias the exponent, subnormal ones are normalised by their leading zeros, inf and NaN keep
    an all-ones exponent, the sign is carried over."""
    def codegen(context, builder, signature, args):
        if _f16c(context):
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        i32 = ir.IntType(32)

        def const(v):
            return ir.Constant(i32, v)

        h = builder.zext(args[0], i32)
        sign = builder.shl(builder.and_(h, const(0x8000)), const(16))
        em = builder.and_(h, const(0x7FFF))
        shifted = builder.shl(em, const(13))
        normal = builder.add(shifted, const(112 << 23))                  # exponent bias 15 -> 127
        special = builder.or_(shifted, const(0x7F800000))               # inf, NaN
        top = builder.sub(const(31), builder.ctlz(em, ir.Constant(ir.IntType(1), 0)))   # subnormal: m 2^-24
        subnormal = builder.or_(builder.shl(builder.add(top, const(103)), const(23)),
                                builder.and_(builder.shl(em, builder.sub(const(23), top)), const(0x7FFFFF)))
        value = builder.select(builder.icmp_unsigned(">=", em, const(0x0400)), normal, subnormal)
        value = builder.select(builder.icmp_unsigned("==", em, const(0)), const(0), value)
        value = builder.select(builder.icmp_unsigned(">=", em, const(0x7C00)), special, value)
        return builder.bitcast(builder.or_(value, sign), ir.FloatType())

    return types.float32(types.int16), codegen


@intrinsic
def _bfloat16_bits_to_float32(typingctx, bits):
    def codegen(context, builder, signature, args):
        wide = builder.zext(args[0], ir.IntType(32))
        return builder.bitcast(builder.shl(wide, ir.Constant(ir.IntType(32), 16)), ir.FloatType())

    return types.float32(types.uint16), codegen


def widen(x):
    """A stored row value as a float: float32 / float64 as is, float16 bits (int16) or bfloat16 bits (uint16,
    see wolindex.rows.kernel_rows) converted exactly to float32. Numba only (the overload below)."""
    raise NotImplementedError("widen runs inside Numba kernels only")


@overload(widen, inline="always")
def _widen(x):
    if isinstance(x, types.Float):
        return lambda x: x
    if x == types.int16:
        return lambda x: _float16_bits_to_float32(x)
    if x == types.uint16:
        return lambda x: _bfloat16_bits_to_float32(x)
    return None


@njit(fastmath=FAST, inline="always")
def _dot1(w, h):
    acc = np.float32(0.0)
    for t in range(w.shape[0]):
        acc += widen(w[t]) * h[t]
    return acc


@njit(fastmath=FAST, inline="always")
def _dot2x4(w0, w1, h0, h1, h2, h3):
    a00 = np.float32(0.0)
    a01 = np.float32(0.0)
    a02 = np.float32(0.0)
    a03 = np.float32(0.0)
    a10 = np.float32(0.0)
    a11 = np.float32(0.0)
    a12 = np.float32(0.0)
    a13 = np.float32(0.0)
    for t in range(w0.shape[0]):
        x0 = widen(w0[t])
        x1 = widen(w1[t])
        y0 = h0[t]
        y1 = h1[t]
        y2 = h2[t]
        y3 = h3[t]
        a00 += x0 * y0
        a01 += x0 * y1
        a02 += x0 * y2
        a03 += x0 * y3
        a10 += x1 * y0
        a11 += x1 * y1
        a12 += x1 * y2
        a13 += x1 * y3
    return a00, a01, a02, a03, a10, a11, a12, a13


@njit(inline="always")
def _rank_score(x, square):
    return x * x if square else x


@njit(fastmath=FAST)
def _score_block(W, b, rows, labels, H, qsel, hs, hl, hrow, row_block, square):
    """Score rows W[rows[j]] + b[rows[j]] (class labels[j]) against queries H[qsel] and offer each score
    to heap hrow[i] of (hs, hl) for query qsel[i] (its square when `square`: the spherical ranking). Rows
    are taken `row_block` at a time so they stay in
    cache while every query of the block uses them."""
    n_rows = rows.shape[0]
    n_q = qsel.shape[0]
    for r0 in range(0, n_rows, row_block):
        r1 = min(n_rows, r0 + row_block)
        i = 0
        while i + 4 <= n_q:
            h0 = H[qsel[i]]
            h1 = H[qsel[i + 1]]
            h2 = H[qsel[i + 2]]
            h3 = H[qsel[i + 3]]
            s0 = hs[hrow[i]]
            s1 = hs[hrow[i + 1]]
            s2 = hs[hrow[i + 2]]
            s3 = hs[hrow[i + 3]]
            l0 = hl[hrow[i]]
            l1 = hl[hrow[i + 1]]
            l2 = hl[hrow[i + 2]]
            l3 = hl[hrow[i + 3]]
            j = r0
            while j + 2 <= r1:
                row_a = rows[j]
                row_b = rows[j + 1]
                c0 = labels[j]
                c1 = labels[j + 1]
                a00, a01, a02, a03, a10, a11, a12, a13 = _dot2x4(W[row_a], W[row_b], h0, h1, h2, h3)
                b0 = b[row_a]
                b1 = b[row_b]
                offer(s0, l0, _rank_score(a00 + b0, square), c0)
                offer(s1, l1, _rank_score(a01 + b0, square), c0)
                offer(s2, l2, _rank_score(a02 + b0, square), c0)
                offer(s3, l3, _rank_score(a03 + b0, square), c0)
                offer(s0, l0, _rank_score(a10 + b1, square), c1)
                offer(s1, l1, _rank_score(a11 + b1, square), c1)
                offer(s2, l2, _rank_score(a12 + b1, square), c1)
                offer(s3, l3, _rank_score(a13 + b1, square), c1)
                j += 2
            if j < r1:
                c0 = labels[j]
                w0 = W[rows[j]]
                b0 = b[rows[j]]
                offer(s0, l0, _rank_score(_dot1(w0, h0) + b0, square), c0)
                offer(s1, l1, _rank_score(_dot1(w0, h1) + b0, square), c0)
                offer(s2, l2, _rank_score(_dot1(w0, h2) + b0, square), c0)
                offer(s3, l3, _rank_score(_dot1(w0, h3) + b0, square), c0)
            i += 4
        while i < n_q:
            h = H[qsel[i]]
            s0 = hs[hrow[i]]
            l0 = hl[hrow[i]]
            for j in range(r0, r1):
                r = rows[j]
                offer(s0, l0, _rank_score(_dot1(W[r], h) + b[r], square), labels[j])
            i += 1


@njit(parallel=True, fastmath=FAST, cache=True)
def exact_topk_kernel(W, b, H, k, labels, n_chunks, row_block, square, out_s, out_l):
    """Exact top-k of H @ W.T + b.  W (D, d) rows (float32, or float16 / bfloat16 bits, see widen), b (D,) f32,
    H (N, d) f32, labels (D,) int32 the class of each row (empty: row r is class r) -> out_s (N, k) f32,
    out_l (N, k) i64.

    Rows are split into n_chunks ranges scored in parallel, each into its own heaps; then merged."""
    D = W.shape[0]
    N = H.shape[0]
    hs = np.empty((n_chunks, N, k), np.float32)
    hl = np.empty((n_chunks, N, k), np.int64)
    all_rows = np.arange(D).astype(np.int32)
    row_labels = all_rows if labels.shape[0] == 0 else labels
    qsel = np.arange(N)
    step = (D + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        for i in range(N):
            clear(hs[c, i], hl[c, i])
        lo = min(D, c * step)
        hi = min(D, lo + step)
        _score_block(W, b, all_rows[lo:hi], row_labels[lo:hi], H, qsel, hs[c], hl[c], qsel, row_block, square)
    for i in prange(N):
        s = hs[0, i]
        lab = hl[0, i]
        for c in range(1, n_chunks):
            for t in range(k):
                offer(s, lab, hs[c, i, t], hl[c, i, t])
        write_sorted(s, lab, out_s[i], out_l[i])


@njit(fastmath=FAST, cache=True)
def exact_topk_serial_kernel(W, b, H, k, labels, row_block, square, out_s, out_l):
    """exact_topk_kernel on the calling thread, for problems too small to repay waking the other threads
    (a gate's rows for one query)."""
    N = H.shape[0]
    hs = np.empty((N, k), np.float32)
    hl = np.empty((N, k), np.int64)
    for i in range(N):
        clear(hs[i], hl[i])
    all_rows = np.arange(W.shape[0]).astype(np.int32)
    qsel = np.arange(N)
    _score_block(W, b, all_rows, all_rows if labels.shape[0] == 0 else labels, H, qsel, hs, hl, qsel, row_block,
                 square)
    for i in range(N):
        write_sorted(hs[i], hl[i], out_s[i], out_l[i])


@njit(inline="always")
def _collect(probes_row, indptr, indices, row_of, st, tag, cr, cl):
    """Write the distinct classes of the probed buckets to cl (their rows to cr); returns how many."""
    n = 0
    for j in range(probes_row.shape[0]):
        bkt = probes_row[j]
        if bkt < 0:
            continue
        for p in range(indptr[bkt], indptr[bkt + 1]):
            cls = indices[p]
            if st[cls] != tag:
                st[cls] = tag
                cr[n] = row_of[p]
                cl[n] = cls
                n += 1
    return n


@njit(parallel=True, fastmath=FAST, cache=True)
def fused_candidates_kernel(W, b, row_of, H, probes, indptr, indices, k, stamps, cand_rows, cand_labels, stamp0,
                            row_block, square, out_s, out_l, n_scored):
    """Per query: the union of its probed buckets (each class once), scored exactly, top-k.

    Bucket entry p is class indices[p] with its row W[row_of[p]], b[row_of[p]]. probes (N, m) int32 bucket
    ids (-1: none); stamps, cand_rows, cand_labels (n_chunks, D) int32 per-chunk workspaces, stamps holding
    values < stamp0 on entry. Queries are split into n_chunks contiguous runs scored in parallel.
    Writes out_s (N, k), out_l (N, k) and n_scored (N,) = distinct classes scored."""
    N = H.shape[0]
    n_chunks = stamps.shape[0]
    step = (N + n_chunks - 1) // n_chunks
    for c in prange(n_chunks):
        hs = np.empty((1, k), np.float32)
        hl = np.empty((1, k), np.int64)
        zero = np.zeros(1, np.int64)
        qsel = np.empty(1, np.int64)
        for i in range(c * step, min(N, (c + 1) * step)):
            n = _collect(probes[i], indptr, indices, row_of, stamps[c], stamp0 + i, cand_rows[c], cand_labels[c])
            clear(hs[0], hl[0])
            qsel[0] = i
            _score_block(W, b, cand_rows[c, :n], cand_labels[c, :n], H, qsel, hs, hl, zero, row_block, square)
            write_sorted(hs[0], hl[0], out_s[i], out_l[i])
            n_scored[i] = n


@njit(parallel=True, fastmath=FAST, cache=True)
def split_candidates_kernel(W, b, row_of, H, probes, indptr, indices, k, stamps, cand_rows, cand_labels, stamp0,
                            n_parts, row_block, square, out_s, out_l, n_scored):
    """fused_candidates_kernel for fewer queries than threads: one query at a time, its candidate list cut
    into n_parts scored in parallel (more memory traffic in flight), the parts' heaps then merged.
    Uses the first workspace row only."""
    N = H.shape[0]
    hs = np.empty((n_parts, k), np.float32)
    hl = np.empty((n_parts, k), np.int64)
    for i in range(N):
        n = _collect(probes[i], indptr, indices, row_of, stamps[0], stamp0 + i, cand_rows[0], cand_labels[0])
        step = (n + n_parts - 1) // n_parts
        for t in prange(n_parts):
            clear(hs[t], hl[t])
            lo = min(n, t * step)
            hi = min(n, lo + step)
            qsel = np.full(1, i, np.int64)
            heap = np.full(1, t, np.int64)
            _score_block(W, b, cand_rows[0, lo:hi], cand_labels[0, lo:hi], H, qsel, hs, hl, heap, row_block,
                         square)
        for t in range(1, n_parts):
            for j in range(k):
                offer(hs[0], hl[0], hs[t, j], hl[t, j])
        write_sorted(hs[0], hl[0], out_s[i], out_l[i])
        n_scored[i] = n


@njit(parallel=True, fastmath=FAST, cache=True)
def grouped_candidates_kernel(W, b, row_of, H, indptr, indices, item_bucket, item_start, item_stop,
                              pair_query, pair_heap, heap_ptr, k, row_block, square, out_s, out_l):
    """Queries grouped by bucket: each work item scores one bucket's rows (W[row_of[p]], class indices[p])
    against a run of the queries that probe it (pair_query[item_start:item_stop]), each row read once per
    item, into per-(query, probe) heaps pair_heap; then query i merges its heaps heap_ptr[i]:heap_ptr[i + 1],
    a class kept once."""
    N = H.shape[0]
    n_heaps = heap_ptr[N]
    hs = np.empty((n_heaps + N, k), np.float32)
    hl = np.empty((n_heaps + N, k), np.int64)
    for t in prange(n_heaps + N):
        clear(hs[t], hl[t])
    for it in prange(item_bucket.shape[0]):
        bkt = item_bucket[it]
        a = item_start[it]
        z = item_stop[it]
        lo = indptr[bkt]
        hi = indptr[bkt + 1]
        _score_block(W, b, row_of[lo:hi], indices[lo:hi], H, pair_query[a:z], hs, hl, pair_heap[a:z], row_block,
                     square)
    for i in prange(N):
        s = hs[n_heaps + i]
        lab = hl[n_heaps + i]
        for j in range(heap_ptr[i], heap_ptr[i + 1]):
            for t in range(k):
                offer_unique(s, lab, hs[j, t], hl[j, t])
        write_sorted(s, lab, out_s[i], out_l[i])


@njit(fastmath=FAST)
def _products_block(V, c, H, q0, q1, r0, r1, out):
    """out[q0:q1, r0:r1] = H[q0:q1] @ V[r0:r1].T + c[r0:r1], in register tiles of 2 rows x 4 queries."""
    i = q0
    while i + 4 <= q1:
        h0 = H[i]
        h1 = H[i + 1]
        h2 = H[i + 2]
        h3 = H[i + 3]
        j = r0
        while j + 2 <= r1:
            a00, a01, a02, a03, a10, a11, a12, a13 = _dot2x4(V[j], V[j + 1], h0, h1, h2, h3)
            out[i, j] = a00 + c[j]
            out[i + 1, j] = a01 + c[j]
            out[i + 2, j] = a02 + c[j]
            out[i + 3, j] = a03 + c[j]
            out[i, j + 1] = a10 + c[j + 1]
            out[i + 1, j + 1] = a11 + c[j + 1]
            out[i + 2, j + 1] = a12 + c[j + 1]
            out[i + 3, j + 1] = a13 + c[j + 1]
            j += 2
        if j < r1:
            for t in range(4):
                out[i + t, j] = _dot1(V[j], H[i + t]) + c[j]
        i += 4
    while i < q1:
        for j in range(r0, r1):
            out[i, j] = _dot1(V[j], H[i]) + c[j]
        i += 1


@njit(parallel=True, fastmath=FAST, cache=True)
def products_kernel(V, c, H, query_step, row_step, out):
    """out (N, R) = H (N, d) @ V (R, d).T + c (R,), float32 or float64 (one dtype for all; V may be 16-bit
    rows, see widen, with float32 H and c), in work items of query_step queries x row_step rows in parallel."""
    n_q = (H.shape[0] + query_step - 1) // query_step
    n_r = (V.shape[0] + row_step - 1) // row_step
    for item in prange(n_q * n_r):
        q0 = (item // n_r) * query_step
        r0 = (item % n_r) * row_step
        _products_block(V, c, H, q0, min(H.shape[0], q0 + query_step), r0, min(V.shape[0], r0 + row_step), out)


@njit(fastmath=FAST, cache=True)
def products_serial_kernel(V, c, H, out):
    """products_kernel on the calling thread, for products too small to repay waking the other threads."""
    _products_block(V, c, H, 0, H.shape[0], 0, V.shape[0], out)
