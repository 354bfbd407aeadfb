"""The contract between builders and the Index."""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ..arrays import all_blocks, all_finite, c_contiguous
from ..engine import Buckets, PackedRows
from ..layer import OutputLayer
from ..params import BuildParams, SearchParams, check_int
from .ops import HostOps


def check_array(arrays: dict[str, np.ndarray], name: str, dtype, shape: tuple, finite: bool = True) -> np.ndarray:
    """arrays[name], which must exist, have exactly `dtype` (native byte order) and `shape` (None: any length
    on that axis) and, for floating arrays with finite=True, hold no NaN or Inf. A loaded file's arrays pass
    through here before any kernel reads them; returns the array."""
    a = arrays.get(name)
    if not isinstance(a, np.ndarray):
        raise ValueError(f"arrays: {name} is missing")
    if a.dtype != np.dtype(dtype) or not a.dtype.isnative:
        raise ValueError(f"arrays: {name} must be {np.dtype(dtype)}, got {a.dtype.str}")
    if a.ndim != len(shape) or any(want is not None and got != want for got, want in zip(a.shape, shape)):
        want = tuple("*" if s is None else s for s in shape)
        raise ValueError(f"arrays: {name} must have shape {want}, got {a.shape}")
    if finite and a.dtype.kind == "f" and not all_finite(a):
        raise ValueError(f"arrays: {name} holds NaN or Inf")
    return a


def check_state_int(state: dict[str, Any], name: str, low: int, high: int | None = None) -> int:
    """state[name], which must be there and be an int in [low, high] (a loaded file's JSON)."""
    if name not in state:
        raise ValueError(f"state: {name} is missing")
    return check_int(f"state: {name}", state[name], low, high)


SCREEN_ARRAYS = ("screen_blocks", "screen_scale", "screen_mean")   # a bucket method's optional int8 codes
SCREEN_GRID = (16, 32)   # classes rescored after the screen, in tuning grids


def doubling(start: int, stop: int) -> list[int]:
    """[start, 2 start, 4 start, ... (those below stop), stop], or [] when start >= stop."""
    values = []
    while start < stop:
        values.append(start)
        start *= 2
    return values + [stop] if values else []


class Method:
    """One builder + its search. Subclasses set `name`, `Build`, `Search` and implement build / search.

    A built method is plain data: `arrays` (name -> np.ndarray) and `state` (JSON-able dict), which is
    all that is saved; `restore` rebuilds it from them without running any code from the file."""

    name: ClassVar[str]
    Build: ClassVar[type[BuildParams]] = BuildParams
    Search: ClassVar[type[SearchParams]] = SearchParams
    supports_spherical: ClassVar[bool] = False   # whether search honours layer.square (rank by o^2)

    def __init__(self, arrays: dict[str, np.ndarray] | None = None, state: dict[str, Any] | None = None):
        for name, value in (("arrays", arrays), ("state", state)):
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"{name}: expected a dict, got {type(value).__name__}")
        self.arrays = dict(arrays or {})
        self.state = dict(state or {})

    @classmethod
    def build(cls, layer: OutputLayer, params: BuildParams, train: np.ndarray | None,
              labels: np.ndarray | None, verbose: bool) -> "Method":
        """Learn the structure. train: (N, d) float32 or None; labels: (N,) int64 or None."""
        raise NotImplementedError

    @classmethod
    def restore(cls, layer: OutputLayer, arrays: dict[str, np.ndarray], state: dict[str, Any]) -> "Method":
        """The built method from its saved arrays and state (and the layer it indexes)."""
        return cls(arrays, state)

    def search(self, layer: OutputLayer, H: np.ndarray, k: int, params: SearchParams):
        """H (N, d) float32 -> scores (N, k) float32, labels (N, k) int64, n_scored (N,) int64. A method that
        defines search_with(ops, H, k, params), the one search both engines run, gets it here on the host's
        operations (the GPU engine calls it with its DeviceOps)."""
        if not hasattr(self, "search_with"):
            raise NotImplementedError
        return self.search_with(HostOps(layer, self, params.engine), H, k, params)

    def default_search(self) -> dict[str, Any]:
        """Search settings this index starts with where the Search class's defaults do not fit it (a small
        index's bounds); the Index keeps them as its defaults."""
        return {}

    def tuning_grid(self, k: int) -> list[dict[str, Any]]:
        """Search settings Index.tune tries, as dicts of overrides (methods without settings: one, empty)."""
        return [{}]

    def wider_grid(self, k: int) -> list[dict[str, Any]]:
        """Settings beyond tuning_grid, up to the most exact the method gets, that Index.tune tries when no
        setting of tuning_grid meets its target (default: none)."""
        return []

    def nbytes(self) -> int:
        """Bytes of the method's own arrays (the layer not included)."""
        return int(sum(a.nbytes for a in self.arrays.values()))


class BucketMethod(Method):
    """A method whose index is buckets of classes (CSR `indptr`, `indices` among its arrays), checked on
    construction. Their rows are the layer's own, read through `packed` (no copy); an Index stores the layer
    in `storage_order`, which makes each bucket a contiguous range of rows where a class's first bucket is.
    Subclasses construct with (layer, arrays, state), call this __init__ first, then check their own arrays."""

    def __init__(self, layer: OutputLayer, arrays: dict[str, np.ndarray] | None = None,
                 state: dict[str, Any] | None = None):
        super().__init__(arrays, state)
        self.check_arrays({"indptr": (np.int64, (None,)), "indices": (np.int32, (None,))}, others=None)
        indptr, indices = self.arrays["indptr"], self.arrays["indices"]
        if np.any(indptr < 0) or np.any(indptr > indices.shape[0]):   # no int64 wrap-around in validate
            raise ValueError(f"arrays: indptr values must lie in [0, {indices.shape[0]}] (the length of indices)")
        self.buckets = Buckets(indptr, indices)
        self.buckets.validate(layer.n_classes)
        self.packed = PackedRows(layer.W, layer.b, np.ascontiguousarray(layer.rows_of(indices), dtype=np.int32))
        self.screen_codes = self._screen_codes(layer) if SCREEN_ARRAYS[0] in self.arrays else None

    @classmethod
    def restore(cls, layer, arrays, state):
        return cls(layer, arrays, state)

    def storage_order(self, layer: OutputLayer) -> np.ndarray:
        """(D,) int64: the layer's rows in bucket order, each class where its first bucket holds it (then any
        class no bucket holds), for Index to store the layer in (OutputLayer.permuted)."""
        classes = self.buckets.indices
        _, first = np.unique(classes, return_index=True)
        held = np.zeros(layer.n_classes, bool)
        held[classes] = True
        order = np.concatenate([classes[np.sort(first)], np.flatnonzero(~held)])
        return layer.rows_of(order).astype(np.int64)

    def duplication(self) -> float:
        """Bucket entries per class (1 for a partition): the rows a copy packed bucket by bucket would hold,
        per row of W. Here a class's later entries read its one row (gathered, not streamed)."""
        return self.buckets.indices.size / self.packed.W.shape[0]

    @staticmethod
    def screen_arrays(layer: OutputLayer, buckets: Buckets) -> dict[str, np.ndarray]:
        """The arrays of the buckets' int8 screening codes (engine.screen.BucketCodes), for a builder to add
        to its own when asked to (build setting screen=True)."""
        from ..engine.screen import BucketCodes

        codes = BucketCodes.encode(layer.W, layer.b, buckets)
        return dict(zip(SCREEN_ARRAYS, (codes.blocks, codes.class_scale, codes.mean)))

    def _screen_codes(self, layer: OutputLayer):
        """The screening codes from the method's checked screen arrays."""
        from ..engine.screen import BucketCodes

        D, d = layer.W.shape
        n_blocks = int((-(-self.buckets.sizes() // 16)).sum())
        for name, (dtype, shape) in zip(SCREEN_ARRAYS, ((np.int8, (n_blocks, max(1, -(-d // 4)), 64)),
                                                        (np.float32, (D,)), (np.float32, (d,)))):
            self.arrays[name] = c_contiguous(check_array(self.arrays, name, dtype, shape))
        blocks, scale, mean = (self.arrays[name] for name in SCREEN_ARRAYS)
        if not all_blocks(blocks, lambda part: part != -128) or (scale < 0).any():
            raise ValueError("arrays: screen_blocks must hold codes in [-127, 127] and screen_scale be >= 0")
        return BucketCodes(blocks, scale, mean, self.buckets, layer.class_b())

    def screened(self, grid: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A tuning grid, and with screening codes each of its settings with screen=n for n in SCREEN_GRID
        as well (the routing setting and the number rescored chosen together)."""
        if self.screen_codes is None:
            return grid
        return grid + [{**g, "screen": n} for g in grid for n in SCREEN_GRID]

    def check_arrays(self, specs: dict[str, tuple],
                     others: tuple | None = ("indptr", "indices", *SCREEN_ARRAYS)) -> None:
        """Check arrays with check_array: specs maps each name to its (dtype, shape); every name must be there
        and match, and (unless others is None) any name outside specs and others is refused. Checked arrays
        are kept C-contiguous (a copy only for a strided array), the layout the kernels are compiled for."""
        if others is not None:
            extra = sorted(str(name) for name in set(self.arrays) - set(specs) - set(others))
            if extra:
                raise ValueError(f"arrays: unexpected {extra} for method {self.name!r}")
        for name, (dtype, shape) in specs.items():
            self.arrays[name] = c_contiguous(check_array(self.arrays, name, dtype, shape))

    def nbytes(self) -> int:
        """Saved arrays plus each bucket entry's row id (and the screen's per-slot terms); the rows themselves
        are the layer's."""
        extra = 0 if self.screen_codes is None else self.screen_codes.nbytes() - self.screen_codes.blocks.nbytes - \
            self.screen_codes.class_scale.nbytes
        return super().nbytes() + self.packed.row_of.nbytes + extra
