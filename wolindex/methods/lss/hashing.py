"""LSS's learned hashes: the query-side router of the L tables (search, on either engine) and the pieces of
training (one table's hash, the k-means start, the reassignment of labels to buckets)."""
from __future__ import annotations

import numpy as np

from ..._numeric import Adam


class HashTables:
    """The L tables' query hashes as a router: table t scores bucket j of its B buckets as H @ V[t * B + j] +
    c[t * B + j]; V (L * B, d) and c (L * B,) float32, on the host or a device (see methods.ops)."""

    def __init__(self, V, c, n_tables: int, n_buckets: int):
        self.V, self.c, self.n_tables, self.n_buckets = V, c, n_tables, n_buckets

    def to(self, move) -> "HashTables":
        return HashTables(move(self.V), move(self.c), self.n_tables, self.n_buckets)

    def probes(self, ops, H, n_probe: int):
        """(N, L * n_probe) int32 bucket ids: table t's top-n_probe buckets (best first) offset by t * B."""
        return ops.top_rows(self.V, self.c, H, n_probe, groups=self.n_tables)


def _softmax_ce_grad(scores: np.ndarray, target: np.ndarray):
    """Mean cross-entropy of rows of scores (n, B) against target buckets (n,), and d loss / d scores."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    rows = np.arange(target.shape[0])
    loss = -np.log(probs[rows, target] + 1e-30).mean()
    probs[rows, target] -= 1.0
    return loss, probs / target.shape[0]


class HashTable:
    """One table's learned query hash while it trains: bucket scores H @ V.T + c, V (B, d), c (B,) float32."""

    def __init__(self, V: np.ndarray, c: np.ndarray):
        self.V, self.c = V, c

    def landing(self, H: np.ndarray, cells: int = 1 << 22) -> np.ndarray:
        """(N,) int64: each query's best bucket (at most `cells` query-bucket scores at a time)."""
        block = max(1, cells // self.V.shape[0])
        return np.concatenate([np.argmax(H[i:i + block] @ self.V.T + self.c, axis=1)
                               for i in range(0, H.shape[0], block)])

    def train(self, H, target_bucket_of_query, epochs, batch_size, lr, rng, progress):
        """Adam on the mean cross-entropy of the hash toward each query's target bucket (float32)."""
        params = {"V": self.V.copy(), "c": self.c.copy()}
        opt = Adam(params, lr)
        n_steps = max(1, int(round(epochs * H.shape[0] / batch_size)))
        order = np.concatenate([rng.permutation(H.shape[0]) for _ in range(int(np.ceil(epochs)) + 1)])
        for step in range(n_steps):
            rows = order[step * batch_size:(step + 1) * batch_size]
            X = np.asarray(H[rows], np.float32)
            loss, g = _softmax_ce_grad(X @ params["V"].T + params["c"], target_bucket_of_query[rows])
            opt.step(params, {"V": g.T @ X, "c": g.sum(axis=0)})
            progress(loss)
        if not all(np.isfinite(p).all() for p in params.values()):
            raise ValueError("lr: the hash training diverged (non-finite weights); try a smaller lr")
        self.V, self.c = params["V"], params["c"]


KMEANS_SAMPLES = 5_000_000   # rows k-means passes over at most (and at most 50 epochs; 19 of 2^18 rows)
KMEANS_FIT_ROWS = 1 << 18    # k-means is fitted on at most this many rows (a seeded sample), then every row is
                             # assigned to its nearest centroid a block at a time: memory stays bounded
KMEANS_FIT_SHARE = 2         # and on at most 1 / this of W's rows when that leaves 8 or more per bucket: the
                             # normalised copy it fits stays within half of W's bytes
ASSIGN_ROWS = 1 << 16        # rows assigned to their nearest centroid at a time, at most ASSIGN_CELLS / B of them
ASSIGN_CELLS = 1 << 22       # (row, centroid) scores held at once


def _unit_rows(W: np.ndarray) -> np.ndarray:
    return W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)


def kmeans_buckets(W: np.ndarray, n_buckets: int, seed: int):
    """Label -> bucket (D,) int64 from k-means of W's rows (normalised), and the centroids (B, d) float32."""
    from sklearn.cluster import MiniBatchKMeans

    D = W.shape[0]
    n_fit = min(D, KMEANS_FIT_ROWS)
    if D // KMEANS_FIT_SHARE >= 8 * n_buckets:
        n_fit = min(n_fit, D // KMEANS_FIT_SHARE)
    sample = np.sort(np.random.default_rng(seed).choice(D, n_fit, replace=False)) if n_fit < D else None
    if sample is None:
        X = _unit_rows(W)
    else:
        X = np.asarray(W[sample], np.float32)
        rows = max(1, ASSIGN_CELLS // X.shape[1])
        for lo in range(0, n_fit, rows):                 # normalised in place, ASSIGN_CELLS values at a time
            X[lo:lo + rows] = _unit_rows(X[lo:lo + rows])
    epochs = int(np.clip(KMEANS_SAMPLES // X.shape[0], 1, 50))
    km = MiniBatchKMeans(n_buckets, random_state=seed, batch_size=4096, n_init=1, max_iter=epochs).fit(X)
    centroids = km.cluster_centers_.astype(np.float32)
    if sample is None:
        return km.labels_.astype(np.int64), centroids
    half_sq = 0.5 * (centroids * centroids).sum(axis=1)
    step = max(1, min(ASSIGN_ROWS, ASSIGN_CELLS // n_buckets))
    labels = np.concatenate([np.argmax(_unit_rows(W[lo:lo + step]) @ centroids.T - half_sq, axis=1)
                             for lo in range(0, D, step)])
    return labels.astype(np.int64), centroids


def reassign(n_buckets: int, landing: np.ndarray, y: np.ndarray, n_classes: int, max_copies: int,
             cap: int, fallback: np.ndarray) -> list[np.ndarray]:
    """Labels per bucket: each label goes to the (at most max_copies) buckets where most of its queries land
    (landing (N,): buckets of the queries with labels y (N,)), a bucket taking at most `cap` labels (0: no
    cap), those with the most queries landing there first; labels left without a bucket keep `fallback`
    (D,)."""
    pair = y.astype(np.int64) * n_buckets + landing
    uniq, counts = np.unique(pair, return_counts=True)
    label, bucket = uniq // n_buckets, uniq % n_buckets
    order = np.lexsort((-counts, label))
    label, bucket, counts = label[order], bucket[order], counts[order]
    keep = np.arange(label.size) - np.searchsorted(label, label) < max_copies
    label, bucket, counts = label[keep], bucket[keep], counts[keep]
    if cap:
        order = np.lexsort((label, -counts, bucket))
        label, bucket = label[order], bucket[order]
        keep = np.arange(bucket.size) - np.searchsorted(bucket, bucket) < cap
    else:
        keep = np.ones(label.size, bool)
    seen = np.zeros(n_classes, bool)
    seen[label[keep]] = True
    all_labels = np.r_[label[keep], np.flatnonzero(~seen)]
    all_buckets = np.r_[bucket[keep], fallback[~seen]]
    order = np.lexsort((all_labels, all_buckets))
    bounds = np.searchsorted(all_buckets[order], np.arange(n_buckets + 1))
    grouped = all_labels[order]
    return [grouped[a:z] for a, z in zip(bounds[:-1], bounds[1:])]


def target_buckets(bucket_lists, y, rng) -> np.ndarray:
    """Per query, a bucket holding its label (one of them, at random, when the label has several)."""
    owner = np.repeat(np.arange(len(bucket_lists)), [len(x) for x in bucket_lists])
    members = np.concatenate(bucket_lists)
    order = np.argsort(members, kind="stable")
    members, owner = members[order], owner[order]
    start = np.searchsorted(members, y)
    count = np.searchsorted(members, y, side="right") - start
    return owner[start + (rng.random(y.shape[0]) * count).astype(np.int64)]


def label_recall(table, bucket_lists, H, y) -> float:
    """Fraction of queries whose label is in their top-1 bucket."""
    landing = table.landing(H)
    owner = np.repeat(np.arange(len(bucket_lists)), [len(x) for x in bucket_lists])
    member = np.concatenate(bucket_lists).astype(np.int64) * len(bucket_lists) + owner
    return float(np.isin(y.astype(np.int64) * len(bucket_lists) + landing, member).mean())
