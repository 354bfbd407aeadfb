"""Buckets: class lists in CSR form, the structure every approximate method hands to the engine."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..rows import STORAGE

CHECK_ENTRIES = 1 << 16   # bucket entries validate checks for repeats at a time


@dataclass(frozen=True)
class Buckets:
    """B buckets of class ids.  indptr: (B + 1,) int64, indices: (nnz,) int32 class ids;
    bucket i holds indices[indptr[i]:indptr[i + 1]]. Buckets may be empty and may overlap."""

    indptr: np.ndarray
    indices: np.ndarray

    @classmethod
    def from_lists(cls, lists) -> "Buckets":
        """A sequence of integer arrays -> Buckets."""
        sizes = np.array([len(x) for x in lists], dtype=np.int64)
        indptr = np.zeros(len(lists) + 1, np.int64)
        np.cumsum(sizes, out=indptr[1:])
        flat = np.concatenate([np.asarray(x, dtype=np.int64) for x in lists]) if len(lists) else np.zeros(0)
        return cls(indptr, flat.astype(np.int32))

    @classmethod
    def from_assignment(cls, bucket_of_class: np.ndarray, n_buckets: int) -> "Buckets":
        """A partition: bucket_of_class (D,) ints in [0, n_buckets) -> Buckets (ids ascending per bucket)."""
        order = np.argsort(bucket_of_class, kind="stable").astype(np.int32)
        counts = np.bincount(bucket_of_class, minlength=n_buckets)
        indptr = np.zeros(n_buckets + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, order)

    @property
    def n_buckets(self) -> int:
        return self.indptr.shape[0] - 1

    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    def validate(self, n_classes: int) -> None:
        """Raise ValueError unless this is well-formed CSR over [0, n_classes), ids unique per bucket;
        on success remember n_classes (see check)."""
        if self.indptr.ndim != 1 or self.indptr.shape[0] < 1 or self.indices.ndim != 1:
            raise ValueError("buckets: indptr and indices must be 1-D, indptr non-empty")
        if self.indptr.dtype != np.int64 or self.indices.dtype != np.int32:
            raise TypeError("buckets: indptr must be int64 and indices int32")
        if self.indptr[0] != 0 or self.indptr[-1] != self.indices.shape[0] or self.indptr.min() < 0 \
                or self.indptr.max() > self.indices.shape[0] \
                or np.any(self.indptr[1:] < self.indptr[:-1]):
            raise ValueError("buckets: indptr must start at 0, be non-decreasing and end at len(indices)")
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n_classes):
            raise ValueError(f"buckets: class ids must lie in [0, {n_classes})")
        if self._repeats_a_class(n_classes):
            raise ValueError("buckets: a bucket holds the same class id twice")
        object.__setattr__(self, "_valid_for", n_classes)

    def _repeats_a_class(self, n_classes: int) -> bool:
        """Whether some bucket holds a class id twice: checked on runs of whole buckets of about CHECK_ENTRIES
        entries (a longer bucket alone), so the check's memory follows the longest bucket, not nnz."""
        lo, B = 0, self.n_buckets
        while lo < B:
            start = self.indptr[lo]
            hi = min(B, max(lo + 1, int(np.searchsorted(self.indptr, start + CHECK_ENTRIES, side="right")) - 1))
            ids = self.indices[start:self.indptr[hi]]
            if hi - lo > 1:   # (bucket, class) as one int64 key
                owner = np.repeat(np.arange(hi - lo, dtype=np.int64), np.diff(self.indptr[lo:hi + 1]))
                ids = owner * n_classes + ids
            keys = np.sort(ids)
            if np.any(keys[1:] == keys[:-1]):
                return True
            lo = hi
        return False

    def check(self, n_classes: int) -> None:
        """validate(n_classes) unless these buckets already passed it (their arrays must not change after)."""
        if getattr(self, "_valid_for", None) != n_classes:
            self.validate(n_classes)


@dataclass(frozen=True)
class PackedRows:
    """The rows that score a Buckets' entries: entry p (class buckets.indices[p]) is scored with W[row_of[p]],
    b[row_of[p]]. W: (R, d) rows of a row dtype (wolindex.rows), b: (R,) float32, row_of: (nnz,) int32 in [0, R).

    Rows stored in bucket order (an index's permuted layer, `of`'s copy) make each bucket a contiguous
    range that is streamed instead of gathered (about 2.5x faster per query on scattered classes)."""

    W: np.ndarray
    b: np.ndarray
    row_of: np.ndarray

    @classmethod
    def of(cls, buckets: Buckets, W: np.ndarray, b: np.ndarray) -> "PackedRows":
        """A copy of the buckets' rows of (W, b), bucket by bucket (a class in two buckets stored twice)."""
        return cls.from_arrays(np.ascontiguousarray(W[buckets.indices]), np.ascontiguousarray(b[buckets.indices]))

    @classmethod
    def from_arrays(cls, W: np.ndarray, b: np.ndarray) -> "PackedRows":
        """Entry p scored with W[p], b[p]."""
        return cls(W, b, np.arange(W.shape[0], dtype=np.int32))

    def entry_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """(nnz, d) and (nnz,): each entry's row and bias, in entry order (a copy unless already so stored)."""
        if self.row_of.shape[0] == self.W.shape[0] and np.array_equal(self.row_of, np.arange(self.W.shape[0])):
            return self.W, self.b
        return np.ascontiguousarray(self.W[self.row_of]), self.b[self.row_of]

    def validate(self, buckets: Buckets, dim: int) -> None:
        """Raise ValueError unless these are C-contiguous rows of width dim with one row_of in [0, R)
        per entry of buckets; on success remember (buckets, dim) (see check)."""
        nnz = buckets.indices.shape[0]
        R = self.W.shape[0] if self.W.ndim == 2 else -1
        if self.W.dtype not in STORAGE or self.W.shape != (R, dim) or not self.W.flags.c_contiguous:
            raise ValueError(f"packed: W must be C-contiguous float32, float16 or bfloat16 bits (uint16) of shape "
                             f"(R, {dim}), got {self.W.dtype} {self.W.shape}")
        if self.b.dtype != np.float32 or self.b.shape != (R,):
            raise ValueError(f"packed: b must be float32 of shape ({R},), got {self.b.shape}")
        if self.row_of.dtype != np.int32 or self.row_of.shape != (nnz,):
            raise ValueError(f"packed: row_of must be int32 of shape ({nnz},), got {self.row_of.dtype} "
                             f"{self.row_of.shape}")
        if nnz and (self.row_of.min() < 0 or self.row_of.max() >= R):
            raise ValueError(f"packed: row_of must lie in [0, {R})")
        object.__setattr__(self, "_valid_for", (buckets, dim))

    def check(self, buckets: Buckets, dim: int) -> None:
        """validate(buckets, dim) unless already passed for these very buckets (arrays unchanged since)."""
        valid = getattr(self, "_valid_for", None)
        if valid is None or valid[0] is not buckets or valid[1] != dim:
            self.validate(buckets, dim)


def check_probes(probes: np.ndarray, n_buckets: int, n_queries: int) -> np.ndarray:
    """probes (N, m) ints, -1 for 'no bucket' -> int32 C-contiguous, range-checked."""
    p = np.asarray(probes)
    if p.ndim != 2 or p.shape[0] != n_queries:
        raise ValueError(f"probes: expected shape ({n_queries}, m), got {p.shape}")
    if p.dtype.kind not in "iu":
        raise TypeError(f"probes: expected an integer dtype, got {p.dtype}")
    if p.size and (p.min() < -1 or p.max() >= n_buckets):
        raise ValueError(f"probes: bucket ids must lie in [-1, {n_buckets})")
    return np.ascontiguousarray(p, dtype=np.int32)
