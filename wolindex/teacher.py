"""Distillation targets from the exact model: each training query's exact top-k and its softmax over them."""
from __future__ import annotations

import numpy as np

from .engine import exact_topk
from .engine.names import QUERY_BLOCK
from .layer import OutputLayer



def teacher_topk(layer: OutputLayer, H: np.ndarray, k: int, verbose: bool = True):
    """H (N, d) float32 -> labels (N, k) int64 and probs (N, k) float32: the exact top-k classes and the
    softmax of their logits renormalised over those k (rows sum to 1), computed QUERY_BLOCK queries at a time."""
    from tqdm.auto import tqdm

    labels = np.empty((H.shape[0], k), np.int64)
    probs = np.empty((H.shape[0], k), np.float32)
    for lo in tqdm(range(0, H.shape[0], QUERY_BLOCK), desc="teacher top-k", disable=not verbose, unit="block"):
        scores, labels[lo:lo + QUERY_BLOCK] = exact_topk(layer.W, layer.b, H[lo:lo + QUERY_BLOCK], k,
                                                         labels=layer.row_class)
        e = np.exp(scores - scores[:, :1])
        probs[lo:lo + QUERY_BLOCK] = e / e.sum(axis=1, keepdims=True)
    return labels, probs
