"""The GPU query engine (CuPy): Index.to("cuda", dtype=...) gives a GpuIndex searched on an NVIDIA GPU."""
from __future__ import annotations

from .index import GpuIndex

_RUNTIMES: dict = {}


def device_id(device: str) -> int:
    """'cuda' -> 0, 'cuda:N' -> N; anything else is a ValueError naming the argument."""
    name, _, number = device.partition(":")
    if name != "cuda" or (number and not number.isdigit()):
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return int(number or 0)


def to_device(index, device: str = "cuda", dtype: str = "float32", runtime=None) -> GpuIndex:
    """index on a GPU (runtime: a CupyRuntime for that GPU, made once per device, unless one is given)."""
    if runtime is None:
        from .runtime import CupyRuntime

        number = device_id(device)
        if number not in _RUNTIMES:
            _RUNTIMES[number] = CupyRuntime(number)
        runtime = _RUNTIMES[number]
    return GpuIndex(index, runtime, dtype)


__all__ = ["GpuIndex", "device_id", "to_device"]
