"""OutputLayer: the (W, b) pair an index is built over, checked once."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ._numeric import with_bias_column, with_one_column
from .arrays import as_float32, to_numpy
from .rows import as_float32_rows, gathered_storage, representable, row_dtype, rows_to_storage


@dataclass(frozen=True)
class OutputLayer:
    """A wide output layer ``logits = H @ W.T + b``.

    W: (D, d) float32, C-contiguous, or stored in float16 / bfloat16 (see `stored_as`).  b: (D,) float32.
    class_counts: (D,) int64 >= 0 or None (training frequencies, used by frequency-based builders).
    scoring: 'logit' (a softmax layer: classes ranked by o = w.h + b) or 'spherical' (a spherical softmax,
    p_c = (o_c^2 + epsilon) / sum_j (o_j^2 + epsilon): classes ranked by o^2, both signs).

    row_class: (D,) int32 permutation or None. None: row c of W and b is class c. Otherwise W and b are
    stored in another order (an index keeps them in its buckets' order, see `permuted`): row r is class
    row_class[r]. class_counts are always in class order."""

    W: np.ndarray
    b: np.ndarray
    class_counts: np.ndarray | None = None
    scoring: str = "logit"
    epsilon: float = 0.0
    row_class: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, W, b=None, class_counts=None, scoring: str = "logit", epsilon: float = 0.0) -> "OutputLayer":
        """Check and convert W (D, d), b (D,) or None (zeros), class_counts (D,) or None, scoring, epsilon."""
        check_scoring(scoring, epsilon)
        W32 = as_float32(W, "W", 2)
        D, d = W32.shape
        if D == 0 or d == 0:
            raise ValueError(f"W: expected a non-empty (D, d) matrix, got shape {W32.shape}")
        if b is None:
            b32 = np.zeros(D, np.float32)
        else:
            b32 = as_float32(b, "b", 1)
            if b32.shape[0] != D:
                raise ValueError(f"b: expected shape ({D},) to match W's {D} rows, got {b32.shape}")
        counts = None
        if class_counts is not None:
            counts = to_numpy(class_counts, "class_counts")
            if counts.dtype.kind not in "iu":
                raise TypeError(f"class_counts: expected an integer dtype, got {counts.dtype}")
            if counts.shape != (D,):
                raise ValueError(f"class_counts: expected shape ({D},), got {counts.shape}")
            if counts.min() < 0:
                raise ValueError("class_counts: counts must be >= 0")
            if counts.max() > np.iinfo(np.int64).max:
                raise ValueError(f"class_counts: counts must fit in int64, got {counts.max()}")
            counts = np.ascontiguousarray(counts, dtype=np.int64)
        return cls(W32, b32, counts, scoring, float(epsilon))

    @property
    def n_classes(self) -> int:
        return self.W.shape[0]

    @property
    def dim(self) -> int:
        return self.W.shape[1]

    @cached_property
    def class_row(self) -> np.ndarray | None:
        """(D,) int32, the row of W holding each class (None when rows are in class order)."""
        if self.row_class is None:
            return None
        out = np.empty(self.n_classes, np.int32)
        out[self.row_class] = np.arange(self.n_classes, dtype=np.int32)
        return out

    def rows_of(self, classes: np.ndarray) -> np.ndarray:
        """Class ids (any shape) -> the rows of W holding them."""
        return classes if self.class_row is None else self.class_row[classes]

    def class_b(self) -> np.ndarray:
        """(D,) float32: b in class order (a copy when rows are permuted)."""
        return self.b if self.class_row is None else self.b[self.class_row]

    def permuted(self, order: np.ndarray, dtype: str | None = None) -> "OutputLayer":
        """This layer with its rows stored in `order`: (D,) permutation of the current rows, row r of the
        result being row order[r] of this one (W and b copied once). dtype: the copy's row dtype (rounded to
        nearest even, a block of rows at a time); this layer's by default."""
        if dtype is None or dtype == self.row_dtype:
            W = np.ascontiguousarray(self.W[order])
        else:
            W = gathered_storage(self.W, order, dtype)
        return OutputLayer(W, self.b[order], self.class_counts, self.scoring, self.epsilon,
                           self.permuted_row_class(order))

    def permuted_row_class(self, order: np.ndarray) -> np.ndarray:
        """(D,) int32: the row_class of permuted(order)."""
        return order.astype(np.int32) if self.row_class is None else self.row_class[order]

    def in_class_order(self) -> "OutputLayer":
        """This layer with row c holding class c (itself when it already does; else W copied once)."""
        if self.row_class is None:
            return self
        return OutputLayer(np.ascontiguousarray(self.W[self.class_row]), self.b[self.class_row], self.class_counts,
                           self.scoring, self.epsilon)

    @property
    def row_dtype(self) -> str:
        """How W's rows are stored: 'float32', 'float16' or 'bfloat16' (wolindex.rows)."""
        return row_dtype(self.W)

    def stored_as(self, dtype: str) -> "OutputLayer":
        """This layer with W stored in `dtype` ('float32', 'float16' or 'bfloat16', rounded to nearest even;
        itself when already so stored). Searches then score the stored rows exactly, in float32."""
        if dtype == self.row_dtype:
            return self
        return OutputLayer(rows_to_storage(self.W, dtype), self.b, self.class_counts, self.scoring, self.epsilon,
                           self.row_class)

    def rounded_rows(self, dtype: str) -> "OutputLayer":
        """This layer with W rounded to `dtype` and held as float32 rows (what builders fit): itself when its
        float32 rows already hold values of `dtype` (checked a block of rows at a time), else a copy."""
        if self.row_dtype == "float32" and (dtype == "float32" or representable(self.W, dtype)):
            return self
        return self.stored_as(dtype).as_float32()

    def as_float32(self) -> "OutputLayer":
        """This layer with W's stored values as float32 rows (itself when so stored)."""
        if self.row_dtype == "float32":
            return self
        return OutputLayer(as_float32_rows(self.W), self.b, self.class_counts, self.scoring, self.epsilon,
                           self.row_class)

    @property
    def square(self) -> bool:
        """Whether classes rank by the squared output (spherical layers)."""
        return self.scoring == "spherical"

    @cached_property
    def gram(self) -> np.ndarray:
        """Q = [W, b]^T [W, b], (d + 1, d + 1) float64: |W h + b|^2 = [h, 1]^T Q [h, 1] in O(d^2)."""
        Wb = with_bias_column(as_float32_rows(self.W), self.b, dtype=np.float64)
        return Wb.T @ Wb

    def spherical_probs(self, H: np.ndarray, squares: np.ndarray) -> np.ndarray:
        """Exact spherical-softmax probabilities (N, k) float64 of classes with squared outputs squares (N, k)
        (-inf padding -> 0) for queries H (N, d), the normaliser h'^T Q h' + D epsilon in O(d^2) per query."""
        Hb = with_one_column(H, dtype=np.float64)
        total = ((Hb @ self.gram) * Hb).sum(axis=1) + self.n_classes * self.epsilon
        return np.where(np.isfinite(squares), (squares + self.epsilon) / total[:, None], 0.0)

    def logits(self, H: np.ndarray) -> np.ndarray:
        """(N, d) float32 -> (N, D) float32 full logits (for references and small checks)."""
        return H @ as_float32_rows(self.W).T + self.b


SCORINGS = ("logit", "spherical")


def check_scoring(scoring: str, epsilon) -> None:
    if scoring not in SCORINGS:
        raise ValueError(f"scoring: expected one of {SCORINGS}, got {scoring!r}")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not (np.isfinite(epsilon)
                                                                                   and epsilon >= 0):
        raise ValueError(f"epsilon: expected a finite number >= 0, got {epsilon!r}")
    if scoring == "logit" and epsilon != 0:
        raise ValueError("epsilon: only spherical layers have one (scoring='spherical')")
