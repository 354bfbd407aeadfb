"""Build and search settings as dataclasses with to_dict / from_dict (PECOS style).

Every method declares a BuildParams and a SearchParams subclass; unknown or ill-typed settings are
rejected with an error naming the setting."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .engine.names import PATHS, check_engine


@dataclass(frozen=True)
class Params:
    """Base of all settings classes. ALIASES: other names a setting is accepted under (alias -> name), such
    as FAISS's own names."""

    ALIASES: ClassVar[dict[str, str]] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None = None, **more: Any):
        """Settings from a dict (and keyword overrides); raises TypeError naming an unknown setting. NumPy
        scalars become the Python int / float / bool / str they hold, so to_dict() stays JSON-serialisable."""
        if values is not None and not isinstance(values, dict):
            raise TypeError(f"values: expected a dict of settings, got {type(values).__name__}")
        values = {name: _plain(v) for name, v in {**cls._canonical(values or {}), **cls._canonical(more)}.items()}
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise TypeError(f"{cls.__qualname__}: unknown setting(s) {unknown}; expected some of {names}")
        params = cls(**values)
        params.validate()
        return params

    @classmethod
    def _canonical(cls, values: dict[str, Any]) -> dict[str, Any]:
        """values with each alias replaced by the setting's name (TypeError when both are given)."""
        out = dict(values)
        for alias, name in cls.ALIASES.items():
            if alias in out:
                if name in out:
                    raise TypeError(f"{name}: given twice, also as its alias {alias!r}")
                out[name] = out.pop(alias)
        return out

    def replace(self, **changes: Any):
        return type(self).from_dict(self.to_dict(), **changes)

    def validate(self) -> None:
        """Raise ValueError / TypeError for settings out of range; subclasses extend this."""


def _plain(value):
    """A NumPy scalar as the Python value it holds (a float for every floating type); anything else as is."""
    if isinstance(value, np.floating):
        return float(value)
    return value.item() if isinstance(value, np.generic) else value


def _show(value) -> str:
    """value for an error message: its repr, cut to 60 characters (ints of any size)."""
    try:
        text = repr(value)
    except ValueError:                          # an int past Python's digit limit for str()
        text = f"an int of {value.bit_length()} bits"
    return text if len(text) <= 60 else text[:57] + "..."


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """value must be an int or NumPy integer (not a bool) in [low, high]; returns it as an int."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}: expected an int {rng}, got {_show(value)}")
    return int(value)


def check_number(name: str, value, allow_zero: bool = False, signed: bool = False) -> float:
    """value must be a finite real number (int, float or NumPy scalar, not a bool; NaN and Inf are refused)
    > 0 (>= 0 with allow_zero; of any sign with signed); returns it as a float."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError:                       # an int beyond the float range
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{name}: expected a finite number, got {_show(value)}")
    if not (signed or (number >= 0 if allow_zero else number > 0)):
        raise ValueError(f"{name}: expected a number {'>=' if allow_zero else '>'} 0, got {_show(value)}")
    return number


@dataclass(frozen=True)
class BuildParams(Params):
    """Base of every builder's settings (the exact method has none)."""


@dataclass(frozen=True)
class BucketBuildParams(BuildParams):
    """Build settings every bucket method has. screen: also store int8 screening codes of the buckets' rows,
    so that searches can take screen=n (see CandidateSearchParams)."""

    screen: bool = False

    def validate(self) -> None:
        if not isinstance(self.screen, bool):
            raise TypeError(f"screen: expected a bool, got {type(self.screen).__name__}")


@dataclass(frozen=True)
class SearchParams(Params):
    """Settings shared by every search. engine: 'numba' (fast) or 'numpy' (slow reference)."""

    engine: str = "numba"

    def validate(self) -> None:
        check_engine(self.engine)


@dataclass(frozen=True)
class CandidateSearchParams(SearchParams):
    """Search settings of methods that score candidate buckets.

    path: 'fused' (one pass per query), 'grouped' (queries sharing a bucket scored together) or 'auto';
    screen: 0 scores every class of the probed buckets exactly; n > 0 screens them with the index's int8 codes
    (built with screen=True) and rescores the n best exactly."""

    path: str = "auto"
    screen: int = 0

    def validate(self) -> None:
        super().validate()
        if self.path not in PATHS:
            raise ValueError(f"path: expected one of {PATHS}, got {self.path!r}")
        check_int("screen", self.screen, 0)
