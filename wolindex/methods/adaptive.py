"""method='adaptive': adaptive softmax's frequency clusters (Grave et al. 2016) as an inference index.

The head (most frequent classes) is always scored; each tail cluster has a linear gate fitted to its
log-mass under the exact model, and is opened only when that estimate (plus a margin) reaches the head's
k-th best logit. mode='certified' replaces the gates by provable bounds on every bounding block's best
logit (centre score + radius * |h| + largest bias), so its top-k equals exact search.

Spherical layers (classes ranked by o^2) work the same way in log space: a class's log-score is
log(o^2 + epsilon), a cluster's mass the sum of o^2 + epsilon, and the bounds cover both signs of o."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..engine import Buckets, candidate_topk
from ..engine.dispatch import merge_topk
from ..params import BuildParams, CandidateSearchParams, check_int, check_number
from ..teacher import teacher_topk
from .base import BucketMethod, check_array
from .frequency_clusters import check_cutoffs, choose_cutoffs, frequency_order
from .registry import register

GATE_TARGETS = ("mass", "max")
MODES = ("approximate", "certified")
QUERY_BLOCK = 512
SEARCH_BLOCK = 4096        # queries per search step (the engine's own block), so memory is bounded for any N
ROUTING_CELLS = 2**20      # at most this many (query, tail block) pairs per step: 8 MiB per float64 matrix
UNIT_ROUNDOFF = 2.0 ** -24
FLOAT32_MAX = float(np.finfo(np.float32).max)
BLOCK_BOUNDS = ("block_radius", "block_bias_max", "block_bias_min", "block_norm_max")


@dataclass(frozen=True)
class AdaptiveBuild(BuildParams):
    """cutoffs: ends of the head and of each tail cluster but the last, in frequency rank (None: chosen by
    expected cost on `cost_queries` training queries for top-`cost_k` search); gate_target: 'mass' fits each
    gate to the log of its cluster's (unnormalised) softmax mass, the paper's quantity and an upper bound
    on the cluster's best logit, 'max' (the default, faster at equal P@1 on debian-lm-100k) to the
    cluster's best logit itself; ridge: gate regularisation
    (relative to the mean squared input); bound_block: rows per bounding block of the certified mode
    (tail clusters larger than this are split by k-means); seed (below 2^32, k-means' limit)."""

    cutoffs: tuple[int, ...] | None = None
    cost_k: int = 10
    cost_queries: int = 2048
    gate_target: str = "max"
    ridge: float = 1e-3
    bound_block: int = 128
    seed: int = 0

    def validate(self) -> None:
        check_int("cost_k", self.cost_k, 1)
        check_int("cost_queries", self.cost_queries, 1)
        check_int("bound_block", self.bound_block, 1)
        check_int("seed", self.seed, 0, 2**32 - 1)
        if self.gate_target not in GATE_TARGETS:
            raise ValueError(f"gate_target: expected one of {GATE_TARGETS}, got {self.gate_target!r}")
        check_number("ridge", self.ridge, allow_zero=True)
        if self.cutoffs is not None:
            if not (isinstance(self.cutoffs, (list, tuple, range))
                    or isinstance(self.cutoffs, np.ndarray) and self.cutoffs.ndim == 1) or not all(
                    isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in self.cutoffs):
                raise TypeError(f"cutoffs: expected a sequence of ints, got {self.cutoffs!r}")
            object.__setattr__(self, "cutoffs", tuple(int(c) for c in self.cutoffs))

    def to_dict(self):
        out = super().to_dict()
        out["cutoffs"] = None if self.cutoffs is None else [int(c) for c in self.cutoffs]
        return out


@dataclass(frozen=True)
class AdaptiveSearch(CandidateSearchParams):
    """mode: 'approximate' (gates) or 'certified' (bounds; the exact top-k); margin: nats added to each
    gate before comparing it with the head's beat_rank-th best logit (higher: more clusters, more
    accurate; finite and within float32 range, the gates' precision); beat_rank: that rank, 0 for k (1
    opens only clusters that may hold the top-1)."""

    mode: str = "approximate"
    margin: float = 2.0
    beat_rank: int = 0

    def validate(self) -> None:
        super().validate()
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")
        if abs(check_number("margin", self.margin, signed=True)) > FLOAT32_MAX:
            raise ValueError(f"margin: expected a number within float32 range, got {self.margin!r}")
        check_int("beat_rank", self.beat_rank, 0)


def log_scores(outputs: np.ndarray, layer) -> np.ndarray:
    """Outputs o -> the log of each class's unnormalised probability: o itself (softmax) or log(o^2 + epsilon)
    (spherical; epsilon floored at 1e-30 so a zero output stays finite)."""
    if not layer.square:
        return outputs
    return np.log(outputs * outputs + max(layer.epsilon, 1e-30))


def _log_scores_by_rank(layer, rows_W, rows_b, H, verbose, desc):
    """Yield (n, D') float32 log-scores of H's blocks against rows in frequency order."""
    for lo in tqdm(range(0, H.shape[0], QUERY_BLOCK), desc=desc, disable=not verbose, unit="block"):
        yield log_scores(H[lo:lo + QUERY_BLOCK] @ rows_W.T + rows_b, layer)


def _cluster_targets(logits: np.ndarray, starts: np.ndarray, target: str) -> np.ndarray:
    """(n, T) tail logits -> (n, J) each cluster's best logit ('max') or log-sum-exp ('mass')."""
    best = np.maximum.reduceat(logits, starts, axis=1)
    if target == "max":
        return best
    spread = np.repeat(best, np.diff(np.r_[starts, logits.shape[1]]), axis=1)
    return best + np.log(np.add.reduceat(np.exp(logits - spread), starts, axis=1))


def fit_gates(layer, tail_W, tail_b, starts, H, target, ridge, verbose):
    """Least-squares gates [h, 1] -> cluster target. tail_W (T, d), tail_b (T,) in frequency order,
    starts (J,) cluster starts within the tail, H (N, d) -> V (J, d) float32, c (J,) float32, and the
    training RMSE per cluster (J,)."""
    d = H.shape[1]
    xtx = np.zeros((d + 1, d + 1))
    xty = np.zeros((d + 1, starts.size))
    yty = np.zeros(starts.size)
    for lo, logits in zip(range(0, H.shape[0], QUERY_BLOCK),
                          _log_scores_by_rank(layer, tail_W, tail_b, H, verbose, "adaptive: gate targets")):
        X = np.c_[H[lo:lo + QUERY_BLOCK], np.ones(logits.shape[0])].astype(np.float64)
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


def bounding_blocks(cluster_rows: list[np.ndarray], W: np.ndarray, block: int, seed: int):
    """Split each tail cluster's classes (arrays of class ids) into blocks of about `block` rows by k-means.
    Returns the blocks (list of class-id arrays, each cluster's blocks consecutive) and cluster_ptr
    (J + 1,) int64: cluster j owns blocks cluster_ptr[j]:cluster_ptr[j + 1]."""
    from sklearn.cluster import KMeans

    blocks, ptr = [], [0]
    for rows in cluster_rows:
        n_blocks = -(-rows.size // block)
        if n_blocks == 1:
            blocks.append(rows)
        else:
            assign = KMeans(n_blocks, n_init=1, max_iter=20, random_state=seed).fit_predict(W[rows])
            blocks.extend(rows[assign == j] for j in range(n_blocks) if np.any(assign == j))
        ptr.append(len(blocks))
    return blocks, np.array(ptr, np.int64)


def block_bounds(blocks: list[np.ndarray], W: np.ndarray, b: np.ndarray):
    """Per block: centre (B, d) float32, radius (B,) float64 = max |w - centre|, bias_max and bias_min
    (B,) float64, norm_max (B,) float64 = max |w| (for the rounding slack)."""
    centre = np.stack([W[rows].mean(axis=0) for rows in blocks]).astype(np.float32)
    radius = np.array([np.linalg.norm(W[rows].astype(np.float64) - centre[i], axis=1).max()
                       for i, rows in enumerate(blocks)])
    bias_max = np.array([b[rows].max() for rows in blocks], np.float64)
    bias_min = np.array([b[rows].min() for rows in blocks], np.float64)
    norm_max = np.array([np.linalg.norm(W[rows], axis=1).max() for rows in blocks], np.float64)
    return centre, radius, bias_max, bias_min, norm_max


def padded_rows(mask: np.ndarray, offset: int = 0) -> np.ndarray:
    """(N, B) bool -> (N, m) int32 column ids + offset of each row's True entries, -1 padded
    (m = the largest count, at least 1)."""
    counts = mask.sum(axis=1)
    width = max(1, int(counts.max()) if counts.size else 1)
    order = np.argsort(~mask, axis=1, kind="stable")[:, :width]
    out = (order + offset).astype(np.int32)
    out[np.arange(width)[None, :] >= counts[:, None]] = -1
    return out


@register
class AdaptiveSoftmax(BucketMethod):
    name = "adaptive"
    Build = AdaptiveBuild
    Search = AdaptiveSearch
    supports_spherical = True

    def __init__(self, layer, arrays=None, state=None):
        """From built (or loaded) arrays, checked: bucket 0 is the head, buckets 1.. the tail's bounding
        blocks, cluster j owning blocks cluster_ptr[j]:cluster_ptr[j + 1] (at least one each)."""
        super().__init__(layer, arrays, state)
        a, d = self.arrays, layer.dim
        n_blocks = self.buckets.n_buckets - 1
        ptr = check_array(a, "cluster_ptr", np.int64, (None,))
        J = ptr.shape[0] - 1
        if J < 1 or ptr[0] != 0 or ptr[-1] != n_blocks or np.any(ptr > n_blocks) or np.any(np.diff(ptr) < 1):
            raise ValueError(f"arrays: cluster_ptr must rise from 0 to the {n_blocks} tail blocks in steps >= 1")
        self.check_arrays({"cluster_ptr": (np.int64, (J + 1,)), "gate_V": (np.float32, (J, d)),
                           "gate_c": (np.float32, (J,)), "block_centre": (np.float32, (n_blocks, d)),
                           **dict.fromkeys(BLOCK_BOUNDS, (np.float64, (n_blocks,)))})
        if np.any(a["block_radius"] < 0) or np.any(a["block_norm_max"] < 0) \
                or np.any(a["block_bias_min"] > a["block_bias_max"]):
            raise ValueError("arrays: block_radius and block_norm_max must be >= 0, block_bias_min <= block_bias_max")
        if self.buckets.indices.size != layer.n_classes or np.unique(self.buckets.indices).size != layer.n_classes:
            raise ValueError("arrays: the head and blocks (indices) must hold every class exactly once")
        self.block_cluster = np.repeat(np.arange(J), np.diff(ptr))

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        if train is None:
            raise ValueError("train: method 'adaptive' fits its gates on sample hidden states; pass train=H (N, d)")
        D = layer.n_classes
        if D < 2:
            raise ValueError("W: method 'adaptive' needs at least 2 classes")
        counts, source = _class_frequencies(layer, train, labels)
        order = frequency_order(counts)
        W_rank, b_rank = layer.W[order], layer.b[order]
        if params.cutoffs is not None:
            cutoffs, source_cut = check_cutoffs(list(params.cutoffs), D), "given"
        else:
            sample = train[np.random.default_rng(params.seed).permutation(train.shape[0])[:params.cost_queries]]
            cutoffs, _ = choose_cutoffs(
                _log_scores_by_rank(layer, W_rank, b_rank, sample, verbose, "adaptive: cutoffs"), D, params.cost_k)
            source_cut = "expected cost"
        head = int(cutoffs[0])
        starts = cutoffs - head
        V, c, rmse = fit_gates(layer, W_rank[head:], b_rank[head:], starts, train, params.gate_target,
                               params.ridge, verbose)
        ends = np.r_[cutoffs, D]
        clusters = [order[lo:hi] for lo, hi in zip(ends[:-1], ends[1:])]
        blocks, cluster_ptr = bounding_blocks(clusters, layer.W, params.bound_block, params.seed)
        centre, radius, bias_max, bias_min, norm_max = block_bounds(blocks, layer.W, layer.b)
        buckets = Buckets.from_lists([order[:head]] + blocks)
        arrays = {"indptr": buckets.indptr, "indices": buckets.indices, "cluster_ptr": cluster_ptr,
                  "gate_V": V, "gate_c": c, "block_centre": centre, "block_radius": radius,
                  "block_bias_max": bias_max, "block_bias_min": bias_min, "block_norm_max": norm_max}
        state = {"cutoffs": [int(x) for x in cutoffs], "cutoffs_from": source_cut, "frequencies_from": source,
                 "head": head, "n_clusters": int(cutoffs.size), "n_blocks": len(blocks),
                 "gate_rmse_mean": float(rmse.mean())}
        return cls(layer, arrays, state)

    def opened_blocks(self, layer, H, threshold, params, xp=np, arrays=None, block_cluster=None):
        """(N, B) bool: tail blocks that may hold a class whose score (o, or o^2 on spherical layers)
        reaches threshold (N,). xp, arrays, block_cluster: the array module and this method's gate_* /
        block_* arrays and block_cluster on the device holding H (default: NumPy and its own)."""
        a = self.arrays if arrays is None else arrays
        if params.mode == "certified":
            H64 = H.astype(xp.float64)
            norm_h = xp.linalg.norm(H64, axis=1)[:, None]
            centre = H64 @ a["block_centre"].T.astype(xp.float64)
            spread = a["block_radius"] * norm_h
            upper, lower = centre + spread + a["block_bias_max"], centre - spread + a["block_bias_min"]
            slack = (H.shape[1] + 4) * UNIT_ROUNDOFF * (a["block_norm_max"] * norm_h + xp.abs(centre) + spread
                                                         + xp.maximum(xp.abs(a["block_bias_max"]),
                                                                      xp.abs(a["block_bias_min"])))
            if layer.square:
                reach = xp.maximum(xp.abs(upper), xp.abs(lower)) + slack
                return reach * reach * (1 + 4 * UNIT_ROUNDOFF) >= threshold[:, None]
            return upper + slack >= threshold[:, None]
        gates = H @ a["gate_V"].T + a["gate_c"]
        level = xp.where(xp.isneginf(threshold), -xp.inf, log_scores(threshold, layer))  # -inf: fewer than k
        blocks = self.block_cluster if block_cluster is None else block_cluster
        return (gates + xp.float32(params.margin) >= level[:, None])[:, blocks]

    @staticmethod
    def threshold_rank(k, params) -> int:
        """Which of the head's k scores a tail block must be able to reach (1 = the best)."""
        return k if params.mode == "certified" or params.beat_rank == 0 else min(k, params.beat_rank)

    def search(self, layer, H, k, params):
        """Queries in steps of at most SEARCH_BLOCK (and ROUTING_CELLS / tail blocks), so the routing state
        (queries x tail blocks) stays bounded for any N."""
        N = H.shape[0]
        step = max(1, min(SEARCH_BLOCK, ROUTING_CELLS // self.block_cluster.size))
        if N <= step:
            return self._search_block(layer, H, k, params)
        scores, labels, n_scored = np.empty((N, k), np.float32), np.empty((N, k), np.int64), np.empty(N, np.int64)
        for lo in range(0, N, step):
            scores[lo:lo + step], labels[lo:lo + step], n_scored[lo:lo + step] = self._search_block(
                layer, H[lo:lo + step], k, params)
        return scores, labels, n_scored

    def _search_block(self, layer, H, k, params):
        N = H.shape[0]
        common = dict(engine=params.engine, path=params.path, packed=self.packed, square=layer.square)
        head_s, head_l, head_n = candidate_topk(layer.W, layer.b, H, k, self.buckets, np.zeros((N, 1), np.int32),
                                                **common)
        opened = self.opened_blocks(layer, H, head_s[:, self.threshold_rank(k, params) - 1], params)
        if not opened.any():
            return head_s, head_l, head_n
        tail_s, tail_l, tail_n = candidate_topk(layer.W, layer.b, H, k, self.buckets, padded_rows(opened, 1),
                                                **common)
        scores, labels = merge_topk(head_s, head_l, tail_s, tail_l)
        return scores, labels, head_n + tail_n

    def tuning_grid(self, k):
        grid = [{"mode": "approximate", "margin": m, "beat_rank": r}
                for r in (0, 1) for m in (-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)]
        return grid + [{"mode": "certified"}]


def _class_frequencies(layer, train, labels):
    """Class counts for the frequency order, and where they came from: the layer's class_counts, else the
    labels, else the exact top-1 of the training queries."""
    if layer.class_counts is not None:
        return layer.class_counts, "class_counts"
    if labels is not None:
        return np.bincount(labels, minlength=layer.n_classes), "labels"
    top1 = teacher_topk(layer, train, 1, verbose=False)[0][:, 0]
    return np.bincount(top1, minlength=layer.n_classes), "exact top-1 of train"
