"""What the GPU engine asks of a device: an array module, compiled kernels, a GEMM over stored rows, copies.

`CupyRuntime` is the GPU (CuPy arrays, kernels.cu compiled by NVRTC, cuBLAS through gemmEx). The engine
only uses the NumPy-compatible part of CuPy's API, so tests can hand it a runtime built on NumPy and a CPU
emulator of the kernels instead (tests/cuda_emulator)."""
from __future__ import annotations

import contextlib

import numpy as np

from ..rows import float32_to_bfloat16_bits
from . import kernels

NULL = np.uint64(0)              # a null pointer argument
CUDA_R_32F, CUDA_R_16F, CUDA_R_16BF = 0, 2, 14
CUBLAS_COMPUTE_32F = 68
CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
CUBLAS_GEMM_DEFAULT = -1
GEMM_TYPES = {"float32": CUDA_R_32F, "float16": CUDA_R_16F, "bfloat16": CUDA_R_16BF}


def queries_to_storage(xp, H, dtype: str):
    """Float32 queries on the device -> the row storage dtype, for a GEMM against stored rows."""
    if dtype == "float32":
        return H
    if dtype == "float16":
        return H.astype(xp.float16)
    return float32_to_bfloat16_bits(xp, H)


class Runtime:
    """The parts every runtime shares; subclasses set xp (the array module) and name, and provide
    kernel(name) -> callable(grid, block, args) and gemm_nt."""

    name: str
    xp = np
    device = contextlib.nullcontext()   # entered around all work: CuPy's Device makes it current
    _counters = None

    def counters(self, n: int):
        """(n,) uint32 zeros the kernels use to find a row's last block (they leave them zero again)."""
        if self._counters is None or self._counters.shape[0] < n:
            self._counters = self.xp.zeros(max(n, 4096), self.xp.uint32)
        return self._counters[:n]

    def to_device(self, a):
        return self.xp.ascontiguousarray(self.xp.asarray(a))


class CupyRuntime(Runtime):
    """One CUDA device through CuPy."""

    name = "cupy"

    def __init__(self, device_id: int = 0):
        try:
            import cupy
        except ImportError:
            raise ImportError("the GPU engine needs CuPy: pip install cupy-cuda12x (or -cuda13x) on a machine "
                              "with an NVIDIA GPU") from None
        try:
            from cupy_backends.cuda.libs import cublas
        except ImportError:
            from cupy.cuda import cublas
        self.xp, self.cublas = cupy, cublas
        if not 0 <= device_id < cupy.cuda.runtime.getDeviceCount():
            raise ValueError(f"device: no CUDA device {device_id} "
                             f"({cupy.cuda.runtime.getDeviceCount()} visible)")
        self.device = cupy.cuda.Device(device_id)
        with self.device:
            self.module = cupy.RawModule(code=kernels.SOURCE.read_text(), options=("--std=c++17",) + kernels.options())
        self._kernels: dict = {}
        self._one = np.ones(1, np.float32)
        self._zero = np.zeros(1, np.float32)

    def kernel(self, name: str):
        if name not in self._kernels:
            self._kernels[name] = self.module.get_function(name)
        return self._kernels[name]

    def gemm_nt(self, A, B, out, dtype: str) -> None:
        """out (n, m) float32 = A (n, d) @ B (m, d).T, A and B C-contiguous in the storage dtype; float32
        accumulation (no TF32)."""
        n, d = A.shape
        m = B.shape[0]
        kind = GEMM_TYPES[dtype]
        # row-major out = A B^T is column-major out^T = B A^T: B^T is B read as (d, m) column-major, transposed
        self.cublas.gemmEx(self.xp.cuda.device.get_cublas_handle(), CUBLAS_OP_T, CUBLAS_OP_N, m, n, d,
                           self._one.ctypes.data, B.data.ptr, kind, d, A.data.ptr, kind, d,
                           self._zero.ctypes.data, out.data.ptr, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                           CUBLAS_GEMM_DEFAULT)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()
