"""The CUDA source of the GPU engine (kernels.cu beside this file), the names of its kernels, and the
constants it is compiled with: defined here only, and handed to every compiler (NVRTC through CuPy, the
tests' g++ emulator) as -D options by `options()`; kernels.cu refuses to compile without them."""
from pathlib import Path

SOURCE = Path(__file__).with_name("kernels.cu")
THREADS = 256                   # threads per block of every kernel (a multiple of 32)
KMAX = 32                       # the largest k the kernels select (at most THREADS)
DMAX = 4096                     # the largest dimension of the fused kernel (its query lives in shared memory)
TILE_ROWS = 64                  # the tile kernel's block: TILE_ROWS rows x TILE_QUERIES queries, which its
TILE_QUERIES = 32               # 16 x 16 threads cover as 4 x 2 each (so THREADS = 256 there)
ROW_TYPES = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}   # row storage -> kernel suffix
KERNELS = ["topk_rows"] + [f"{kind}_candidates_{suffix}" for kind in ("fused", "tile")
                           for suffix in ROW_TYPES.values()]


def defines(**overrides: int) -> dict[str, int]:
    """The kernels' compile-time constants by their CUDA names (WOL_...); overrides by the same names (the
    emulator's tests use a smaller WOL_KMAX)."""
    values = {"WOL_THREADS": THREADS, "WOL_KMAX": KMAX, "WOL_DMAX": DMAX, "WOL_TILE_ROWS": TILE_ROWS,
              "WOL_TILE_QUERIES": TILE_QUERIES}
    unknown = set(overrides) - set(values)
    if unknown:
        raise ValueError(f"overrides: unknown kernel constant(s) {sorted(unknown)}; known: {sorted(values)}")
    return {**values, **overrides}


def options(**overrides: int) -> tuple[str, ...]:
    """defines() as compiler options: ('-DWOL_THREADS=256', ...)."""
    return tuple(f"-D{name}={value}" for name, value in defines(**overrides).items())
