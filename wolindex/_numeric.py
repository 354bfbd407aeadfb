"""Small numeric helpers shared across the package (no imports beyond NumPy)."""
from __future__ import annotations

from typing import Mapping

import numpy as np


def with_bias_column(W: np.ndarray, b: np.ndarray, width: int | None = None, dtype=np.float32) -> np.ndarray:
    """[W, b] (D, d + 1) in dtype, a fresh array zero-padded on the right to `width` columns when given."""
    out = np.zeros((W.shape[0], width or W.shape[1] + 1), dtype)
    out[:, :W.shape[1]] = W
    out[:, W.shape[1]] = b
    return out


def with_one_column(H: np.ndarray, width: int | None = None, dtype=np.float32) -> np.ndarray:
    """[H, 1] (N, d + 1) in dtype, a fresh array zero-padded on the right to `width` columns when given."""
    out = np.zeros((H.shape[0], width or H.shape[1] + 1), dtype)
    out[:, :H.shape[1]] = H
    out[:, H.shape[1]] = 1.0
    return out


class Adam:
    """Adam (Kingma & Ba 2015) over named arrays, updated in place: the moments are kept in each parameter's
    dtype (float32 here), so a step costs no copies. params: the arrays it will update (their shapes and
    dtypes start the moments at zero)."""

    def __init__(self, params: Mapping[str, np.ndarray], lr: float, b1: float = 0.9, b2: float = 0.999,
                 eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps, self.t = lr, b1, b2, eps, 0
        self.m = {name: np.zeros_like(p) for name, p in params.items()}
        self.v = {name: np.zeros_like(p) for name, p in params.items()}

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """One update of params[name] (in place) by grads[name], for every name in grads."""
        self.t += 1
        b1, b2 = self.b1, self.b2
        for name, g in grads.items():
            m, v = self.m[name], self.v[name]
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            params[name] -= self.lr * (m / (1 - b1 ** self.t)) / (np.sqrt(v / (1 - b2 ** self.t)) + self.eps)


def whitening(H: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """T (d + 1, d + 1) float32: the symmetric square root C^(1/2) of the queries' second moment
    C = E[[h, 1][h, 1]^T] over the rows of H (N, d), its eigenvalues raised to at least floor times the largest
    so that T is invertible. Rows x = [w, b] indexed as x @ T and queries q = [h, 1] searched as
    q @ inverse_transpose(T) keep every inner product: (q T^-T) . (x T) = q . x for any invertible T."""
    Q = with_one_column(H, dtype=np.float64)
    lam, V = np.linalg.eigh(Q.T @ Q / Q.shape[0])
    lam = np.maximum(lam, floor * lam.max())
    return ((V * np.sqrt(lam)) @ V.T).astype(np.float32)


def inverse_transpose(T: np.ndarray) -> np.ndarray:
    """inv(T).T (n, n) float32 of a square T, computed in float64: the query side of a row transform T.
    ValueError when T is singular or its inverse is not finite in float32."""
    try:
        out = np.linalg.inv(T.astype(np.float64)).T.astype(np.float32)
    except np.linalg.LinAlgError:
        out = None
    if out is None or not np.isfinite(out).all():
        raise ValueError(f"whiten: the {T.shape[0]} x {T.shape[0]} transform is singular")
    return out


def transform_columns(X: np.ndarray, T: np.ndarray, step: int = 16384) -> np.ndarray:
    """X (n, width) float32 with its first T.shape[0] columns replaced, in place, by their product with T
    (computed in float64, in blocks of `step` rows); returns X."""
    n = T.shape[0]
    T64 = T.astype(np.float64)
    for lo in range(0, X.shape[0], step):
        X[lo:lo + step, :n] = X[lo:lo + step, :n].astype(np.float64) @ T64
    return X
