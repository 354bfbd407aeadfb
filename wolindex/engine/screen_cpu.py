"""Numba kernels of the screening stage: scan int8 codes of every class, keep each query's best candidates.

A work item is (a run of queries, a range of class blocks). It walks its range in cache-sized chunks, and
each chunk against its queries four at a time (vnni.tile4), so a chunk of codes is read from memory once per
run of queries. Approximate scores feed per-(range, query) top-m buffers (heap.py); ranges are merged at the
end, and screen_rescore_kernel then rescores each query's candidates exactly in the same call.

The approximate score of class c for query i is ``qscale[i] * (scale[c] * float32(acc) - corr[c]) + shift[c]
+ qconst[i]`` in float32 (vnni.block_scores), acc the tile's integer sum and corr[c] = scale[c] * 128 *
(the sum of c's codes), which undoes the query's +128 offset. No fastmath here: the NumPy reference
(screen.py) computes the same float32 values."""
import numpy as np
from numba import njit, prange

from .cpu import _score_block
from .heap import EMPTY, buffer_clear, buffer_cut, buffer_offer, clear, offer, offer_unique, write_sorted
from .vnni import block_scores, block_upper, tile

CHUNK_BYTES = 256 * 1024   # codes per cache chunk


@njit(cache=True)
def code_queries_kernel(Z, H, mean, quads, qscale, qconst, p):
    """Queries coded for the scan. Z (N, r) f32 their coded coordinates (H, or its projection), H (N, d) f32,
    mean (d,) f32 -> p (N, r) int8 codes and qscale (N,) f32 exactly as screen.quantize gives them (round half
    to even, float32 division), quads (N, n_quads) int32: the codes + 128 as uint8, four to an int32 (128
    past r), and qconst (N,) f32 = H . mean."""
    N, r = Z.shape
    for i in range(N):
        top = np.float32(0)
        for j in range(r):
            top = max(top, abs(Z[i, j]))
        s = np.float32(top / np.float32(127))
        qscale[i] = s
        safe = s if s > 0 else np.float32(1)
        row = quads[i].view(np.uint8)
        row[:] = 128
        for j in range(r):
            c = min(max(np.rint(np.float32(Z[i, j] / safe)), np.float32(-127)), np.float32(127))
            p[i, j] = np.int8(c)
            row[j] = np.uint8(np.int16(c) + 128)
        acc = np.float32(0)
        for j in range(H.shape[1]):
            acc += H[i, j] * mean[j]
        qconst[i] = acc


@njit(inline="always")
def _keep_masked(vals_row, bits, c0, n_classes, bs, bl, n):
    """Offer the classes c0 + j whose bit j is set (their scores vals_row[j]) to the buffer (bs, bl) of n
    entries; returns the new count."""
    for j in range(16):
        if (bits >> j) & 1 and c0 + j < n_classes:
            n = buffer_offer(bs, bl, n, vals_row[j], c0 + j)
    return n


@njit(inline="always")
def _tile_shape(q, q_hi, g, g_hi):
    """(queries, blocks) of the next tile at query q and block g: 4 x 2 or 1 x 4 where they fit, else x 1."""
    n_q = 4 if q + 4 <= q_hi else 1
    wide = 2 if n_q == 4 else 4
    return n_q, wide if g + wide <= g_hi else 1


@njit(inline="always")
def _work_item(item, n_ranges, run, N, n_blocks):
    """(first query, end query, first block, end block) of work item `item`."""
    r = item % n_ranges
    q_lo = (item // n_ranges) * run
    step = (n_blocks + n_ranges - 1) // n_ranges
    g_lo = min(n_blocks, r * step)
    return q_lo, min(N, q_lo + run), g_lo, min(n_blocks, g_lo + step)


@njit(inline="always")
def _scan_item(item, blocks, corr, scale, shift, quads, qscale, qconst, n_classes, n_ranges, run, bs, bl, bn):
    """Work item `item` of a scan: its queries against its range r of classes, into the buffers bs[r] / bl[r]
    (N, 2 m + 1) with counts bn[r] (N,) (heap.py)."""
    r = item % n_ranges
    q_lo, q_hi, g_lo, g_hi = _work_item(item, n_ranges, run, quads.shape[0], blocks.shape[0])
    chunk = max(1, CHUNK_BYTES // (64 * blocks.shape[1]))
    acc = np.empty((8, 16), np.int32)
    vals = np.empty((8, 16), np.float32)
    mask = np.empty(8, np.int32)
    worst = np.empty(4, np.float32)
    for i in range(q_lo, q_hi):
        buffer_clear(bs[r, i], bl[r, i])
        bn[r, i] = 0
    for c0 in range(g_lo, g_hi, chunk):
        c1 = min(g_hi, c0 + chunk)
        q = q_lo
        while q < q_hi:
            g = c0
            while g < c1:
                n_q, n_b = _tile_shape(q, q_hi, g, c1)
                tile(n_q, n_b, blocks, g, quads, q, acc)
                for i in range(n_q):
                    worst[i] = bs[r, q + i, 0]
                block_scores(n_q, n_b, acc, g, scale, corr, shift, qscale, qconst, q, worst, vals, mask)
                for t in range(n_q * n_b):
                    if mask[t]:
                        i = q + t // n_b
                        bn[r, i] = _keep_masked(vals[t], mask[t], 16 * (g + t % n_b), n_classes, bs[r, i], bl[r, i],
                                                bn[r, i])
                g += n_b
            q += n_q


@njit(inline="always")
def _merge_ranges(i, bs, bl, bn):
    """Query i's m best classes over every range, to bs[0, i] / bl[0, i] slots 1..n; returns n."""
    n = bn[0, i]
    for r in range(1, bs.shape[0]):
        for t in range(1, bn[r, i] + 1):
            n = buffer_offer(bs[0, i], bl[0, i], n, bs[r, i, t], bl[r, i, t])
    return buffer_cut(bs[0, i], bl[0, i], n)


@njit(parallel=True, cache=True)
def screen_kernel(blocks, corr, scale, shift, quads, qscale, qconst, n_classes, n_cand, n_ranges, run,
                  out_l, out_s):
    """Each query's n_cand best classes by approximate score.

    blocks (n_blocks, n_quads, 64) int8, corr / scale / shift (n_blocks * 16,) f32, quads (N, n_quads) int32,
    qscale / qconst (N,) f32 -> out_l (N, n_cand) int64 class ids (-1 padding) and out_s (N, n_cand) f32
    approximate scores, best first. Queries go in runs of `run`, classes in n_ranges ranges."""
    N = quads.shape[0]
    bs = np.empty((n_ranges, N, 2 * n_cand + 1), np.float32)
    bl = np.empty((n_ranges, N, 2 * n_cand + 1), np.int64)
    bn = np.empty((n_ranges, N), np.int64)
    for item in prange(-(-N // run) * n_ranges):
        _scan_item(item, blocks, corr, scale, shift, quads, qscale, qconst, n_classes, n_ranges, run, bs, bl, bn)
    for i in prange(N):
        n = _merge_ranges(i, bs, bl, bn)
        hs = np.empty(n_cand, np.float32)
        hl = np.empty(n_cand, np.int64)
        clear(hs, hl)
        for t in range(1, n + 1):
            offer(hs, hl, bs[0, i, t], bl[0, i, t])
        write_sorted(hs, hl, out_s[i], out_l[i])


@njit(parallel=True, cache=True)
def screen_rescore_kernel(blocks, corr, scale, shift, quads, qscale, qconst, n_classes, n_cand, n_ranges, run, W, b,
                          H, k, row_block, out_s, out_l, n_scored):
    """screen_kernel's n_cand candidates of each query, rescored exactly: the top-k of H @ W.T + b among them.

    W (D, d) rows (float32, or 16-bit bits: cpu.widen) and b (D,) f32 (row c is class c), H (N, d) f32 the
    queries coded in quads / qscale / qconst -> out_s (N, k) f32 exact scores, out_l (N, k) int64 (-1
    padding), best first, and n_scored (N,) int64, the classes rescored. The exact scores are
    cpu._score_block's, as in every exact search (its fastmath stays in its own function: the scan's float32
    arithmetic is the NumPy reference's)."""
    N = quads.shape[0]
    bs = np.empty((n_ranges, N, 2 * n_cand + 1), np.float32)
    bl = np.empty((n_ranges, N, 2 * n_cand + 1), np.int64)
    bn = np.empty((n_ranges, N), np.int64)
    for item in prange(-(-N // run) * n_ranges):
        _scan_item(item, blocks, corr, scale, shift, quads, qscale, qconst, n_classes, n_ranges, run, bs, bl, bn)
    for i in prange(N):
        n = _merge_ranges(i, bs, bl, bn)
        _rescore(i, bl[0, i, 1:n + 1], bl[0, i, 1:n + 1], W, b, H, k, row_block, out_s, out_l)
        n_scored[i] = n


@njit(inline="always")
def _rescore(i, rows, labels, W, b, H, k, row_block, out_s, out_l):
    """Query i's exact top-k over the rows W[rows] + b[rows] (classes labels), to out_s[i] / out_l[i]
    (cpu._score_block's scores, as in every exact search)."""
    hs = np.empty((1, k), np.float32)
    hl = np.empty((1, k), np.int64)
    clear(hs[0], hl[0])
    _score_block(W, b, rows, labels, H, np.full(1, i, np.int64), hs, hl, np.zeros(1, np.int64), row_block, False)
    write_sorted(hs[0], hl[0], out_s[i], out_l[i])


@njit(inline="always")
def _bound_class(acc, c, csum, row_stats, q_stats, qi, low_s, low_l, kept, kept_up, n_kept, overflow):
    """Certified screen, class c for query qi: offer its lower bound to the query's heap of the k best lower
    bounds, then keep the class (with its upper bound) when its upper bound reaches the heap's worst (the
    k-th best lower bound so far). float64 throughout."""
    s = row_stats[0, c]
    bc = row_stats[4, c]
    dot = s * q_stats[qi, 1] * np.float64(acc - np.int32(128) * csum[c])
    mid = q_stats[qi, 0] + dot + bc
    margin = ((min(q_stats[qi, 3] * row_stats[1, c], q_stats[qi, 4] * row_stats[6, c])
               + s * min(q_stats[qi, 2] * row_stats[2, c], q_stats[qi, 5] * row_stats[7, c])) * (1.0 + 1e-9)
              + row_stats[5, c] * (q_stats[qi, 4] * row_stats[3, c] + abs(bc))
              + 1e-9 * (abs(q_stats[qi, 0]) + abs(dot) + abs(bc)))
    offer(low_s[qi], low_l[qi], mid - margin, c)
    if mid + margin >= low_s[qi, 0]:
        m = n_kept[qi]
        if m < kept.shape[1]:
            kept[qi, m] = c
            kept_up[qi, m] = mid + margin
            n_kept[qi] = m + 1
        else:
            overflow[qi] = True


@njit(parallel=True, cache=True)
def certified_kernel(blocks, csum, corr, scale, shift, A, B, row_stats, quads, qscale, qconst, qa, qb, q_stats,
                     n_classes, k, n_ranges, run, cap, out_l, out_n, overflow):
    """Every class whose score can still reach the k-th best (see screen.py for the bounds).

    row_stats (8, n_blocks * 16) f64 and q_stats (N, 7) f64: the terms of the bounds (screen.Certificate,
    screen.query_bounds); corr / scale / shift and qscale / qconst as in screen_kernel. A class is looked at
    in float64 only when its float32 approximate score plus qa * A[c] + qb * B[c] (a bound on most of its
    margin) reaches the query's k-th best lower bound minus q_stats[:, 6] (the rest of the margin and the
    float32 rounding): the others cannot be kept.
    Writes out_l (N, n_ranges * cap) int64 (-1 padding) and out_n (N,) int64, how many; a query with more
    than `cap` kept classes in a range gets overflow[i] = True (its list is then incomplete)."""
    N = quads.shape[0]
    n_blocks = blocks.shape[0]
    low_s = np.empty((n_ranges, N, k), np.float64)
    low_l = np.empty((n_ranges, N, k), np.int64)
    kept = np.empty((n_ranges, N, cap), np.int64)
    kept_up = np.empty((n_ranges, N, cap), np.float64)
    n_kept = np.zeros((n_ranges, N), np.int64)
    flags = np.zeros((n_ranges, N), np.bool_)
    n_runs = (N + run - 1) // run
    chunk = max(1, CHUNK_BYTES // (64 * blocks.shape[1]))
    for item in prange(n_runs * n_ranges):
        r = item % n_ranges
        q_lo, q_hi, g_lo, g_hi = _work_item(item, n_ranges, run, N, n_blocks)
        acc = np.empty((8, 16), np.int32)
        vals = np.empty((8, 16), np.float32)
        mask = np.empty(8, np.int32)
        worst = np.empty(4, np.float32)
        for i in range(q_lo, q_hi):
            clear(low_s[r, i], low_l[r, i])
        for c0 in range(g_lo, g_hi, chunk):
            c1 = min(g_hi, c0 + chunk)
            q = q_lo
            while q < q_hi:
                g = c0
                while g < c1:
                    n_q, n_b = _tile_shape(q, q_hi, g, c1)
                    tile(n_q, n_b, blocks, g, quads, q, acc)
                    for i in range(n_q):
                        w = low_s[r, q + i, 0] - q_stats[q + i, 6]
                        worst[i] = np.float32(w - abs(w) * 1e-6)
                    block_upper(n_q, n_b, acc, g, scale, corr, shift, qscale, qconst, A, B, qa, qb, q, worst, vals,
                                mask)
                    for t in range(n_q * n_b):
                        bits = mask[t]
                        c_first = 16 * (g + t % n_b)
                        for j in range(16):
                            if (bits >> j) & 1 and c_first + j < n_classes:
                                _bound_class(acc[t, j], c_first + j, csum, row_stats, q_stats, q + t // n_b,
                                             low_s[r], low_l[r], kept[r], kept_up[r], n_kept[r], flags[r])
                    g += n_b
                q += n_q
    for i in prange(N):
        _certified_merge(i, low_s, low_l, kept, kept_up, n_kept, flags, out_l, out_n, overflow)


@njit(inline="always")
def _certified_merge(i, low_s, low_l, kept, kept_up, n_kept, flags, out_l, out_n, overflow):
    """Query i: theta, the k-th best lower bound over all ranges, then every kept class whose upper bound
    reaches it, to out_l[i] (out_n[i] of them, -1 after)."""
    for r in range(1, low_s.shape[0]):
        for t in range(low_s.shape[2]):
            offer(low_s[0, i], low_l[0, i], low_s[r, i, t], low_l[r, i, t])
    theta = low_s[0, i, 0]
    m = 0
    for r in range(low_s.shape[0]):
        overflow[i] |= flags[r, i]
        for t in range(n_kept[r, i]):
            if kept_up[r, i, t] >= theta:
                out_l[i, m] = kept[r, i, t]
                m += 1
    out_n[i] = m
    for t in range(m, out_l.shape[1]):
        out_l[i, t] = -1


@njit(inline="always")
def _bucket_part(item, n_parts, blocks, block_ptr, slot_class, corr, scale, shift, quads, qscale, qconst, probes,
                 hs, hl):
    """Share `item % n_parts` of query `item // n_parts`'s probed blocks, into the heap hs / hl [i, part]."""
    i = item // n_parts
    part = item % n_parts
    s = hs[i, part]
    lab = hl[i, part]
    clear(s, lab)
    total = 0
    for p in probes[i]:
        if p >= 0:
            total += block_ptr[p + 1] - block_ptr[p]
    share = (total + n_parts - 1) // n_parts
    lo = part * share
    hi = min(total, lo + share)
    acc = np.empty((8, 16), np.int32)
    vals = np.empty((8, 16), np.float32)
    mask = np.empty(8, np.int32)
    worst = np.empty(4, np.float32)
    seen = 0
    for p in probes[i]:
        if p < 0:
            continue
        g0 = block_ptr[p]
        size = block_ptr[p + 1] - g0
        g = g0 + max(lo, seen) - seen
        end = g0 + min(hi, seen + size) - seen
        while g < end:
            n_b = 4 if g + 4 <= end else 1
            tile(1, n_b, blocks, g, quads, i, acc)
            worst[0] = s[0]
            block_scores(1, n_b, acc, g, scale, corr, shift, qscale, qconst, i, worst, vals, mask)
            for a in range(n_b):
                bits = mask[a]
                for j in range(16):
                    if (bits >> j) & 1 and slot_class[16 * (g + a) + j] >= 0:
                        offer_unique(s, lab, vals[a, j], slot_class[16 * (g + a) + j])
            g += n_b
        seen += size


@njit(inline="always")
def _merge_parts(i, hs, hl):
    """Query i's parts merged into hs[i, 0] / hl[i, 0], a class kept once."""
    for part in range(1, hs.shape[1]):
        for t in range(hs.shape[2]):
            offer_unique(hs[i, 0], hl[i, 0], hs[i, part, t], hl[i, part, t])


@njit(parallel=True, cache=True)
def bucket_screen_rescore_kernel(blocks, block_ptr, slot_class, corr, scale, shift, quads, qscale, qconst, probes,
                                 n_cand, n_parts, W, b, class_row, H, k, row_block, out_s, out_l, n_scored):
    """Each query's n_cand best classes by approximate score among its probed buckets, rescored exactly (as in
    screen_rescore_kernel).

    blocks (n_blocks, n_quads, 64) int8 hold the buckets' codes, bucket p in blocks block_ptr[p]:block_ptr[p + 1];
    slot_class / corr / scale / shift (n_blocks * 16,) per slot (padding: class -1, shift -inf); probes (N, m)
    int32 bucket ids (-1: none). Each query's probed blocks are cut into n_parts shares scored in parallel,
    then merged; a class met twice (overlapping buckets) is kept once. Class c's row is W[class_row[c]]
    (class_row (D,) int32; empty: row c). Writes out_s (N, k) f32 exact scores, out_l (N, k) int64 (-1
    padding), best first, and n_scored (N,) int64, the classes rescored."""
    N = quads.shape[0]
    hs = np.empty((N, n_parts, n_cand), np.float32)
    hl = np.empty((N, n_parts, n_cand), np.int64)
    for item in prange(N * n_parts):
        _bucket_part(item, n_parts, blocks, block_ptr, slot_class, corr, scale, shift, quads, qscale, qconst, probes,
                     hs, hl)
    for i in prange(N):
        _merge_parts(i, hs, hl)
        labels = np.empty(n_cand, np.int64)
        rows = np.empty(n_cand, np.int64)
        n = 0
        for t in range(n_cand):
            c = hl[i, 0, t]
            if c != EMPTY:
                labels[n] = c
                rows[n] = c if class_row.shape[0] == 0 else class_row[c]
                n += 1
        _rescore(i, rows[:n], labels[:n], W, b, H, k, row_block, out_s, out_l)
        n_scored[i] = n
