"""Run wolindex's CUDA kernels on the CPU: kernels.cu compiled by g++ against shim.h (see there), called
with NumPy arrays in CuPy RawKernel's convention, kernel(grid, block, args). A test tool: slow (a fiber per
CUDA thread, blocks one after another), meant for small inputs; it checks logic and barrier discipline,
not speed or the memory model."""
from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np

from wolindex.gpu import kernels
from wolindex.gpu.runtime import Runtime
from wolindex.rows import storage_to_float32

HERE = Path(__file__).parent


def compiler() -> str | None:
    """The g++ to build the emulator with, or None when there is none."""
    return shutil.which("g++")


def build(folder: Path, kmax: int = kernels.KMAX) -> ctypes.CDLL:
    """Compile kernels.cu with the shim into folder (reused while the sources and constants are unchanged) and
    load it. The kernels' constants come from wolindex.gpu.kernels as -D options, as CuPy passes them to
    NVRTC (kmax: WOL_KMAX, for tests of a smaller selection limit)."""
    source = kernels.SOURCE.read_text()
    wrappers = "".join(
        f'extern "C" int emu_{name}(unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, '
        f"void** args) {{ return emu_launch({name}, dim3{{gx, gy, gz}}, dim3{{bx, by, bz}}, args); }}\n"
        for name in kernels.KERNELS)
    text = f'#include "{HERE / "shim.h"}"\n#include "{kernels.SOURCE}"\n{wrappers}'
    defines = list(kernels.options(WOL_KMAX=kmax))
    tag = hashlib.sha256((text + source + (HERE / "shim.h").read_text() + " ".join(defines)).encode()).hexdigest()[:16]
    lib = folder / f"emulated-{tag}.so"
    if not lib.exists():
        cpp = folder / f"emulated-{tag}.cpp"
        cpp.write_text(text)
        subprocess.run([compiler() or "g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w", *defines,
                        "-o", str(lib), str(cpp)], check=True)
    return ctypes.CDLL(str(lib))


def _slot(value):
    """ctypes storage holding one kernel argument's value."""
    if isinstance(value, np.ndarray):
        return ctypes.c_void_p(value.ctypes.data)
    kinds = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
             np.dtype(np.uint64): ctypes.c_uint64, np.dtype(np.float32): ctypes.c_float}
    if isinstance(value, np.generic) and value.dtype in kinds:
        return kinds[value.dtype](value.item())
    raise TypeError(f"kernel argument: expected an ndarray or a numpy int32/int64/uint64/float32, got {value!r}")


class EmulatedKernel:
    def __init__(self, lib: ctypes.CDLL, name: str):
        self.name = name
        self.fn = getattr(lib, f"emu_{name}")
        self.fn.restype = ctypes.c_int

    def __call__(self, grid, block, args):
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        slots = [_slot(a) for a in args]
        pointers = (ctypes.c_void_p * len(slots))(*[ctypes.addressof(s) for s in slots])
        status = self.fn(*(ctypes.c_uint(int(x)) for x in grid + block), pointers)
        if status:
            raise RuntimeError(f"{self.name}: " + ("block size must be a positive multiple of 32" if status == 1 else
                                                   "deadlocked: some threads wait at a barrier the others never reach"))


class EmulatedRuntime(Runtime):
    """The GPU engine's runtime on NumPy arrays and emulated kernels (GEMMs by NumPy in float32)."""

    name = "emulator"

    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib

    def kernel(self, name: str) -> EmulatedKernel:
        return EmulatedKernel(self.lib, name)

    def gemm_nt(self, A, B, out, dtype: str) -> None:
        out[...] = storage_to_float32(np, A, dtype) @ storage_to_float32(np, B, dtype).T


def nvrtc_library() -> ctypes.CDLL | None:
    """NVRTC from the nvidia-cuda-nvrtc-cu12 wheel (it needs no GPU), or None when it is not installed."""
    try:
        import nvidia.cuda_nvrtc
    except ImportError:
        return None
    lib = Path(list(nvidia.cuda_nvrtc.__path__)[0]) / "lib" / "libnvrtc.so.12"
    return ctypes.CDLL(str(lib)) if lib.exists() else None


def nvrtc_compile(lib: ctypes.CDLL, source: bytes, options: list[bytes]) -> tuple[int, str, str]:
    """Compile CUDA source to PTX as CuPy's RawModule would: (status, log, ptx). options: all of them, the
    kernels' -D constants (kernels.options()) included."""
    prog = ctypes.c_void_p()
    if lib.nvrtcCreateProgram(ctypes.byref(prog), source, b"kernels.cu", 0, None, None):
        raise RuntimeError("nvrtcCreateProgram failed")
    try:
        status = lib.nvrtcCompileProgram(prog, len(options), (ctypes.c_char_p * len(options))(*options))
        size = ctypes.c_size_t()
        lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        lib.nvrtcGetProgramLog(prog, log)
        ptx = b""
        if status == 0:
            lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
            buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(prog, buf)
            ptx = buf.value
        return status, log.value.decode(errors="replace"), ptx.decode(errors="replace")
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
