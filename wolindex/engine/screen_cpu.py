"""Numba kernels of the screening stage: scan int8 codes of every class, keep each query's best candidates.

A work item is (a run of queries, a range of class blocks). It walks its range in cache-sized chunks, and
each chunk against its queries four at a time (vnni.tile4), so a chunk of codes is read from memory once per
run of queries. Approximate scores feed per-(range, query) heaps; ranges are merged at the end.

The approximate score of class c for query i is ``qscale[i] * (scale[c] * float32(acc - 128 * csum[c]))
+ shift[c] + qconst[i]`` in float32, acc the tile's integer sum (the - 128 * csum[c] undoes the query's
+128 offset). No fastmath here: the NumPy reference (screen.py) computes the same float32 values."""
import numpy as np
from numba import njit, prange

from .heap import clear, offer, offer_unique, write_sorted
from .vnni import tile

CHUNK_BYTES = 256 * 1024   # codes per cache chunk


@njit(inline="always")
def _approx(acc, csum, scale, shift, qs, qc, c):
    return qs * (scale[c] * np.float32(acc - np.int32(128) * csum[c])) + shift[c] + qc


@njit(inline="always")
def _offer_block(acc_row, g, n_classes, csum, scale, shift, qs, qc, s, lab, vals):
    """Offer block g's 16 classes (acc_row: their integer sums for one query) to that query's heap (s, lab):
    all 16 scores first (vectorised), then one comparison with the heap's worst decides whether any is
    offered."""
    c0 = 16 * g
    best = np.float32(-np.inf)
    for j in range(16):
        v = _approx(acc_row[j], csum, scale, shift, qs, qc, c0 + j)
        vals[j] = v
        best = max(best, v)
    if best >= s[0]:
        for j in range(min(16, n_classes - c0)):
            offer(s, lab, vals[j], c0 + j)


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


@njit(parallel=True, cache=True)
def screen_kernel(blocks, csum, scale, shift, quads, qscale, qconst, n_classes, n_cand, n_ranges, run,
                  out_l, out_s):
    """Each query's n_cand best classes by approximate score.

    blocks (n_blocks, n_quads, 64) int8, csum / scale / shift (n_blocks * 16,) int32 / f32 / f32, quads
    (N, n_quads) int32, qscale / qconst (N,) f32 -> out_l (N, n_cand) int64 class ids (-1 padding) and out_s
    (N, n_cand) f32 approximate scores, best first. Queries go in runs of `run`, classes in n_ranges ranges."""
    N = quads.shape[0]
    n_blocks = blocks.shape[0]
    hs = np.empty((n_ranges, N, n_cand), np.float32)
    hl = np.empty((n_ranges, N, n_cand), np.int64)
    n_runs = (N + run - 1) // run
    chunk = max(1, CHUNK_BYTES // (64 * blocks.shape[1]))
    for item in prange(n_runs * n_ranges):
        r = item % n_ranges
        q_lo, q_hi, g_lo, g_hi = _work_item(item, n_ranges, run, N, n_blocks)
        acc = np.empty((8, 16), np.int32)
        vals = np.empty(16, np.float32)
        for i in range(q_lo, q_hi):
            clear(hs[r, i], hl[r, i])
        for c0 in range(g_lo, g_hi, chunk):
            c1 = min(g_hi, c0 + chunk)
            q = q_lo
            while q < q_hi:
                g = c0
                while g < c1:
                    n_q, n_b = _tile_shape(q, q_hi, g, c1)
                    tile(n_q, n_b, blocks, g, quads, q, acc)
                    for i in range(n_q):
                        for a in range(n_b):
                            _offer_block(acc[i * n_b + a], g + a, n_classes, csum, scale, shift, qscale[q + i],
                                         qconst[q + i], hs[r, q + i], hl[r, q + i], vals)
                    g += n_b
                q += n_q
    for i in prange(N):
        for r in range(1, n_ranges):
            for t in range(n_cand):
                offer(hs[0, i], hl[0, i], hs[r, i, t], hl[r, i, t])
        write_sorted(hs[0, i], hl[0, i], out_s[i], out_l[i])


@njit(inline="always")
def _bound_block(acc_row, g, n_classes, csum, row_stats, q_stats, qi, low_s, low_l, kept, kept_up, n_kept, overflow,
                 lo, up):
    """Certified screen, block g (16 classes) for query qi: offer each class's lower bound to the query's heap
    of the k best lower bounds, then keep the class (with its upper bound) when its upper bound reaches the
    heap's worst (the k-th best lower bound so far). Bounds of all 16 classes first (vectorised)."""
    c0 = 16 * g
    hmu, t, eq, n1, n2, e2 = (q_stats[qi, 0], q_stats[qi, 1], q_stats[qi, 2], q_stats[qi, 3], q_stats[qi, 4],
                              q_stats[qi, 5])
    best_up = -np.inf
    for j in range(16):
        c = c0 + j
        s = row_stats[0, c]
        bc = row_stats[4, c]
        dot = s * t * np.float64(acc_row[j] - np.int32(128) * csum[c])
        mid = hmu + dot + bc
        margin = ((min(n1 * row_stats[1, c], n2 * row_stats[6, c])
                   + s * min(eq * row_stats[2, c], e2 * row_stats[7, c])) * (1.0 + 1e-9)
                  + row_stats[5, c] * (n2 * row_stats[3, c] + abs(bc))
                  + 1e-9 * (abs(hmu) + abs(dot) + abs(bc)))
        lo[j] = mid - margin
        up[j] = mid + margin
        best_up = max(best_up, up[j])
    if best_up < low_s[qi, 0]:
        return
    n_real = min(16, n_classes - c0)
    for j in range(n_real):
        offer(low_s[qi], low_l[qi], lo[j], c0 + j)
    for j in range(n_real):
        if up[j] >= low_s[qi, 0]:
            m = n_kept[qi]
            if m < kept.shape[1]:
                kept[qi, m] = c0 + j
                kept_up[qi, m] = up[j]
                n_kept[qi] = m + 1
            else:
                overflow[qi] = True


@njit(parallel=True, cache=True)
def certified_kernel(blocks, csum, row_stats, quads, q_stats, n_classes, k, n_ranges, run, cap, out_l, out_n,
                     overflow):
    """Every class whose score can still reach the k-th best (see screen.py for the bounds).

    row_stats (8, n_blocks * 16) f64 and q_stats (N, 6) f64: the terms of the bounds (screen.row_bounds,
    screen.query_bounds). Writes out_l (N, n_ranges * cap) int64 (-1 padding) and out_n (N,) int64, how many; a
    query with more than `cap` kept classes in a range gets overflow[i] = True (its list is then incomplete)."""
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
        lo = np.empty(16, np.float64)
        up = np.empty(16, np.float64)
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
                        for a in range(n_b):
                            _bound_block(acc[i * n_b + a], g + a, n_classes, csum, row_stats, q_stats, q + i,
                                         low_s[r], low_l[r], kept[r], kept_up[r], n_kept[r], flags[r], lo, up)
                    g += n_b
                q += n_q
    for i in prange(N):
        for r in range(1, n_ranges):
            for t in range(k):
                offer(low_s[0, i], low_l[0, i], low_s[r, i, t], low_l[r, i, t])
        theta = low_s[0, i, 0]
        m = 0
        for r in range(n_ranges):
            overflow[i] |= flags[r, i]
            for t in range(n_kept[r, i]):
                if kept_up[r, i, t] >= theta:
                    out_l[i, m] = kept[r, i, t]
                    m += 1
        out_n[i] = m
        for t in range(m, out_l.shape[1]):
            out_l[i, t] = -1


@njit(inline="always")
def _offer_slots(acc_row, g, slot_class, csum, scale, shift, qs, qc, s, lab, vals):
    """_offer_block for codes stored bucket by bucket: slot 16 * g + j holds class slot_class[...] (-1: padding,
    whose shift is -inf); a class met twice (overlapping buckets) is kept once."""
    c0 = 16 * g
    best = np.float32(-np.inf)
    for j in range(16):
        v = _approx(acc_row[j], csum, scale, shift, qs, qc, c0 + j)
        vals[j] = v
        best = max(best, v)
    if best >= s[0]:
        for j in range(16):
            if slot_class[c0 + j] >= 0:
                offer_unique(s, lab, vals[j], slot_class[c0 + j])


@njit(parallel=True, cache=True)
def bucket_screen_kernel(blocks, block_ptr, slot_class, csum, scale, shift, quads, qscale, qconst, probes, n_cand,
                         n_parts, out_l, out_s):
    """Each query's n_cand best classes by approximate score among its probed buckets.

    blocks (n_blocks, n_quads, 64) int8 hold the buckets' codes, bucket p in blocks block_ptr[p]:block_ptr[p + 1];
    slot_class / csum / scale / shift (n_blocks * 16,) per slot; probes (N, m) int32 bucket ids (-1: none). Each
    query's probed blocks are cut into n_parts shares scored in parallel, then merged. Writes out_l (N, n_cand)
    int64 class ids (-1 padding) and out_s (N, n_cand) f32 approximate scores, best first."""
    N = quads.shape[0]
    hs = np.empty((N, n_parts, n_cand), np.float32)
    hl = np.empty((N, n_parts, n_cand), np.int64)
    for item in prange(N * n_parts):
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
        vals = np.empty(16, np.float32)
        seen = 0
        for p in probes[i]:
            if p < 0:
                continue
            g0 = block_ptr[p]
            size = block_ptr[p + 1] - g0
            a = max(lo, seen) - seen
            z = min(hi, seen + size) - seen
            g = g0 + a
            while g < g0 + z:
                n_b = 4 if g + 4 <= g0 + z else 1
                tile(1, n_b, blocks, g, quads, i, acc)
                for t in range(n_b):
                    _offer_slots(acc[t], g + t, slot_class, csum, scale, shift, qscale[i], qconst[i], s, lab, vals)
                g += n_b
            seen += size
    for i in prange(N):
        for part in range(1, n_parts):
            for t in range(n_cand):
                offer_unique(hs[i, 0], hl[i, 0], hs[i, part, t], hl[i, part, t])
        write_sorted(hs[i, 0], hl[i, 0], out_s[i], out_l[i])
