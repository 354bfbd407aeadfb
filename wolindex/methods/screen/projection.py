"""The query-aware projection of the screen: the r directions that carry most of the logits' variance under
the query distribution.

With C_h = E[h h^T] (the training queries' second moment, a small ridge added) and C_w the covariance of
W's rows, the logit deviation h . (w_c - mean) equals (S^-1 h) . (S (w_c - mean)) for S = C_h^1/2, and the
whitened queries S^-1 h have identity second moment. The best rank-r approximation of the whitened rows
S (w_c - mean), in the mean squared logit error over queries, keeps the top-r eigenvectors U of
S C_w S. Rows are coded along U^T S, queries along U^T S^-1. Without training queries C_h = I: the plain
principal components of W's rows."""
from __future__ import annotations

import numpy as np

ROW_BLOCK = 16384
RIDGE = 1e-6   # added to C_h, relative to its mean eigenvalue


def _second_moment(X: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """(d, d) float64 mean of x x^T over the rows of X (minus center), in row blocks."""
    d = X.shape[1]
    acc = np.zeros((d, d), np.float64)
    for lo in range(0, X.shape[0], ROW_BLOCK):
        part = X[lo:lo + ROW_BLOCK].astype(np.float64)
        if center is not None:
            part -= center
        acc += part.T @ part
    return acc / max(1, X.shape[0])


def fit_projection(W: np.ndarray, rank: int, train: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W (D, d) float32, rank r <= d, train (N, d) float32 or None -> (mean (d,), row projection (r, d),
    query projection (r, d)), float32."""
    mean = W.mean(axis=0, dtype=np.float64)
    C_w = _second_moment(W, mean)
    d = W.shape[1]
    if train is None:
        S = S_inv = np.eye(d)
    else:
        C_h = _second_moment(train)
        lam, V = np.linalg.eigh(C_h)
        lam = np.maximum(lam, 0.0) + RIDGE * max(float(np.trace(C_h)) / d, np.finfo(np.float64).tiny)
        S = (V * np.sqrt(lam)) @ V.T
        S_inv = (V / np.sqrt(lam)) @ V.T
    _, U = np.linalg.eigh(S @ C_w @ S)
    U = U[:, ::-1][:, :rank]
    return mean.astype(np.float32), (U.T @ S).astype(np.float32), (U.T @ S_inv).astype(np.float32)
