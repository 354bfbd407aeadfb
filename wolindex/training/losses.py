"""The two losses of Vincent et al. (2015) in the form the factored update needs.

For output o = W'h' (bias folded in: W' = [W, b], h' = [h, 1]) and sparse targets (ids T, weights y), both
losses have a gradient with respect to o of the form  c * o - a,  with c a scalar and a supported on T:

- squared error  L = |o - y|^2:                          c = 2,      a = 2y
- spherical softmax  p_j = (o_j^2 + eps) / sum_i (o_i^2 + eps),  L = -sum_k y_k log p_{T_k}:
                                                         c = 2 Y / S, a_k = 2 y_k o_k / (o_k^2 + eps)
  with Y = sum_k y_k and S = |o|^2 + D eps.

Everything here takes |o|^2 (= h'^T Q h', O(d^2)) and o at the targets (O(K d)), never the D-dim o."""
from __future__ import annotations

import numpy as np

LOSSES = ("squared", "spherical")


def check_loss(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {LOSSES}, got {loss!r}")


def sparse_terms(loss: str, sq_norm: np.ndarray, o_t: np.ndarray, y: np.ndarray, n_classes: int, eps: float):
    """Per example: loss (B,), c (B,) and a (B, K), from sq_norm = |o|^2 (B,), o_t = o at the targets (B, K)
    and their weights y (B, K) (0 for padding; target ids distinct within a row)."""
    if loss == "squared":
        value = sq_norm - 2 * (y * o_t).sum(axis=1) + (y * y).sum(axis=1)
        return value, np.full_like(sq_norm, 2.0), 2 * y
    total = sq_norm + n_classes * eps
    weight = y.sum(axis=1)
    value = -(y * np.log(o_t * o_t + eps)).sum(axis=1) + weight * np.log(total)
    return value, 2 * weight / total, 2 * y * o_t / (o_t * o_t + eps)


def dense_loss(loss: str, o: np.ndarray, dense_y: np.ndarray, eps: float):
    """The same losses from the full outputs o (B, D) and dense targets (B, D): loss (B,), dL/do (B, D)."""
    if loss == "squared":
        diff = o - dense_y
        return (diff * diff).sum(axis=1), 2 * diff
    mass = o * o + eps
    total = mass.sum(axis=1, keepdims=True)
    weight = dense_y.sum(axis=1, keepdims=True)
    value = -(dense_y * np.log(mass)).sum(axis=1) + weight[:, 0] * np.log(total[:, 0])
    return value, 2 * weight / total * o - 2 * dense_y * o / mass
