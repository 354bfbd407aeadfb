"""method='ds': DS-Softmax (Liao et al. 2019) as an index: a learned gate picks the top-m of K sparse
experts, and the engine scores the union of their classes exactly (gate.py: the gate, which routes on either
engine; training.py: the training)."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ...engine import Buckets, PackedRows
from ...params import BucketBuildParams, CandidateSearchParams, check_int, check_number
from ...teacher import teacher_topk
from ..base import BucketMethod, check_state_int, doubling
from ..ops import HostOps
from ..registry import register
from .gate import Gate
from .training import DSTrainer

ROWS = ("exact", "adapted")   # which rows score the candidates


@dataclass(frozen=True)
class DSBuild(BucketBuildParams):
    """n_experts: K at the end of mitosis (a power-of-two multiple of start_experts); start_experts: K at
    the start; epochs_per_stage / final_epochs: passes over the training queries per mitosis stage and added
    to the last one; batch_size; gate_lr (Adam); expert_lr (proximal SGD); lasso: group-lasso weight;
    prune_below: row norm under which a row leaves its expert; balance: importance-loss weight;
    label_weight / distill_weight: cross-entropy on the labels and on the exact top-`distill_k`
    distribution (distill_k at most D); split_margin: how far apart (in standard deviations of the expert's
    queries along their leading direction) the twins' gate logits start at mitosis; complete_k: after
    training, give each expert the exact top-complete_k classes of the training queries routed to it (0:
    off; an addition to the paper that guarantees the training queries' top classes are found with
    n_probe=1); capacity_factor: in training, an expert takes at most capacity_factor * batch_size / K
    queries of a batch, the rest going to their next choice (0: plain top-1 as in the paper; an addition
    against gate collapse); gate_hidden: 0 for a linear gate, else the width of one ReLU hidden layer;
    keep_adapted: also store the experts' own rows (for rows='adapted'); seed."""

    n_experts: int = 256
    start_experts: int = 2
    epochs_per_stage: float = 0.5
    final_epochs: float = 1.0
    batch_size: int = 512
    gate_lr: float = 3e-3
    expert_lr: float = 0.05
    lasso: float = 0.0003
    prune_below: float = 1e-3
    balance: float = 10.0
    label_weight: float = 1.0
    distill_weight: float = 1.0
    distill_k: int = 10
    split_margin: float = 2.0
    complete_k: int = 1
    capacity_factor: float = 2.0
    gate_hidden: int = 0
    keep_adapted: bool = False
    seed: int = 0

    def validate(self) -> None:
        super().validate()
        check_int("n_experts", self.n_experts, 1)
        check_int("start_experts", self.start_experts, 1, self.n_experts)
        ratio = self.n_experts // self.start_experts
        if self.n_experts % self.start_experts or ratio & (ratio - 1):
            raise ValueError(f"n_experts: must be start_experts ({self.start_experts}) times a power of two, "
                             f"got {self.n_experts}")
        check_int("batch_size", self.batch_size, 1)
        check_int("distill_k", self.distill_k, 1)
        check_int("complete_k", self.complete_k, 0, self.distill_k)
        check_int("gate_hidden", self.gate_hidden, 0)
        check_int("seed", self.seed, 0)
        for name in ("epochs_per_stage", "gate_lr", "expert_lr"):
            check_number(name, getattr(self, name))
        for name in ("final_epochs", "lasso", "prune_below", "balance", "label_weight", "distill_weight",
                     "split_margin", "capacity_factor"):
            check_number(name, getattr(self, name), allow_zero=True)
        if not isinstance(self.keep_adapted, bool):
            raise TypeError(f"keep_adapted: expected a bool, got {type(self.keep_adapted).__name__}")


@dataclass(frozen=True)
class DSSearch(CandidateSearchParams):
    """n_probe: experts opened per query (the top-m of the gate); rows (also accepted under its former name,
    scoring): 'exact' scores the candidates with the original W, b (exact logits), 'adapted' with the
    experts' trained rows (DS-Softmax's own logits, without the gate scaling; needs keep_adapted)."""

    ALIASES = {"scoring": "rows"}
    n_probe: int = 1
    rows: str = "exact"

    def validate(self) -> None:
        super().validate()
        check_int("n_probe", self.n_probe, 1)
        if self.rows not in ROWS:
            raise ValueError(f"rows: expected one of {ROWS}, got {self.rows!r}")


@register
class DSSoftmax(BucketMethod):
    name = "ds"
    Build = DSBuild
    Search = DSSearch

    def __init__(self, layer, arrays=None, state=None):
        """From trained (or loaded) arrays and state: checked, since a damaged file must not reach the kernels.
        gate.U (K, state gate_hidden or d), gate.c (K,) and with a hidden layer gate.U1 (gate_hidden, d),
        gate.c1 (gate_hidden,), float32; rehomed int32 class ids; optionally adapted_W (nnz, d), adapted_b
        (nnz,) float32."""
        super().__init__(layer, arrays, state)
        a, d = self.arrays, layer.dim
        hidden = check_state_int(self.state, "gate_hidden", 0)
        K, nnz = self.buckets.n_buckets, self.buckets.indices.shape[0]
        if K < 1:
            raise ValueError("arrays: indptr must describe at least one expert")
        gate = {"U": (K, hidden or d), "c": (K,), **({"U1": (hidden, d), "c1": (hidden,)} if hidden else {})}
        adapted = {"adapted_W": (nnz, d), "adapted_b": (nnz,)} if "adapted_W" in a or "adapted_b" in a else {}
        self.check_arrays({"rehomed": (np.int32, (None,)),
                           **{f"gate.{name}": (np.float32, shape) for name, shape in gate.items()},
                           **{name: (np.float32, shape) for name, shape in adapted.items()}})
        if np.any(a["rehomed"] < 0) or np.any(a["rehomed"] >= layer.n_classes):
            raise ValueError(f"arrays: rehomed class ids must lie in [0, {layer.n_classes})")
        self.gate = self.router = Gate.from_arrays({name: a[f"gate.{name}"] for name in gate}, hidden)
        self.adapted = None
        if adapted:
            self.adapted = PackedRows.from_arrays(a["adapted_W"], a["adapted_b"])
            self.adapted.validate(self.buckets, d)

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        if train is None:
            raise ValueError("train: method 'ds' learns from sample hidden states; pass train=H (N, d)")
        if params.distill_k > layer.n_classes:
            raise ValueError(f"distill_k: at most the {layer.n_classes} classes, got {params.distill_k}")
        started = time.perf_counter()
        t_labels, t_probs = teacher_topk(layer, train, params.distill_k, verbose)
        teacher_s = time.perf_counter() - started
        trainer = DSTrainer(layer.W, layer.b, train, labels, t_labels, t_probs, params)
        trainer.train(verbose)
        experts = trainer.experts
        buckets = Buckets.from_lists([e.classes for e in experts])
        arrays = {"indptr": buckets.indptr, "indices": buckets.indices, "rehomed": trainer.rehomed,
                  **{f"gate.{k}": v for k, v in trainer.gate.params.items()}}
        if params.keep_adapted:
            arrays["adapted_W"] = np.ascontiguousarray(np.concatenate([e.V for e in experts]), dtype=np.float32)
            arrays["adapted_b"] = np.concatenate([e.bias for e in experts]).astype(np.float32)
        sizes = buckets.sizes()
        state = {"gate_hidden": params.gate_hidden, "n_experts": len(experts),
                 "mean_support": float(sizes.mean()), "max_support": int(sizes.max()),
                 "total_support": int(sizes.sum()), "completed_rows": trainer.completed,
                 "rehomed_classes": int(trainer.rehomed.size), "train_queries": int(train.shape[0]),
                 "teacher_s": teacher_s, "total_s": time.perf_counter() - started,
                 "training": trainer.history}
        if params.screen:
            arrays.update(cls.screen_arrays(layer, buckets))
        return cls(layer, arrays, state)

    def check_search(self, params) -> None:
        if params.n_probe > self.buckets.n_buckets:
            raise ValueError(f"n_probe: at most {self.buckets.n_buckets} (the number of experts), got {params.n_probe}")
        if params.rows == "adapted" and self.adapted is None:
            raise ValueError("rows: 'adapted' needs an index built with keep_adapted=True")

    def route(self, H: np.ndarray, n_probe: int, engine: str = "numba") -> np.ndarray:
        """(N, d) -> (N, n_probe) int32: the experts with the largest gate logits, best first, by the CPU
        engine (see Gate.route)."""
        return self.gate.route(H, n_probe, HostOps(engine=engine))

    def search_with(self, ops, H, k, params):
        """Search on either engine (see methods.ops): the gate's top-n_probe experts, scored exactly."""
        self.check_search(params)
        probes = ops.router.route(H, params.n_probe, ops)
        return ops.candidates(H, k, probes, params.path, rows="packed" if params.rows == "exact" else "adapted",
                              screen=params.screen)

    def tuning_grid(self, k):
        probes = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
        return self.screened([{"n_probe": m} for m in probes if m <= self.buckets.n_buckets])

    def wider_grid(self, k):
        """n_probe doubling from 64 up to every expert (exact search)."""
        return self.screened([{"n_probe": m} for m in doubling(64, self.buckets.n_buckets)])
