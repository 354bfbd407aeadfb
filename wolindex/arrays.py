"""Array conversion at the library boundary: anything NumPy, PyTorch, CuPy or JAX hands over becomes a
checked, C-contiguous NumPy array of float32 (or an integer array), or a clear error naming the argument.

Floating inputs of float16, bfloat16, float32 or float64 are accepted and converted to float32, the dtype
every engine computes in (float16 and bfloat16 convert exactly; float64 is rounded, and a value too large
for float32 is reported as non-finite, never clipped). Integer, boolean and complex inputs are refused.
"""
from __future__ import annotations

import numpy as np

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _from_torch(x):
    import torch  # only reached when x is a torch.Tensor, so torch is importable

    x = x.detach()
    if x.dtype == torch.bfloat16:
        import ml_dtypes

        return x.view(torch.int16).cpu().numpy().view(ml_dtypes.bfloat16)
    return x.cpu().numpy()


def _from_cuda_array(x, name: str):
    try:
        import cupy
    except ImportError:
        raise TypeError(f"{name}: a GPU array ({type(x).__name__}) needs cupy to be copied to the host; "
                        f"install wolindex[gpu] or pass a host array") from None
    return cupy.asnumpy(cupy.asarray(x))


def to_numpy(x, name: str) -> np.ndarray:
    """Any array-like -> np.ndarray without changing its dtype (bfloat16 from torch: ml_dtypes.bfloat16).

    Accepts np.ndarray, torch.Tensor (CPU or CUDA), objects with ``__cuda_array_interface__`` (CuPy),
    ``__dlpack__`` or ``__array__`` (JAX, ...), and nested lists."""
    if isinstance(x, np.ndarray):
        return x
    module = type(x).__module__.split(".")[0]
    if module == "torch":
        return _from_torch(x)
    if hasattr(x, "__cuda_array_interface__"):
        return _from_cuda_array(x, name)
    if hasattr(x, "__array__"):
        return np.asarray(x)
    if hasattr(x, "__dlpack__"):
        return np.from_dlpack(x)
    if isinstance(x, (list, tuple)):
        try:
            return np.asarray(x)
        except ValueError as err:
            raise ValueError(f"{name}: cannot be read as an array ({err})") from None
    raise TypeError(f"{name}: expected an array (NumPy, PyTorch, CuPy, JAX or a nested list), "
                    f"got {type(x).__name__}")


def as_float32(x, name: str, ndim: int, *, check_finite: bool = True) -> np.ndarray:
    """Array-like of a floating dtype -> C-contiguous float32 array of exactly `ndim` dimensions."""
    a = to_numpy(x, name)
    if a.dtype != np.float32 and a.dtype.name not in FLOAT_DTYPES:  # dtype.name costs 5 us: float32 first
        raise TypeError(f"{name}: expected a floating dtype ({', '.join(FLOAT_DTYPES)}), got {a.dtype}")
    if a.ndim != ndim:
        hint = " (for one query use h[None, :])" if ndim == 2 and a.ndim == 1 else ""
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {a.shape}{hint}")
    if a.dtype != np.float32:
        with np.errstate(over="ignore"):
            a = a.astype(np.float32)
    a = np.ascontiguousarray(a)
    if check_finite and not np.isfinite(a).all():
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise ValueError(f"{name}: contains {bad} NaN or Inf value(s) (after conversion to float32)")
    return a


def as_queries(H, dim: int, name: str = "H") -> np.ndarray:
    """Queries -> (N, dim) float32, N >= 1, all finite."""
    Q = as_float32(H, name, 2)
    if Q.shape[0] == 0:
        raise ValueError(f"{name}: is empty (shape {Q.shape}); pass at least one query")
    if Q.shape[1] != dim:
        raise ValueError(f"{name}: expected shape (N, {dim}) to match the index, got {Q.shape}")
    return Q


def as_labels(y, n: int, n_classes: int, name: str = "labels") -> np.ndarray:
    """Class ids -> (n,) int64, each in [0, n_classes)."""
    a = to_numpy(y, name)
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer dtype, got {a.dtype}")
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name}: expected shape ({n},), got {a.shape}")
    if n and (a.min() < 0 or a.max() >= n_classes):  # in a's own dtype, so a uint64 id past int64 cannot wrap
        raise ValueError(f"{name}: class ids must lie in [0, {n_classes}), got range [{a.min()}, {a.max()}]")
    return a.astype(np.int64)


def check_k(k, n_classes: int) -> int:
    """k must be an int with 1 <= k <= n_classes."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k: expected an int, got {type(k).__name__}")
    if not 1 <= k <= n_classes:
        raise ValueError(f"k: expected 1 <= k <= {n_classes} (the number of classes), got {k}")
    return int(k)


def all_finite(a: np.ndarray, block_bytes: int = 1 << 18) -> bool:
    """np.isfinite(a).all(), block_bytes at a time (see all_blocks)."""
    return all_blocks(a, np.isfinite, block_bytes)


def c_contiguous(a: np.ndarray) -> np.ndarray:
    """a itself when C-contiguous (a np.memmap stays one, so row_blocks reads it through its file), else a
    C-contiguous copy."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def all_blocks(a: np.ndarray, test, block_bytes: int = 1 << 18) -> bool:
    """test(part).all() for every part of a in row_blocks (no temporary grows with a, no page of a memmap
    stays resident)."""
    return all(test(part).all() for _, part in row_blocks(a, block_bytes))


def row_blocks(a: np.ndarray, block_bytes: int = 1 << 18):
    """Yield (lo, a[lo:lo + n]) over a in pieces of whole rows of about block_bytes. A C-contiguous np.memmap
    is read through its file instead of its map, so that none of its pages stay resident in this process."""
    if a.ndim == 0:
        yield 0, a.reshape(1)
        return
    per_row = a.size // len(a) if len(a) else 1
    rows = max(1, block_bytes // max(1, a.itemsize * per_row))
    if not (isinstance(a, np.memmap) and a.filename is not None and a.flags.c_contiguous):
        for lo in range(0, len(a), rows):
            yield lo, a[lo:lo + rows]
        return
    with open(a.filename, "rb") as f:
        f.seek(a.offset)
        for lo in range(0, len(a), rows):
            n = min(rows, len(a) - lo)
            part = np.fromfile(f, a.dtype, n * per_row)
            if part.size != n * per_row:
                raise ValueError(f"arrays: {a.filename} ends before its array does")
            yield lo, part.reshape((n,) + a.shape[1:])
