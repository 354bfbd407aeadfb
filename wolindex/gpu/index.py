"""GpuIndex: an Index whose arrays live on a GPU and whose searches run there."""
from __future__ import annotations

from typing import Any

import numpy as np

from ..arrays import FLOAT_DTYPES, as_queries, check_k
from ..methods import METHODS
from ..rows import check_row_dtype
from . import kernels
from .ops import DeviceOps


def searches_on_gpu(method_cls) -> bool:
    """Whether a method class has a GPU search: one written against the engine operations (search_with, see
    wolindex.methods.ops), which the GPU engine provides on the device."""
    return callable(getattr(method_cls, "search_with", None))


class GpuIndex:
    """A host Index (``.index``) with its layer and method arrays copied to a device; made by
    ``Index.to("cuda", dtype=...)`` or ``wolindex.build(..., device="cuda")``.

    dtype: how class rows are stored and read: 'float32', 'float16' or 'bfloat16' (queries, products and
    scores stay float32; exact search's GEMM runs in the storage dtype with float32 accumulation)."""

    def __init__(self, index, runtime, dtype: str = "float32"):
        check_row_dtype(dtype)
        if not searches_on_gpu(type(index.method)):
            raise ValueError(f"device: method {index.method_name!r} searches on the CPU only; these search on the "
                             f"GPU: {sorted(name for name, cls in METHODS.items() if searches_on_gpu(cls))}")
        if index.layer.square:
            raise ValueError("scoring: spherical layers are searched on the CPU only")
        if index.dim > kernels.DMAX:
            raise ValueError(f"W: the GPU engine handles d <= {kernels.DMAX}, got d = {index.dim}")
        self.index, self.runtime, self.dtype = index, runtime, dtype
        with runtime.device:
            self.ops = DeviceOps(runtime, index, dtype)

    @property
    def method_name(self) -> str:
        return self.index.method_name

    def to(self, device: str = "cpu", dtype: str | None = None):
        """'cpu': the host Index; 'cuda[:N]': a new GpuIndex of it there (in `dtype`, default this one's)."""
        return self.index.to(device, dtype or self.dtype)

    def search(self, H, k: int = 10, *, return_n_scored: bool = False, **settings: Any):
        """As Index.search, on the device: H from CuPy, a torch CUDA tensor (both read in place through
        DLPack) or the host; scores (N, k) float32, labels (N, k) int64 [, n_scored (N,) int64: entries
        scored, a class in two probed buckets counting twice] come back as CuPy arrays, or as torch tensors
        when H was a torch CUDA tensor. k <= 32."""
        k = check_k(k, self.index.n_classes)
        if k > kernels.KMAX:
            raise ValueError(f"k: the GPU engine returns at most {kernels.KMAX} classes, got {k}")
        params = self.index.search_params(**settings)
        with self.runtime.device:
            Q, back = device_queries(self.runtime, H, self.index.dim)
            out = self.index.method.search_with(self.ops, Q, k, params)
        return tuple(back(a) for a in out[:2 + return_n_scored])

    def __repr__(self) -> str:
        return (f"<wolindex.GpuIndex method={self.method_name!r} D={self.index.n_classes} d={self.index.dim} "
                f"dtype={self.dtype!r} on {self.runtime.name}>")


def device_queries(rt, H, dim: int):
    """Queries -> ((N, dim) float32 C-contiguous array on the runtime's device, a function giving results
    back in H's framework). Device arrays are checked there (shape, float dtype, finite)."""
    xp = rt.xp

    def same(a):
        return a

    back = same
    if type(H).__module__.split(".")[0] == "torch" and H.device.type == "cuda":
        import torch

        H = H.detach()
        if H.dtype == torch.bfloat16:
            H = H.float()
        back = torch.from_dlpack
        H = xp.from_dlpack(H)
    if xp is np or not isinstance(H, xp.ndarray):
        return rt.to_device(as_queries(H, dim)), back
    if H.dtype.name not in FLOAT_DTYPES:
        raise TypeError(f"H: expected a floating dtype ({', '.join(FLOAT_DTYPES)}), got {H.dtype}")
    if H.ndim != 2 or H.shape[0] == 0 or H.shape[1] != dim:
        raise ValueError(f"H: expected shape (N, {dim}) with N >= 1, got {H.shape}")
    H = xp.ascontiguousarray(H, dtype=xp.float32)
    if not bool(xp.isfinite(H).all()):
        raise ValueError("H: contains NaN or Inf value(s) (after conversion to float32)")
    return H, back
