"""method='screen': int8 codes of every class, scanned for each query's best candidates, which are then
rescored exactly (so scores are exact logits).

Build: with rank=None every row is coded over all d dimensions (w_c - mean, one scale per row); no training
queries are needed. With rank=r the rows are coded along r query-aware directions fitted on `train` (the
directions that carry most of the logits' variance under the training queries, see projection.py; without
train, the principal directions of W's rows). Search: mode='approx' rescoring the n_candidates best classes
by approximate logit, or mode='certified' (rank=None only), rescoring every class whose score can still
reach the k-th best (a provably exact top-k; see wolindex.engine.screen)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ...arrays import all_blocks, c_contiguous
from ...engine import screen as engine_screen
from ...engine.names import SCREEN_MAX_QUADS as MAX_QUADS
from ...params import BuildParams, SearchParams, check_int
from ..base import Method, check_array, doubling
from ..registry import register
from .projection import fit_projection

MODES = ("approx", "certified")


@dataclass(frozen=True)
class ScreenBuild(BuildParams):
    """rank: coded dimensions (None: all d, no projection; else 1 <= rank <= d along query-aware directions
    fitted on the training queries)."""

    rank: int | None = None

    def validate(self) -> None:
        if self.rank is not None:
            check_int("rank", self.rank, 1, 4 * MAX_QUADS)


@dataclass(frozen=True)
class ScreenSearch(SearchParams):
    """n_candidates: classes rescored exactly per query (mode 'approx'); mode: 'approx' or 'certified'
    (every class that can reach the top-k is rescored: the exact top-k; rank=None indexes only)."""

    n_candidates: int = 64
    mode: str = "approx"

    def validate(self) -> None:
        super().validate()
        check_int("n_candidates", self.n_candidates, 1)
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")


@register
class Screen(Method):
    name = "screen"
    Build = ScreenBuild
    Search = ScreenSearch

    def __init__(self, layer, arrays=None, state=None):
        """From built (or loaded) arrays, checked: blocks (ceil(D / 16), n_quads, 64) int8 codes in [-127, 127],
        scale (D,) float32 >= 0, mean (d,) float32 and, for a projected screen, proj (r, d) float32."""
        super().__init__(arrays, state)
        D, d = layer.W.shape
        allowed = {"blocks", "scale", "mean", "proj"}
        extra = sorted(str(name) for name in set(self.arrays) - allowed)
        if extra:
            raise ValueError(f"arrays: unexpected {extra} for method 'screen'")
        proj = None
        if "proj" in self.arrays:
            proj = check_array(self.arrays, "proj", np.float32, (None, d))
            if not 1 <= proj.shape[0] <= min(d, 4 * MAX_QUADS):
                raise ValueError(f"arrays: proj must have 1 to {min(d, 4 * MAX_QUADS)} rows, got {proj.shape[0]}")
        rank = d if proj is None else proj.shape[0]
        if proj is None and d > 4 * MAX_QUADS:
            raise ValueError(f"W: a screen without projection codes at most {4 * MAX_QUADS} dimensions, got {d}")
        blocks = check_array(self.arrays, "blocks", np.int8, (-(-D // 16), max(1, -(-rank // 4)), 64))
        if not all_blocks(blocks, lambda part: part != -128):
            raise ValueError("arrays: blocks hold the code -128 (codes lie in [-127, 127])")
        scale = check_array(self.arrays, "scale", np.float32, (D,))
        if (scale < 0).any():
            raise ValueError("arrays: scale must be >= 0")
        mean = check_array(self.arrays, "mean", np.float32, (d,))
        self.layer = layer
        self.codes = engine_screen.ScreenCodes(c_contiguous(blocks), scale, mean,
                                               None if proj is None else c_contiguous(proj), layer.b)

    @classmethod
    def build(cls, layer, params, train, labels, verbose):
        W = layer.W
        if params.rank is not None and params.rank > W.shape[1]:
            raise ValueError(f"rank: at most d = {W.shape[1]}, got {params.rank}")
        if params.rank is None:
            mean, row_proj, query_proj = W.mean(axis=0, dtype=np.float64).astype(np.float32), None, None
        else:
            mean, row_proj, query_proj = fit_projection(W, params.rank, train)
        codes = engine_screen.ScreenCodes.encode(W, layer.b, mean, row_proj, query_proj)
        arrays = {"blocks": codes.blocks, "scale": codes.scale, "mean": mean}
        if query_proj is not None:
            arrays["proj"] = query_proj
        return cls(layer, arrays, {"trained_on_queries": train is not None and params.rank is not None})

    @classmethod
    def restore(cls, layer, arrays, state):
        return cls(layer, arrays, state)

    @cached_property
    def _certificate(self):
        return self.codes.certificate(self.layer.W, self.layer.b)

    def search(self, layer, H, k, params):
        """H (N, d) float32 -> scores (N, k), labels (N, k), n_scored (N,): exact logits of the rescored classes."""
        if params.mode == "certified":
            if self.codes.proj is not None:
                raise ValueError("mode: 'certified' needs a screen built with rank=None (no projection)")
            return engine_screen.certified_topk(layer.W, layer.b, H, k, self.codes, self._certificate, params.engine)
        return engine_screen.screen_topk(layer.W, layer.b, H, k, self.codes, max(k, params.n_candidates),
                                         params.engine)

    def tuning_grid(self, k):
        sizes = sorted({max(k, c) for c in (k, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)})
        return [{"n_candidates": c} for c in sizes if c <= self.layer.n_classes]

    def wider_grid(self, k):
        """n_candidates doubling from 8192 up to every class (exact search)."""
        return [{"n_candidates": c} for c in doubling(8192, self.layer.n_classes)]

    def nbytes(self) -> int:
        return self.codes.nbytes()
