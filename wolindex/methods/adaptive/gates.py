"""Adaptive's gates: per tail cluster, a linear estimate of the cluster's log-mass (or best log-score) under
the exact model, fitted by ridge least squares on sample queries."""
from __future__ import annotations

import numpy as np

from ..._numeric import with_one_column

QUERY_BLOCK = 512          # training queries per product while fitting
SCORE_CELLS = 1 << 22      # (query, class) scores held at once: up to this many, or up to D d / W_SHARE
W_SHARE = 8                # when that is more (each product over W then serves >= d / W_SHARE queries)
PRODUCT_CELLS = 1 << 20    # (class, query) scores per product while scoring a block of queries


def log_scores(outputs, square: bool, epsilon: float, xp=np):
    """Outputs o -> the log of each class's unnormalised probability: o itself (softmax) or log(o^2 + epsilon)
    (square: spherical layers; epsilon floored at 1e-30 so a zero output stays finite). xp: o's array module."""
    if not square:
        return outputs
    return xp.log(outputs * outputs + max(epsilon, 1e-30))


def query_block(layer) -> int:
    """Queries per block of log_scores_by_rank: QUERY_BLOCK, fewer when the layer is large. A block's scores
    hold at most max(SCORE_CELLS, D d / W_SHARE) cells, so each product reading all of W serves
    min(QUERY_BLOCK, d / W_SHARE) queries or more (a GEMM, not a pass over W per handful of queries), in
    memory bounded by W's."""
    cells = max(SCORE_CELLS, layer.n_classes * layer.dim // W_SHARE)
    return max(1, min(QUERY_BLOCK, cells // layer.n_classes))


def log_scores_by_rank(layer, classes, H, verbose, desc):
    """Yield (D', n) float32 log-scores, class-major: the classes (D',) in the given (frequency) order against
    a block of H's queries (query_block(layer) each), every block in the same array (a consumer may
    overwrite it, and must copy what it keeps). The layer's rows are read where they are, never copied:
    PRODUCT_CELLS scores are computed at a time and written by whole rows of n to their classes' places (a
    column gather of an (n, D) block is several times slower)."""
    from tqdm.auto import tqdm

    place = np.full(layer.W.shape[0], -1, np.int64)
    place[layer.rows_of(classes)] = np.arange(classes.shape[0])
    step = query_block(layer)
    scores = np.empty((classes.shape[0], min(step, H.shape[0])), np.float32)
    rows = max(1, PRODUCT_CELLS // scores.shape[1])
    for lo in tqdm(range(0, H.shape[0], step), desc=desc, disable=not verbose, unit="block"):
        Ht = H[lo:lo + step].T
        out = scores[:, :Ht.shape[1]]
        for a in range(0, place.size, rows):
            wanted = place[a:a + rows]
            part = layer.W[a:a + rows] @ Ht
            part += layer.b[a:a + rows, None]
            keep = wanted >= 0
            if keep.all():
                out[wanted] = part
            else:
                out[wanted[keep]] = part[keep]
        yield log_scores(out, layer.square, layer.epsilon)


def _cluster_targets(logits: np.ndarray, starts: np.ndarray, target: str) -> np.ndarray:
    """(T, n) class-major tail logits (overwritten) -> (n, J) each cluster's best logit ('max') or
    log-sum-exp ('mass'), cluster j being rows starts[j]:starts[j + 1]."""
    out = np.empty((logits.shape[1], starts.size), logits.dtype)
    for j, (a, z) in enumerate(zip(starts, np.r_[starts[1:], logits.shape[0]])):
        part = logits[a:z]
        best = part.max(axis=0)
        if target == "max":
            out[:, j] = best
        else:
            np.subtract(part, best, out=part)
            out[:, j] = best + np.log(np.exp(part, out=part).sum(axis=0))
    return out


def fit_gates(layer, tail, starts, H, target, ridge, verbose):
    """Least-squares gates [h, 1] -> cluster target. tail (T,) the tail's class ids in frequency order,
    starts (J,) cluster starts within the tail, H (N, d) -> V (J, d) float32, c (J,) float32, and the
    training RMSE per cluster (J,)."""
    d = H.shape[1]
    xtx = np.zeros((d + 1, d + 1))
    xty = np.zeros((d + 1, starts.size))
    yty = np.zeros(starts.size)
    step = query_block(layer)
    for lo, logits in zip(range(0, H.shape[0], step),
                          log_scores_by_rank(layer, tail, H, verbose, "adaptive: gate targets")):
        X = with_one_column(H[lo:lo + step], dtype=np.float64)
        Y = _cluster_targets(logits, starts, target).astype(np.float64)
        xtx += X.T @ X
        xty += X.T @ Y
        yty += (Y * Y).sum(axis=0)
    reg = ridge * np.trace(xtx[:d, :d]) / d * np.eye(d + 1)
    reg[d, d] = 0.0
    G = np.linalg.solve(xtx + reg, xty)
    mse = (yty - 2 * (G * xty).sum(axis=0) + (G * (xtx @ G)).sum(axis=0)) / H.shape[0]
    return (np.ascontiguousarray(G[:d].T, dtype=np.float32), G[d].astype(np.float32),
            np.sqrt(np.maximum(mse, 0.0)))
