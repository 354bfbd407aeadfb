"""Names of the CPU engines and candidate paths, and the engines' query block: plain constants (no Numba),
so that the settings classes (params.py) and the methods can use them without loading the kernels."""
from __future__ import annotations

ENGINES = ("numba", "numpy")
PATHS = ("auto", "fused", "grouped")
QUERY_BLOCK = 4096   # queries per engine call (kernel launch, GEMM, search step): bounds memory for any N
SCREEN_MAX_QUADS = (2**31 - 1) // (255 * 127 * 4)   # coded dimensions / 4 whose integer sums fit int32


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
