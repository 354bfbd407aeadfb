"""method='lss': Label Superior Sampling (Liu et al. 2020, "Climbing the WOL"): L hash tables of B buckets whose
query hash functions are learned so that a query lands in the bucket holding its true label.

Build, per table: labels start in the bucket of a k-means clustering of W's rows (seeded per table); the
query hash (a linear map h -> B bucket scores, started from the centroids) is trained with cross-entropy
toward the bucket of the query's label; then each label moves to the buckets its training queries land in
(at most `max_copies` of them, most visited first; labels no query visits stay put); train and reassign
alternate for `rounds` rounds. Search: the top-n_probe buckets of every table, the union of their labels
scored exactly by the candidate engine (a label in several probed buckets scored once)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..engine import Buckets, candidate_topk, exact_topk
from ..params import BuildParams, CandidateSearchParams, check_int, check_number
from ..teacher import teacher_topk
from .base import BucketMethod, check_state_int
from .registry import register


@dataclass(frozen=True)
class LSSBuild(BuildParams):
    """n_tables: L; n_buckets: B per table (at most D: a layer of fewer classes gets D buckets per table);
    rounds: train-then-reassign rounds; epochs: passes over the training queries per round; batch_size; lr
    (Adam); max_copies: buckets a label may live in per table; bucket_cap: at reassignment a bucket takes at
    most bucket_cap * D / B labels (those with most queries landing there; the others keep their clustering
    bucket), so popular buckets do not swallow the vocabulary; 0 for no cap; seed: table t's k-means uses
    seed + t, which must stay below 2^32 (k-means' limit)."""

    n_tables: int = 2
    n_buckets: int = 1024
    rounds: int = 3
    epochs: float = 1.0
    batch_size: int = 1024
    lr: float = 3e-3
    max_copies: int = 2
    bucket_cap: float = 2.0
    seed: int = 0

    def validate(self) -> None:
        check_int("n_tables", self.n_tables, 1)
        check_int("n_buckets", self.n_buckets, 2)
        check_int("rounds", self.rounds, 0)
        check_int("batch_size", self.batch_size, 1)
        check_int("max_copies", self.max_copies, 1)
        check_int("seed", self.seed, 0, 2**32 - self.n_tables)
        check_number("bucket_cap", self.bucket_cap, allow_zero=True)
        check_number("epochs", self.epochs)
        check_number("lr", self.lr)


@dataclass(frozen=True)
class LSSSearch(CandidateSearchParams):
    """n_probe: buckets opened per table (the top-n_probe of its learned hash)."""

    n_probe: int = 1

    def validate(self) -> None:
        super().validate()
        check_int("n_probe", self.n_probe, 1)


def _softmax_ce_grad(scores: np.ndarray, target: np.ndarray):
    """Mean cross-entropy of rows of scores (n, B) against target buckets (n,), and d loss / d scores."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(axis=1, keepdims=True)
    rows = np.arange(target.shape[0])
    loss = -np.log(probs[rows, target] + 1e-30).mean()
    probs[rows, target] -= 1.0
    return loss, probs / target.shape[0]


class _Adam:
    def __init__(self, shapes, lr):
        self.lr, self.t = lr, 0
        self.m = [np.zeros(s, np.float32) for s in shapes]
        self.v = [np.zeros(s, np.float32) for s in shapes]

    def step(self, params, grads):
        self.t += 1
        for p, g, m, v in zip(params, grads, self.m, self.v):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= self.lr * (m / (1 - 0.9 ** self.t)) / (np.sqrt(v / (1 - 0.999 ** self.t)) + 1e-8)


class HashTable:
    """One table's learned query hash: bucket scores H @ V.T + c, V (B, d), c (B,) float32."""

    def __init__(self, V: np.ndarray, c: np.ndarray):
        self.V, self.c = V, c

    def landing(self, H: np.ndarray, block: int = 65536) -> np.ndarray:
        """(N,) int64: each query's best bucket (computed `block` queries at a time)."""
        return np.concatenate([np.argmax(H[i:i + block] @ self.V.T + self.c, axis=1)
                               for i in range(0, H.shape[0], block)])

    def train(self, H, target_bucket_of_query, epochs, batch_size, lr, rng, progress):
        """Adam on the mean cross-entropy of the hash toward each query's target bucket (float32)."""
        V, c = self.V.copy(), self.c.copy()
        opt = _Adam([V.shape, c.shape], lr)
        n_steps = max(1, int(round(epochs * H.shape[0] / batch_size)))
        order = np.concatenate([rng.permutation(H.shape[0]) for _ in range(int(np.ceil(epochs)) + 1)])
        for step in range(n_steps):
            rows = order[step * batch_size:(step + 1) * batch_size]
            X = np.asarray(H[rows], np.float32)
            loss, g = _softmax_ce_grad(X @ V.T + c, target_bucket_of_query[rows])
            opt.step([V, c], [g.T @ X, g.sum(axis=0)])
            progress(loss)
        if not (np.isfinite(V).all() and np.isfinite(c).all()):
            raise ValueError("lr: the hash training diverged (non-finite weights); try a smaller lr")
        self.V, self.c = V, c


KMEANS_SAMPLES = 5_000_000   # rows k-means passes over at most (50 epochs of 10^5 rows, 5 of 10^6)


def kmeans_buckets(W: np.ndarray, n_buckets: int, seed: int):
    """Label -> bucket (D,) int64 from k-means of W's rows (normalised), and the centroids (B, d) float32."""
    from sklearn.cluster import MiniBatchKMeans

    X = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    epochs = int(np.clip(KMEANS_SAMPLES // X.shape[0], 1, 50))
    km = MiniBatchKMeans(n_buckets, random_state=seed, batch_size=4096, n_init=1, max_iter=epochs).fit(X)
    return km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32)


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
    return [all_labels[order][a:z] for a, z in zip(bounds[:-1], bounds[1:])]


@register
class LSS(BucketMethod):
    name = "lss"
    Build = LSSBuild
    Search = LSSSearch

    def __init__(self, layer, arrays=None, state=None):
        """From built (or loaded) arrays and state, checked: state n_tables L and n_buckets B, the L * B
        buckets (table t's are t * B .. t * B + B - 1) and their hash rows hash_V (L * B, d), hash_c (L * B,)
        float32."""
        super().__init__(layer, arrays, state)
        L, B = check_state_int(self.state, "n_tables", 1), check_state_int(self.state, "n_buckets", 1)
        if L * B != self.buckets.n_buckets:
            raise ValueError(f"state: n_tables x n_buckets = {L} x {B} does not match the "
                             f"{self.buckets.n_buckets} buckets of the arrays")
        self.check_arrays({"hash_V": (np.float32, (L * B, layer.dim)), "hash_c": (np.float32, (L * B,))})
        self.hash_V, self.hash_c = self.arrays["hash_V"], self.arrays["hash_c"]

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        if train is None:
            raise ValueError("train: method 'lss' learns its hash from sample hidden states; pass train=H (N, d)")
        y = labels
        if y is None:
            y = teacher_topk(layer, train, 1, verbose)[0][:, 0]
        B = min(params.n_buckets, layer.n_classes)
        cap = int(min(params.bucket_cap * layer.n_classes / B, layer.n_classes))  # labels; D or more: no limit
        if params.bucket_cap and not cap:
            raise ValueError(f"bucket_cap: {params.bucket_cap} x D / B is under one label; give 0 (no cap) "
                             f"or at least B / D = {B / layer.n_classes:.3g}")
        rng = np.random.default_rng(params.seed)
        tables, lists, history = [], [], []
        bar = tqdm(total=params.n_tables * (params.rounds + 1), desc="lss: tables x rounds", disable=not verbose)
        for t in range(params.n_tables):
            first, centroids = kmeans_buckets(layer.W, B, params.seed + t)
            table = HashTable(centroids, np.zeros(B, np.float32))
            bucket_lists = [np.flatnonzero(first == j) for j in range(B)]
            recall = [_label_recall(table, bucket_lists, train, y)]
            bar.update(1)
            losses = []
            for _ in range(params.rounds):
                target = _target_buckets(bucket_lists, y, rng)
                table.train(train, target, params.epochs, params.batch_size, params.lr, rng, losses.append)
                bucket_lists = reassign(B, table.landing(train), y, layer.n_classes, params.max_copies, cap, first)
                recall.append(_label_recall(table, bucket_lists, train, y))
                bar.update(1)
            history.append({"table": t, "train_label_in_top_bucket": recall,
                            "final_loss": float(np.mean(losses[-20:])) if losses else None})
            tables.append(table)
            lists.extend(bucket_lists)
        bar.close()
        buckets = Buckets.from_lists(lists)
        arrays = {"indptr": buckets.indptr, "indices": buckets.indices,
                  "hash_V": np.concatenate([tb.V for tb in tables]), "hash_c": np.concatenate([tb.c for tb in tables])}
        sizes = buckets.sizes()
        state = {"n_tables": params.n_tables, "n_buckets": B, "mean_bucket": float(sizes.mean()),
                 "max_bucket": int(sizes.max()), "labels_from": "labels" if labels is not None else "exact top-1",
                 "training": history}
        return cls(layer, arrays, state)

    def probes(self, H: np.ndarray, n_probe: int, engine: str = "numba") -> np.ndarray:
        """(N, L * n_probe) int32 bucket ids: table t's top-n_probe buckets (best first) offset by t * B. The
        top buckets of a table are an exact top-k search over its hash rows, done by the query engine (no
        BLAS call, whose threads would contend with the engine's at small batches)."""
        L, B = self.state["n_tables"], self.state["n_buckets"]
        return np.concatenate([exact_topk(self.hash_V[t * B:(t + 1) * B], self.hash_c[t * B:(t + 1) * B], H, n_probe,
                                          engine)[1] + t * B for t in range(L)], axis=1).astype(np.int32)

    def check_search(self, params) -> None:
        if params.n_probe > self.state["n_buckets"]:
            raise ValueError(f"n_probe: at most {self.state['n_buckets']} (buckets per table), got {params.n_probe}")

    def search(self, layer, H, k, params):
        self.check_search(params)
        return candidate_topk(layer.W, layer.b, H, k, self.buckets, self.probes(H, params.n_probe, params.engine),
                              engine=params.engine, path=params.path, packed=self.packed)

    def tuning_grid(self, k):
        B = self.state["n_buckets"]
        return [{"n_probe": p} for p in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if p <= B]


def _target_buckets(bucket_lists, y, rng) -> np.ndarray:
    """Per query, a bucket holding its label (one of them, at random, when the label has several)."""
    owner = np.repeat(np.arange(len(bucket_lists)), [len(x) for x in bucket_lists])
    members = np.concatenate(bucket_lists)
    order = np.argsort(members, kind="stable")
    members, owner = members[order], owner[order]
    start = np.searchsorted(members, y)
    count = np.searchsorted(members, y, side="right") - start
    return owner[start + (rng.random(y.shape[0]) * count).astype(np.int64)]


def _label_recall(table, bucket_lists, H, y) -> float:
    """Fraction of queries whose label is in their top-1 bucket."""
    landing = table.landing(H)
    owner = np.repeat(np.arange(len(bucket_lists)), [len(x) for x in bucket_lists])
    member = np.concatenate(bucket_lists).astype(np.int64) * len(bucket_lists) + owner
    return float(np.isin(y.astype(np.int64) * len(bucket_lists) + landing, member).mean())
