"""Fixed-size top-k heaps for Numba kernels.

A heap is a pair of 1-D arrays (scores float32, labels int64) of length k, kept as a min-heap on the
ranking order (score descending, then label ascending), so its root is the worst entry kept. Empty slots
hold (-inf, EMPTY), worse than any real entry."""
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


@njit(inline="always")
def offer(hs, hl, s, lab):
    """Keep (s, lab) if it beats the worst entry."""
    if worse(hs[0], hl[0], s, lab):
        sift_down(hs, hl, 0, hs.shape[0], s, lab)


@njit(inline="always")
def offer_unique(hs, hl, s, lab):
    """offer, skipping a label the heap already holds (for merging overlapping candidate sets)."""
    if worse(hs[0], hl[0], s, lab):
        for t in range(hl.shape[0]):
            if hl[t] == lab:
                return
        sift_down(hs, hl, 0, hs.shape[0], s, lab)


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
