"""Names of the CPU engines and candidate paths: plain constants (no Numba), so that the settings classes
(params.py) can check them without loading the kernels."""
from __future__ import annotations

ENGINES = ("numba", "numpy")
PATHS = ("auto", "fused", "grouped")


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ValueError(f"engine: expected one of {ENGINES}, got {engine!r}")
