"""Class rows in their storage dtype, and the conversions between them (NumPy on the host, CuPy on a GPU).

Rows are stored as float32, float16, or bfloat16. NumPy has no bfloat16: its rows are uint16 arrays of
bfloat16 bit patterns (the upper half of a float32's bits). Whatever the storage, products are computed in
float32 from the stored values, which convert to float32 exactly. Host conversions of whole layers work a
block of rows at a time into the output, so their temporaries stay small beside W."""
from __future__ import annotations

import numpy as np

from .arrays import all_blocks, row_blocks

ROW_DTYPES = ("float32", "float16", "bfloat16")
# NumPy dtype of stored rows -> row dtype
STORAGE = {np.dtype(np.float32): "float32", np.dtype(np.float16): "float16", np.dtype(np.uint16): "bfloat16"}
STORED_AS = {name: storage for storage, name in STORAGE.items()}    # row dtype -> NumPy dtype of its rows
BLOCK_BYTES = 1 << 22     # bytes of rows converted or checked at a time


def row_dtype(A) -> str:
    """The storage dtype name of rows A (float32, float16, or uint16 = bfloat16 bit patterns)."""
    name = STORAGE.get(np.dtype(A.dtype))
    if name is None:
        raise TypeError(f"W: expected rows stored as float32, float16 or bfloat16 (uint16 bits), got {A.dtype}")
    return name


def check_row_dtype(dtype) -> str:
    if not isinstance(dtype, str) or dtype not in ROW_DTYPES:
        raise ValueError(f"dtype: expected one of {ROW_DTYPES}, got {dtype!r}")
    return dtype


def _blocks(A: np.ndarray, dtype, convert) -> np.ndarray:
    """convert(part) for A's parts in arrays.row_blocks, written into one new C-contiguous array of `dtype`."""
    out = np.empty(A.shape, dtype)
    for lo, part in row_blocks(A, BLOCK_BYTES):
        out[lo:lo + len(part)] = convert(part)
    return out


def rows_to_storage(A, dtype: str, name: str = "W"):
    """Host rows A (float32, or already stored in any row dtype; finite) -> their form in `dtype`: float32,
    float16, or bfloat16 bit patterns in uint16 (rounded to nearest even). Rows already in `dtype` are
    returned as they are (C-contiguous). Raises ValueError when a value is not finite or overflows `dtype`."""
    check_row_dtype(dtype)
    stored = row_dtype(A)
    if stored == dtype:
        return np.ascontiguousarray(A)
    if not all_blocks(A, finite_values, BLOCK_BYTES):
        raise ValueError(f"{name}: contains NaN or Inf")
    if stored != "float32":
        A = as_float32_rows(A)
    if dtype == "float32":
        return np.ascontiguousarray(A, np.float32)
    if dtype == "float16":
        with np.errstate(over="ignore"):
            out = _blocks(A, np.float16, lambda part: part.astype(np.float16))
        what = "beyond float16's range"
    else:
        out = _blocks(A, np.uint16, lambda part: float32_to_bfloat16_bits(np, np.ascontiguousarray(part)))
        what = "that round beyond bfloat16's range"
    if not all_blocks(out, finite_values, BLOCK_BYTES):
        raise ValueError(f"dtype: {name} has values {what} (max |x| = {np.abs(A).max():.4g}); use "
                         f"{'bfloat16' if dtype == 'float16' else 'float32'}")
    return out


def gathered_storage(A: np.ndarray, order: np.ndarray, dtype: str) -> np.ndarray:
    """rows_to_storage(A[order], dtype), gathered and converted a block of rows at a time (no float32 copy of
    the gathered rows is made). order: (n,) row indices of host rows A (D, d)."""
    out = np.empty((len(order), A.shape[1]), STORED_AS[check_row_dtype(dtype)])
    for lo, part in gathered_blocks(A, order, dtype):
        out[lo:lo + len(part)] = part
    return out


def gathered_blocks(A: np.ndarray, order: np.ndarray, dtype: str):
    """Yield (lo, rows_to_storage(A[order[lo:lo + n]], dtype)) over order in blocks of about BLOCK_BYTES of A's
    rows: gathered_storage a block at a time, for a writer that never holds all of it."""
    check_row_dtype(dtype)
    step = max(1, BLOCK_BYTES // max(1, A.itemsize * A.shape[1]))
    for lo in range(0, len(order), step):
        yield lo, rows_to_storage(A[order[lo:lo + step]], dtype)


def representable(A: np.ndarray, dtype: str) -> bool:
    """Whether float32 rows A hold only values of `dtype` (they round to themselves), read a block of rows at a
    time. Raises as rows_to_storage does when a value is not finite or overflows `dtype`."""
    return all_blocks(A, lambda part: as_float32_rows(rows_to_storage(part, dtype)) == part, BLOCK_BYTES)


def float32_to_bfloat16_bits(xp, A):
    """Float32 array (finite) -> uint16 bfloat16 bit patterns, rounded to nearest even; works on NumPy and
    CuPy arrays alike."""
    bits = A.view(xp.uint32)
    return ((bits + xp.uint32(0x7FFF) + ((bits >> 16) & xp.uint32(1))) >> 16).astype(xp.uint16)


def storage_to_float32(xp, A, dtype: str):
    """Stored rows -> float32 (exact)."""
    if dtype == "bfloat16":
        return (A.astype(xp.uint32) << 16).view(xp.float32)
    return A.astype(xp.float32)


def as_float32_rows(A) -> np.ndarray:
    """Host rows in any row dtype -> float32 values (A itself when already float32)."""
    stored = row_dtype(A)
    if stored == "float32":
        return A
    return _blocks(A, np.float32, lambda part: storage_to_float32(np, part, stored))


def finite_values(A) -> np.ndarray:
    """np.isfinite of the stored values of A (any row dtype)."""
    if row_dtype(A) == "bfloat16":
        return A & np.uint16(0x7F80) != np.uint16(0x7F80)   # exponent all ones: inf or NaN
    return np.isfinite(A)


def kernel_rows(A) -> np.ndarray:
    """Host rows as the Numba kernels read them: float32 as is, bfloat16 as its uint16 bits, float16 as
    int16 bits (Numba has no float16 on the CPU; the integer type selects the conversion, see
    engine/cpu.py's `widen`)."""
    return A.view(np.int16) if A.dtype == np.float16 else A
