"""Fixed-size top-k heaps and top-m buffers for Numba kernels.

A heap is a pair of 1-D arrays (scores float32, labels int64) of length k, kept as a min-heap on the
ranking order (score descending, then label ascending), so its root is the worst entry kept. Empty slots
hold (-inf, EMPTY), worse than any real entry.

A buffer keeps the m best of a long stream at a lower cost per entry than a heap of m: a pair of arrays of
length 2 m + 1 whose slot 0 holds the threshold (like a heap's root: an entry must rank above it to be kept)
and slots 1..n the entries kept so far, in no order. When the buffer is full it is cut to its m best
(a quickselect) and the threshold becomes the m-th best; cut once more at the end, it holds the stream's m best
(ties: smaller label), the same entries as a heap of m would."""
import numpy as np
from numba import njit

EMPTY = np.iinfo(np.int64).max


@njit(inline="always")
def worse(s1, l1, s2, l2):
    """True when (s1, l1) ranks below (s2, l2)."""
    return s1 < s2 or (s1 == s2 and l1 > l2)


@njit(inline="always")
def sift_down(hs, hl, i, size, s, lab):
    """Place (s, lab) at slot i of the heap's first `size` slots and restore the heap below it."""
    while True:
        c = 2 * i + 1
        if c >= size:
            break
        if c + 1 < size and worse(hs[c + 1], hl[c + 1], hs[c], hl[c]):
            c += 1
        if worse(hs[c], hl[c], s, lab):
            hs[i] = hs[c]
            hl[i] = hl[c]
            i = c
        else:
            break
    hs[i] = s
    hl[i] = lab


@njit
def replace_root(hs, hl, s, lab):
    """Put (s, lab) in place of the heap's worst entry. A call, not inlined into the kernels: offers rarely
    reach it, and one copy of its loop per offer made every kernel slow to compile."""
    sift_down(hs, hl, 0, hs.shape[0], s, lab)


@njit(inline="always")
def offer(hs, hl, s, lab):
    """Keep (s, lab) if it beats the worst entry."""
    if worse(hs[0], hl[0], s, lab):
        replace_root(hs, hl, s, lab)


@njit(inline="always")
def offer_unique(hs, hl, s, lab):
    """offer, skipping a label the heap already holds (for merging overlapping candidate sets)."""
    if worse(hs[0], hl[0], s, lab):
        for t in range(hl.shape[0]):
            if hl[t] == lab:
                return
        replace_root(hs, hl, s, lab)


@njit(inline="always")
def clear(hs, hl):
    hs[:] = -np.inf
    hl[:] = EMPTY


@njit(inline="always")
def write_sorted(hs, hl, out_s, out_l):
    """Empty the heap into out_s / out_l, best first; EMPTY slots become label -1, score -inf."""
    size = hs.shape[0]
    for pos in range(size - 1, -1, -1):
        s = hs[0]
        lab = hl[0]
        out_s[pos] = s
        out_l[pos] = -1 if lab == EMPTY else lab
        sift_down(hs, hl, 0, pos, hs[pos], hl[pos])


@njit(inline="always")
def buffer_clear(bs, bl):
    """An empty buffer: threshold (-inf, EMPTY)."""
    bs[0] = -np.inf
    bl[0] = EMPTY


@njit(inline="always")
def buffer_cut(bs, bl, n):
    """Cut a buffer of n entries to its m best (m = (len - 1) // 2), the m-th best then its threshold, in
    slot m; returns the new count, min(n, m)."""
    m = (bs.shape[0] - 1) // 2
    if n <= m:
        return n
    lo = 1
    hi = n
    while lo < hi:
        p = (lo + hi) // 2
        ps = bs[p]
        pl = bl[p]
        bs[p] = bs[hi]
        bl[p] = bl[hi]
        store = lo
        for j in range(lo, hi):
            if worse(ps, pl, bs[j], bl[j]):
                s = bs[j]
                lab = bl[j]
                bs[j] = bs[store]
                bl[j] = bl[store]
                bs[store] = s
                bl[store] = lab
                store += 1
        bs[hi] = bs[store]
        bl[hi] = bl[store]
        bs[store] = ps
        bl[store] = pl
        if store == m:
            break
        if store < m:
            lo = store + 1
        else:
            hi = store - 1
    bs[0] = bs[m]
    bl[0] = bl[m]
    return m


@njit(inline="always")
def buffer_offer(bs, bl, n, s, lab):
    """Keep (s, lab) in a buffer of n entries if it ranks above the threshold; returns the new count."""
    if worse(bs[0], bl[0], s, lab):
        if n == bs.shape[0] - 1:
            n = buffer_cut(bs, bl, n)
            if not worse(bs[0], bl[0], s, lab):
                return n
        n += 1
        bs[n] = s
        bl[n] = lab
    return n
