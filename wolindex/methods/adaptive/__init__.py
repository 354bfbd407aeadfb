"""method='adaptive': adaptive softmax's frequency clusters (Grave et al. 2016) as an inference index.

The head (most frequent classes) is always scored; each tail cluster has a linear gate fitted to its
log-mass under the exact model, and is opened only when that estimate (plus a margin) reaches the head's
k-th best logit. mode='certified' replaces the gates by provable bounds on every bounding block's best
logit (centre score + radius * |h| + largest bias), so its top-k equals exact search.

Spherical layers (classes ranked by o^2) work the same way in log space: a class's log-score is
log(o^2 + epsilon), a cluster's mass the sum of o^2 + epsilon, and the bounds cover both signs of o.

clusters.py: the frequency order and cutoffs; gates.py: fitting the gates; bounds.py: the bounding blocks and
the router (gates or bounds -> tail blocks), which runs on the CPU and GPU engines alike."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...engine import Buckets
from ...engine.names import QUERY_BLOCK
from ...params import BucketBuildParams, CandidateSearchParams, check_int, check_number
from ...teacher import teacher_topk
from ..base import BucketMethod, check_array
from ..ops import in_steps
from ..registry import register
from .bounds import BLOCK_BOUNDS, ROUTER_ARRAYS, ClusterRouter, block_bounds, bounding_blocks
from .clusters import check_cutoffs, choose_cutoffs, frequency_order
from .gates import fit_gates, log_scores_by_rank

GATE_TARGETS = ("mass", "max")
MODES = ("approximate", "certified")
SEARCH_BLOCK = QUERY_BLOCK  # queries per search step, so memory is bounded for any N
ROUTING_CELLS = 2**20      # at most this many (query, tail block) pairs per step: 8 MiB per float64 matrix
FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class AdaptiveBuild(BucketBuildParams):
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
        super().validate()
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
        self.router = ClusterRouter({name: a[name] for name in ROUTER_ARRAYS}, self.block_cluster, layer.square,
                                    layer.epsilon)

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        if train is None:
            raise ValueError("train: method 'adaptive' fits its gates on sample hidden states; pass train=H (N, d)")
        D = layer.n_classes
        if D < 2:
            raise ValueError("W: method 'adaptive' needs at least 2 classes")
        counts, source = _class_frequencies(layer, train, labels)
        order = frequency_order(counts)
        if params.cutoffs is not None:
            cutoffs, source_cut = check_cutoffs(list(params.cutoffs), D), "given"
        else:
            sample = train[np.random.default_rng(params.seed).permutation(train.shape[0])[:params.cost_queries]]
            cutoffs, _ = choose_cutoffs(log_scores_by_rank(layer, order, sample, verbose, "adaptive: cutoffs"), D,
                                        params.cost_k)
            source_cut = "expected cost"
        head = int(cutoffs[0])
        starts = cutoffs - head
        V, c, rmse = fit_gates(layer, order[head:], starts, train, params.gate_target,
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
        if params.screen:
            arrays.update(cls.screen_arrays(layer, buckets))
        return cls(layer, arrays, state)

    @staticmethod
    def threshold_rank(k, params) -> int:
        """Which of the head's k scores a tail block must be able to reach (1 = the best)."""
        return k if params.mode == "certified" or params.beat_rank == 0 else min(k, params.beat_rank)

    def search(self, layer, H, k, params):
        """The screened approximate search (screen=n) of the numba engine in one kernel call per step
        (screened.py); every other search through search_with."""
        if params.screen and params.mode == "approximate" and params.engine == "numba" and not layer.square \
                and self.screen_codes is not None:
            if getattr(self, "_screened", None) is None or self._screened.layer is not layer:
                from .screened import ScreenedSearch

                self._screened = ScreenedSearch(self, layer)
            return self._screened(H, k, params)
        return super().search(layer, H, k, params)

    def search_step(self) -> int:
        """Queries per search step: at most SEARCH_BLOCK and ROUTING_CELLS / tail blocks, so the routing state
        (queries x tail blocks) stays bounded for any N."""
        return max(1, min(SEARCH_BLOCK, ROUTING_CELLS // self.block_cluster.size))

    def search_with(self, ops, H, k, params):
        """Search on either engine (see methods.ops), queries in steps of search_step()."""
        return in_steps(ops.xp, H, k, self.search_step(), lambda part: self._search_step(ops, part, k, params))

    def _search_step(self, ops, H, k, params):
        """The head, then the tail blocks the router opens against the head's threshold_rank-th score."""
        xp = ops.xp
        head = ops.candidates(H, k, xp.zeros((H.shape[0], 1), xp.int32), params.path, screen=params.screen)
        opened = ops.router.opened_blocks(ops, H, head[0][:, self.threshold_rank(k, params) - 1], params)
        if ops.surely_empty(opened):
            return head
        return ops.merge(head, ops.candidates(H, k, ops.probe_lists(opened, 1), params.path, screen=params.screen))

    def tuning_grid(self, k):
        grid = [{"mode": "approximate", "margin": m, "beat_rank": r}
                for r in (0, 1) for m in (-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 10.0)]
        return self.screened(grid) + [{"mode": "certified"}]


def _class_frequencies(layer, train, labels):
    """Class counts for the frequency order, and where they came from: the layer's class_counts, else the
    labels, else the exact top-1 of the training queries."""
    if layer.class_counts is not None:
        return layer.class_counts, "class_counts"
    if labels is not None:
        return np.bincount(labels, minlength=layer.n_classes), "labels"
    top1 = teacher_topk(layer, train, 1, verbose=False)[0][:, 0]
    return np.bincount(top1, minlength=layer.n_classes), "exact top-1 of train"
