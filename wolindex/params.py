"""Build and search settings as dataclasses with to_dict / from_dict (PECOS style).

Every method declares a BuildParams and a SearchParams subclass; unknown or ill-typed settings are
rejected with an error naming the setting."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .engine.dispatch import PATHS, check_engine


@dataclass(frozen=True)
class Params:
    """Base of all settings classes."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None = None, **more: Any):
        """Settings from a dict (and keyword overrides); raises TypeError naming an unknown setting."""
        values = {**(values or {}), **more}
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise TypeError(f"{cls.__qualname__}: unknown setting(s) {unknown}; expected some of {names}")
        params = cls(**values)
        params.validate()
        return params

    def replace(self, **changes: Any):
        return type(self).from_dict(self.to_dict(), **changes)

    def validate(self) -> None:
        """Raise ValueError / TypeError for settings out of range; subclasses extend this."""


def check_int(name: str, value, low: int, high: int | None = None) -> None:
    """value must be an int in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}: expected an int {rng}, got {value}")


def check_number(name: str, value, allow_zero: bool = False) -> None:
    """value must be a real number > 0 (>= 0 with allow_zero); NaN is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not (value >= 0 if allow_zero else value > 0):
        raise ValueError(f"{name}: expected a number {'>=' if allow_zero else '>'} 0, got {value}")


@dataclass(frozen=True)
class BuildParams(Params):
    """Base of every builder's settings (the exact method has none)."""


@dataclass(frozen=True)
class SearchParams(Params):
    """Settings shared by every search. engine: 'numba' (fast) or 'numpy' (slow reference)."""

    engine: str = "numba"

    def validate(self) -> None:
        check_engine(self.engine)


@dataclass(frozen=True)
class CandidateSearchParams(SearchParams):
    """Search settings of methods that score candidate buckets.

    path: 'fused' (one pass per query), 'grouped' (queries sharing a bucket scored together) or 'auto'."""

    path: str = "auto"

    def validate(self) -> None:
        super().validate()
        if self.path not in PATHS:
            raise ValueError(f"path: expected one of {PATHS}, got {self.path!r}")
