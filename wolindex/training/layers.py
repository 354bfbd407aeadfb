"""Output layers trained on sparse targets: the factored O(d^2) form of Vincent et al. (2015) and the
naive O(D d) reference. Both take the same minibatches and return the same loss and dL/dh.

Bias: W' = [W, b] (D, d + 1) against h' = [h, 1], so every formula below works on d' = d + 1 columns.
Targets: ids (B, K) int64 and weights y (B, K), ids distinct within a row, padding id 0 with weight 0."""
from __future__ import annotations

import numpy as np

from .._numeric import with_bias_column, with_one_column
from .losses import dense_loss, sparse_terms


class NaiveLayer:
    """W' stored densely; each step computes the D-dim outputs: O(D d) per example."""

    def __init__(self, W, b, loss: str, eps: float, dtype=np.float64):
        self.Wb = with_bias_column(W, b, dtype=dtype)
        self.loss, self.eps, self.dtype = loss, eps, dtype

    def weights(self):
        return self.Wb[:, :-1].copy(), self.Wb[:, -1].copy()

    def step(self, H, ids, y, lr):
        """One SGD step on the minibatch (all gradients at the current W). Returns loss (B,), dL/dh (B, d)."""
        Hb = with_one_column(H, dtype=self.dtype)
        outputs = Hb @ self.Wb.T
        dense_y = np.zeros_like(outputs)
        np.add.at(dense_y, (np.repeat(np.arange(ids.shape[0]), ids.shape[1]), ids.ravel()), y.ravel())
        value, grad_o = dense_loss(self.loss, outputs, dense_y, self.eps)
        grad_h = grad_o @ self.Wb
        self.Wb -= lr * (grad_o.T @ Hb)
        return value, grad_h[:, :-1]


class FactoredLayer:
    """W' = V U with U (d', d') and its inverse, and Q = W'^T W' kept up to date, so that a step costs
    O(B d^2 + B^2 d + B^3 + B K d) instead of O(B D d): only the rows of V at the targets change.

    U is folded back into V (O(D d^2)) when its condition number passes refactor_cond, checked every
    check_every steps; Q is then recomputed from scratch. Rounding errors grow with cond(U) times the
    dtype's epsilon, hence the defaults: 1e6 for float64, 1e3 for float32 (about 1e-4 relative error)."""

    DEFAULT_COND = {np.dtype(np.float64): 1e6, np.dtype(np.float32): 1e3}

    def __init__(self, W, b, loss: str, eps: float, dtype=np.float64, refactor_cond: float | None = None,
                 check_every: int = 100):
        self.V = with_bias_column(W, b, dtype=dtype)
        width = self.V.shape[1]
        self.U = np.eye(width, dtype=dtype)
        self.Uinv = np.eye(width, dtype=dtype)
        self.Q = self.V.T @ self.V
        self.loss, self.eps, self.dtype = loss, eps, dtype
        self.refactor_cond = refactor_cond or self.DEFAULT_COND[np.dtype(dtype)]
        self.check_every = check_every
        self.steps = 0
        self.refactors = 0

    def weights(self):
        """W (D, d) and b (D,): V U, O(D d^2)."""
        Wb = self.V @ self.U
        return Wb[:, :-1].copy(), Wb[:, -1].copy()

    def sq_norms(self, H) -> np.ndarray:
        """|W h + b|^2 (B,) for H (B, d) in O(d^2) each: h'^T Q h'."""
        Hb = with_one_column(H, dtype=self.dtype)
        return ((Hb @ self.Q) * Hb).sum(axis=1)

    def refactor(self) -> None:
        self.V = self.V @ self.U
        self.U = np.eye(self.U.shape[0], dtype=self.dtype)
        self.Uinv = self.U.copy()
        self.Q = self.V.T @ self.V
        self.refactors += 1

    def step(self, H, ids, y, lr):
        """One SGD step on the minibatch, exactly as NaiveLayer.step. Returns loss (B,), dL/dh (B, d)."""
        Hb = with_one_column(H, dtype=self.dtype)
        B = Hb.shape[0]
        UH = Hb @ self.U.T                                   # rows: U h'
        QH = Hb @ self.Q                                     # rows: Q h' (Q symmetric)
        u, where = np.unique(ids.ravel(), return_inverse=True)
        Vu = self.V[u]
        S = np.zeros((u.size, B), self.dtype)                # targets' weights, then the sparse gradient
        np.add.at(S, (where, np.repeat(np.arange(B), ids.shape[1])), y.ravel())
        O_u = Vu @ UH.T                                      # o at the batch's targets, every example
        o_t = O_u[where.reshape(ids.shape), np.arange(B)[:, None]]
        value, c, a = sparse_terms(self.loss, (QH * Hb).sum(axis=1), o_t, y.astype(self.dtype),
                                   self.V.shape[0], self.eps)
        S[:] = 0
        np.add.at(S, (where, np.repeat(np.arange(B), ids.shape[1])), a.ravel())
        WtA = self.U.T @ (Vu.T @ S)                          # W'^T a, (d', B)
        grad_h = c[:, None] * QH - WtA.T
        # W'_new = W' (I - H'^T diag(alpha) H') + S_lr H'  with alpha = lr c, S_lr = lr a
        alpha = lr * c
        S *= lr
        WtR = lr * WtA - QH.T * alpha                        # W'^T R, R = S_lr - O diag(alpha)
        StS = S.T @ S
        StO = S.T @ O_u
        RtR = StS - StO * alpha[None, :] - alpha[:, None] * StO.T + alpha[:, None] * (Hb @ QH.T) * alpha[None, :]
        self.Q += WtR @ Hb + Hb.T @ WtR.T + Hb.T @ RtR @ Hb
        self.U -= (UH.T * alpha) @ Hb                        # U (I - H'^T diag(alpha) H')
        core = np.eye(B, dtype=self.dtype) - alpha[:, None] * (Hb @ Hb.T)
        HUinv = Hb @ self.Uinv
        self.Uinv += Hb.T @ np.linalg.solve(core, alpha[:, None] * HUinv)   # Woodbury
        self.V[u] = Vu + S @ (Hb @ self.Uinv)
        self.steps += 1
        if self.steps % self.check_every == 0 and np.linalg.cond(self.U) > self.refactor_cond:
            self.refactor()
        return value, grad_h[:, :-1]
