"""Accuracy measures, defined once for tests, benchmarks and the demo.

P@k       = |approx top-k ∩ exact top-k| / k, averaged over queries (L2S / FGD); P@1 is agreement with
            the exact argmax. Tie-aware when scores are given: an approximate label whose exact logit
            equals the exact k-th score (within atol) counts as correct.
R_true@k  = fraction of queries whose true label is among the returned top-k (LSS).
"""
from __future__ import annotations

import numpy as np


def p_at_k(labels, exact_labels, k: int | None = None, *, scores=None, exact_scores=None,
           atol: float = 1e-4) -> float:
    """labels, exact_labels: (N, >= k) int, best first. scores / exact_scores: the matching (N, >= k)
    exact logits, both or neither (with them, ties at the k-th place count as hits)."""
    labels = np.asarray(labels)
    exact_labels = np.asarray(exact_labels)
    k = labels.shape[1] if k is None else k
    if labels.shape[0] != exact_labels.shape[0] or min(labels.shape[1], exact_labels.shape[1]) < k:
        raise ValueError(f"labels / exact_labels: need (N, >= {k}) each, got {labels.shape}, {exact_labels.shape}")
    a, e = labels[:, :k], exact_labels[:, :k]
    hit = (a[:, :, None] == e[:, None, :]).any(axis=2) & (a >= 0)
    if (scores is None) != (exact_scores is None):
        raise ValueError("scores / exact_scores: give both or neither")
    if scores is not None:
        kth = np.asarray(exact_scores)[:, k - 1:k]
        hit |= (np.asarray(scores)[:, :k] >= kth - atol) & (a >= 0)
    return float(hit.sum(axis=1).mean() / k)


def true_recall_at_k(labels, y_true, k: int | None = None) -> float:
    """labels (N, >= k) int, best first; y_true (N,) int -> fraction with y_true in the first k."""
    labels = np.asarray(labels)
    y_true = np.asarray(y_true)
    k = labels.shape[1] if k is None else k
    if labels.shape[0] != y_true.shape[0] or labels.shape[1] < k:
        raise ValueError(f"labels / y_true: need (N, >= {k}) and (N,), got {labels.shape}, {y_true.shape}")
    return float((labels[:, :k] == y_true[:, None]).any(axis=1).mean())


def mean_candidates(n_scored) -> float:
    """Mean classes scored per query (from Index.search(..., return_n_scored=True))."""
    return float(np.mean(n_scored))
