"""OutputLayer: the (W, b) pair an index is built over, checked once."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .arrays import as_float32, to_numpy


@dataclass(frozen=True)
class OutputLayer:
    """A wide output layer ``logits = H @ W.T + b``.

    W: (D, d) float32, C-contiguous.  b: (D,) float32.  class_counts: (D,) int64 >= 0 or None
    (training frequencies, used by frequency-based builders)."""

    W: np.ndarray
    b: np.ndarray
    class_counts: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, W, b=None, class_counts=None) -> "OutputLayer":
        """Check and convert W (D, d), b (D,) or None (zeros), class_counts (D,) or None."""
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
            counts = np.ascontiguousarray(counts, dtype=np.int64)
        return cls(W32, b32, counts)

    @property
    def n_classes(self) -> int:
        return self.W.shape[0]

    @property
    def dim(self) -> int:
        return self.W.shape[1]

    def logits(self, H: np.ndarray) -> np.ndarray:
        """(N, d) float32 -> (N, D) float32 full logits (for references and small checks)."""
        return H @ self.W.T + self.b
