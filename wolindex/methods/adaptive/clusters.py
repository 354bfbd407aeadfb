"""Adaptive softmax's frequency clusters (Grave et al. 2016): classes sorted by frequency, a head of the
most frequent ones and tail clusters of geometrically growing size, with cutoffs checked or chosen to
minimise the expected query cost.

The paper's cost model weighs each tail cluster by the probability that the target word falls in it. An
inference index must open a cluster whenever one of its classes beats the head's k-th best logit, which
happens far more often than the target lies there (with a 128-class head the frequency model would open
a few hundred rows per query, the real need is thousands), so the probabilities are measured on sample
queries under the exact model instead."""
from __future__ import annotations

import numpy as np

HEAD_MIN = 64
FIRST_FACTORS = (0.125, 0.25, 0.5, 1.0, 2.0)
GROWTH_RATIOS = (1.0, 1.25, 1.5, 2.0, 4.0)
HIT_CELLS = 1 << 20        # (query, class) logits whose hits choose_cutoffs gathers at once (hits are int64 pairs)


def frequency_order(counts: np.ndarray) -> np.ndarray:
    """counts (D,) int -> class ids (D,) int64, most frequent first (ties: smaller id first)."""
    return np.lexsort((np.arange(counts.shape[0]), -counts.astype(np.int64))).astype(np.int64)


def check_cutoffs(cutoffs, n_classes: int) -> np.ndarray:
    """User cutoffs -> (J + 1,) int64: the ends of the head and of each tail cluster but the last, in
    frequency rank (PyTorch's AdaptiveLogSoftmaxWithLoss convention: head = ranks [0, cutoffs[0]),
    cluster i = [cutoffs[i], cutoffs[i + 1]), the last one ending at D)."""
    values = np.asarray(cutoffs)
    if values.ndim != 1 or values.size == 0 or values.dtype.kind not in "iu":
        raise ValueError(f"cutoffs: expected a non-empty sequence of ints, got {cutoffs!r}")
    if np.any(np.diff(values) <= 0) or values[0] < 1 or values[-1] > n_classes - 1:
        raise ValueError("cutoffs: expected unique positive ints in increasing order, each between 1 and "
                         f"n_classes - 1 = {n_classes - 1}, got {list(values)}")
    return values.astype(np.int64)


def geometric_cutoffs(n_classes: int, head: int, first: int, ratio: float) -> np.ndarray:
    """Head of `head` classes, then clusters of first, first * ratio, ... classes; a last cluster smaller
    than half its predecessor joins it."""
    ends = [head]
    size = float(first)
    while ends[-1] < n_classes:
        ends.append(min(n_classes, ends[-1] + max(1, int(round(size)))))
        size *= ratio
    if len(ends) > 2 and ends[-1] - ends[-2] < (ends[-2] - ends[-3]) / 2:
        del ends[-2]
    return np.array(ends[:-1], np.int64)


def ideal_opening_cost(cutoffs: np.ndarray, opened: int, n_queries: int) -> float:
    """Expected rows scored per query with ideal gates: the head, one gate per tail cluster, and every
    tail cluster that holds a class beating the head's k-th best (opened: their rows summed over the
    n_queries sample queries, see opened_rows)."""
    return float(cutoffs[0] + cutoffs.size + opened / n_queries)


def opened_rows(cutoffs: np.ndarray, hit_query: np.ndarray, hit_rank: np.ndarray, n_classes: int) -> int:
    """Rows of the tail clusters that must be opened, summed over queries: hit_query / hit_rank (n_hits,)
    are the sample queries' tail classes (by frequency rank) that beat the k-th best of the head
    (cutoffs[0])."""
    bounds = np.r_[cutoffs, n_classes]
    cluster = np.searchsorted(bounds, hit_rank, side="right") - 1
    pairs = np.unique(hit_query.astype(np.int64) * bounds.size + cluster)
    return int(np.diff(bounds)[pairs % bounds.size].sum())


def tail_hits(logits_by_rank: np.ndarray, head: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """logits_by_rank (D, n) class-major, in frequency order -> (query, rank) of the tail classes whose logit
    reaches the k-th best logit of the head."""
    kth = -np.partition(-logits_by_rank[:head], min(k, head) - 1, axis=0)[min(k, head) - 1]
    tail_rank, query = np.nonzero(logits_by_rank[head:] >= kth)
    return query, tail_rank + head


def choose_cutoffs(logit_blocks, n_classes: int, k: int) -> tuple[np.ndarray, float]:
    """Geometric cutoffs of least expected cost (the paper's criterion, with the probability that a
    cluster must be opened measured on sample queries instead of taken from word frequencies) over a
    grid of head sizes (powers of two from HEAD_MIN), first tail cluster sizes (FIRST_FACTORS x head) and
    growth ratios (GROWTH_RATIOS). logit_blocks: an iterable of (D, n_i) class-major logits in frequency
    order. Returns the cutoffs and their expected rows scored per query."""
    heads = [h for h in (HEAD_MIN << i for i in range(40)) if h < n_classes] or [max(1, n_classes // 2)]
    candidates = {h: [geometric_cutoffs(n_classes, h, max(1, int(factor * h)), ratio)
                      for factor in FIRST_FACTORS for ratio in GROWTH_RATIOS] for h in heads}
    opened = {h: np.zeros(len(c), np.int64) for h, c in candidates.items()}
    n_queries = 0
    for block in logit_blocks:          # the hits of HIT_CELLS (query, class) pairs at a time: memory bounded
        step = max(1, HIT_CELLS // block.shape[0])
        for lo in range(0, block.shape[1], step):
            for h in heads:
                q, r = tail_hits(block[:, lo:lo + step], h, k)
                opened[h] += [opened_rows(cutoffs, q, r, n_classes) for cutoffs in candidates[h]]
        n_queries += block.shape[1]
    best, best_cost = None, np.inf
    for h in heads:
        for cutoffs, rows in zip(candidates[h], opened[h]):
            cost = ideal_opening_cost(cutoffs, rows, n_queries)
            if cost < best_cost:
                best, best_cost = cutoffs, cost
    return best, best_cost
