"""method='lss': Label Superior Sampling (Liu et al. 2020, "Climbing the WOL"): L hash tables of B buckets whose
query hash functions are learned so that a query lands in the bucket holding its label.

Build, per table: labels start in the bucket of a k-means clustering of W's rows (seeded per table); the
query hash (a linear map h -> B bucket scores, started from the centroids) is trained with cross-entropy
toward the bucket of the query's label (by default the query's exact top-1 class, which is what an index of
the layer must find; train_on='labels': the given labels, as in the paper); then each label moves to the
buckets its training queries land in (at most `max_copies` of them, most visited first; labels no query
visits stay put); train and reassign alternate for `rounds` rounds. Search: the top-n_probe buckets of every
table, the union of their labels scored exactly by the candidate engine (a label in several probed buckets
scored once)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...engine import Buckets
from ...params import BucketBuildParams, CandidateSearchParams, check_int, check_number
from ...teacher import teacher_topk
from ..base import BucketMethod, check_state_int, doubling
from ..ops import HostOps
from ..registry import register
from .hashing import HashTable, HashTables, kmeans_buckets, label_recall, reassign, target_buckets

TRAIN_ON = ("top1", "labels")   # what the hash learns to find: the exact top-1 class, or the given labels


@dataclass(frozen=True)
class LSSBuild(BucketBuildParams):
    """n_tables: L; n_buckets: B per table (at most D: a layer of fewer classes gets D buckets per table);
    rounds: train-then-reassign rounds; epochs: passes over the training queries per round; batch_size; lr
    (Adam); max_copies: buckets a label may live in per table; bucket_cap: at reassignment a bucket takes at
    most bucket_cap * D / B labels (those with most queries landing there; the others keep their clustering
    bucket), so popular buckets do not swallow the vocabulary; 0 for no cap; train_on: 'top1' trains on each
    training query's exact top-1 class, 'labels' on the labels passed to build (the paper's setting; the
    labels are used only then); seed: table t's k-means uses seed + t, which must stay below 2^32 (k-means'
    limit)."""

    n_tables: int = 2
    n_buckets: int = 1024
    rounds: int = 3
    epochs: float = 1.0
    batch_size: int = 1024
    lr: float = 3e-3
    max_copies: int = 16
    bucket_cap: float = 2.0
    train_on: str = "top1"
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_int("n_tables", self.n_tables, 1)
        check_int("n_buckets", self.n_buckets, 2)
        check_int("rounds", self.rounds, 0)
        check_int("batch_size", self.batch_size, 1)
        check_int("max_copies", self.max_copies, 1)
        check_int("seed", self.seed, 0, 2**32 - self.n_tables)
        check_number("bucket_cap", self.bucket_cap, allow_zero=True)
        check_number("epochs", self.epochs)
        check_number("lr", self.lr)
        if self.train_on not in TRAIN_ON:
            raise ValueError(f"train_on: expected one of {TRAIN_ON}, got {self.train_on!r}")


@dataclass(frozen=True)
class LSSSearch(CandidateSearchParams):
    """n_probe: buckets opened per table (the top-n_probe of its learned hash)."""

    n_probe: int = 1

    def validate(self) -> None:
        super().validate()
        check_int("n_probe", self.n_probe, 1)


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
        self.router = HashTables(self.hash_V, self.hash_c, L, B)

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        from tqdm.auto import tqdm

        if train is None:
            raise ValueError("train: method 'lss' learns its hash from sample hidden states; pass train=H (N, d)")
        if params.train_on == "labels":
            if labels is None:
                raise ValueError("labels: train_on='labels' trains the hash on given labels; pass labels=y (N,) "
                                 "or use train_on='top1'")
            y = labels
        else:
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
            table, bucket_lists, record = _build_table(layer, params, train, y, B, cap, params.seed + t, rng,
                                                       bar.update)
            history.append({"table": t, **record})
            tables.append(table)
            lists.extend(bucket_lists)
        bar.close()
        buckets = Buckets.from_lists(lists)
        arrays = {"indptr": buckets.indptr, "indices": buckets.indices,
                  "hash_V": np.concatenate([tb.V for tb in tables]), "hash_c": np.concatenate([tb.c for tb in tables])}
        sizes = buckets.sizes()
        state = {"n_tables": params.n_tables, "n_buckets": B, "mean_bucket": float(sizes.mean()),
                 "max_bucket": int(sizes.max()),
                 "labels_from": "labels" if params.train_on == "labels" else "exact top-1",
                 "training": history}
        if params.screen:
            arrays.update(cls.screen_arrays(layer, buckets))
        return cls(layer, arrays, state)

    def probes(self, H: np.ndarray, n_probe: int, engine: str = "numba") -> np.ndarray:
        """(N, L * n_probe) int32 bucket ids: table t's top-n_probe buckets (best first) offset by t * B, by
        the CPU engine."""
        return self.router.probes(HostOps(engine=engine), H, n_probe)

    def check_search(self, params) -> None:
        if params.n_probe > self.state["n_buckets"]:
            raise ValueError(f"n_probe: at most {self.state['n_buckets']} (buckets per table), got {params.n_probe}")

    def search_with(self, ops, H, k, params):
        """Search on either engine (see methods.ops): the probed buckets of every table, scored exactly."""
        self.check_search(params)
        return ops.candidates(H, k, ops.router.probes(ops, H, params.n_probe), params.path, screen=params.screen)

    def tuning_grid(self, k):
        B = self.state["n_buckets"]
        return self.screened([{"n_probe": p} for p in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64) if p <= B])

    def wider_grid(self, k):
        """n_probe doubling from 128 up to every bucket (exact search)."""
        return self.screened([{"n_probe": p} for p in doubling(128, self.state["n_buckets"])])


def _build_table(layer, params, train, y, B, cap, seed, rng, tick):
    """One table: k-means buckets (seeded by `seed`), then `rounds` of hash training and reassignment.
    Returns the trained HashTable, its bucket lists and its training record; tick() after each round."""
    first, centroids = kmeans_buckets(layer.W, B, seed)
    table = HashTable(centroids, np.zeros(B, np.float32))
    bucket_lists = [np.flatnonzero(first == j) for j in range(B)]
    recall = [label_recall(table, bucket_lists, train, y)]
    tick(1)
    losses = []
    for _ in range(params.rounds):
        target = target_buckets(bucket_lists, y, rng)
        table.train(train, target, params.epochs, params.batch_size, params.lr, rng, losses.append)
        bucket_lists = reassign(B, table.landing(train), y, layer.n_classes, params.max_copies, cap, first)
        recall.append(label_recall(table, bucket_lists, train, y))
        tick(1)
    record = {"train_label_in_top_bucket": recall, "final_loss": float(np.mean(losses[-20:])) if losses else None}
    return table, bucket_lists, record


__all__ = ["LSS", "LSSBuild", "LSSSearch", "kmeans_buckets", "reassign"]
