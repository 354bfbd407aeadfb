"""Slow, obviously correct reference engine (plain NumPy): the oracle the fast kernels are tested against."""
import numpy as np

from ..rows import as_float32_rows


def _top_k_rows(scores: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k of (scores, labels) in ranking order (score desc, label asc), padded with (-inf, -1)."""
    order = np.lexsort((labels, -scores))[:k]
    out_s = np.full(k, -np.inf, np.float32)
    out_l = np.full(k, -1, np.int64)
    out_s[: order.size] = scores[order]
    out_l[: order.size] = labels[order]
    return out_s, out_l


def exact_topk(W, b, H, k, square=False, labels=None):
    """(N, d) queries -> exact top-k scores (N, k) float32 and labels (N, k) int64 (of the squared logits
    when square); labels: (D,) the class of each row, None for row r = class r."""
    logits = H @ as_float32_rows(W).T + b
    if square:
        logits = logits * logits
    labels = np.arange(W.shape[0], dtype=np.int64) if labels is None else labels.astype(np.int64)
    rows = [_top_k_rows(row, labels, k) for row in logits]
    return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


def candidate_topk(W, b, H, k, buckets, probes, packed=None, square=False):
    """Top-k over the union of each query's probed buckets -> scores, labels, distinct classes scored (N,).
    With packed rows, bucket entry p is scored from packed.W[packed.row_of[p]] (and b alike)."""
    N = H.shape[0]
    out_s = np.empty((N, k), np.float32)
    out_l = np.empty((N, k), np.int64)
    n_scored = np.empty(N, np.int64)
    for i in range(N):
        pos = [np.arange(buckets.indptr[q], buckets.indptr[q + 1]) for q in probes[i] if q >= 0]
        pos = np.concatenate(pos) if pos else np.zeros(0, np.int64)
        cand, first = np.unique(buckets.indices[pos].astype(np.int64), return_index=True)
        if packed is None:
            scores = (as_float32_rows(W[cand]) @ H[i] + b[cand]).astype(np.float32)
        else:
            rows = packed.row_of[pos[first]]
            scores = (as_float32_rows(packed.W[rows]) @ H[i] + packed.b[rows]).astype(np.float32)
        out_s[i], out_l[i] = _top_k_rows(scores * scores if square else scores, cand, k)
        n_scored[i] = cand.size
    return out_s, out_l, n_scored
