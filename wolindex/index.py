"""Index: a built method over an output layer, with search / save / load / stats.

The files themselves (meta.json, arrays, checksums, atomic writes) are format.py's; this module turns an
Index into them and back."""
from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from . import format as fmt
from .arrays import as_queries, check_k
from .engine.blas import before_search
from .layer import OutputLayer
from .rows import STORED_AS, as_float32_rows, gathered_blocks
from .methods import Method, get_method
from .params import BuildParams

PARAMS_CACHE = 64   # distinct settings whose checked form an Index keeps


class Index:
    """A searchable (W, b). Holds host arrays and metadata only; searching never changes it.

    Build one with wolindex.build, or load one with wolindex.load."""

    def __init__(self, layer: OutputLayer, method: Method, build_params: BuildParams,
                 default_search: dict[str, Any] | None = None, info: dict[str, Any] | None = None):
        self.layer = layer
        self.method = method
        self.build_params = build_params
        self.default_search = type(method).Search.from_dict(default_search).to_dict()
        self.info = dict(info or {})
        self._search_params: dict[tuple, Any] = {}   # checked settings by (defaults, overrides), see search_params

    @property
    def method_name(self) -> str:
        return type(self.method).name

    @property
    def n_classes(self) -> int:
        return self.layer.n_classes

    @property
    def dim(self) -> int:
        return self.layer.dim

    def search_params(self, **settings: Any):
        """The settings a search with these keyword overrides would use (the index defaults otherwise)."""
        key = tuple((name, type(v), v) for name, v in self.default_search.items()) + \
            (None,) + tuple((name, type(v), v) for name, v in settings.items())
        try:
            params = self._search_params.get(key)
        except TypeError:                           # an unhashable setting: checked afresh every time
            return type(self.method).Search.from_dict(self.default_search, **settings)
        if params is None:
            params = type(self.method).Search.from_dict(self.default_search, **settings)
            if len(self._search_params) >= PARAMS_CACHE:
                self._search_params.clear()
            self._search_params[key] = params
        return params

    def search(self, H, k: int = 10, *, return_n_scored: bool = False, return_probs: bool = False,
               return_logprobs: bool | str = False, **settings: Any):
        """Top-k classes of each query, by exact logit ``w_c . h + b_c`` (by its square on spherical layers).

        H: (N, d) array from any framework, any float dtype (computed in float32); k: 1 <= k <= D;
        settings: the method's search settings for this call (see ``search_params``); without any, the
        index's defaults, or exact search when tune() found it faster (stats()["tuned"]["search_exactly"]).
        Returns scores (N, k) float32 and labels (N, k) int64, each row best first (ties: smaller id
        first), padded with -inf / -1 when a method finds fewer than k candidates; then, when asked,
        n_scored (N,) int64, the classes scored per query, probs (N, k) float64, the exact
        spherical-softmax probabilities of the returned classes (spherical layers only; 0 for padding), and
        logprobs (N, k) float64, their log-probabilities under the softmax over all D classes (-inf for
        padding), its normaliser estimated (return_logprobs=True, see wolindex.sampling.log_normaliser) or
        exact (return_logprobs='exact': one more pass over every class)."""
        Q = as_queries(H, self.dim)
        k = check_k(k, self.n_classes)
        self._check_no_overflow(Q)
        if return_probs and not self.layer.square:
            raise ValueError("return_probs: only spherical layers (scoring='spherical') have exact probabilities "
                             "without scoring every class")
        before_search(Q.shape[0])
        if not settings and self.info.get("tuned", {}).get("search_exactly"):
            scores, labels, n_scored = self._exact(Q, k)
        else:
            scores, labels, n_scored = self.method.search(self.layer, Q, k, self.search_params(**settings))
        out = (scores, labels) + ((n_scored,) if return_n_scored else ())
        out = out + ((self.layer.spherical_probs(Q, scores),) if return_probs else ())
        if return_logprobs is not False:
            from .sampling import logprobs

            out = out + (logprobs(self, Q, scores, labels, return_logprobs),)
        return out

    def search_exact(self, H, k: int = 10):
        """Exact top-k of every class, whatever the method: scores (N, k) float32, labels (N, k) int64."""
        Q = as_queries(H, self.dim)
        k = check_k(k, self.n_classes)
        self._check_no_overflow(Q)
        return self._exact(Q, k)[:2]

    def _exact(self, Q: np.ndarray, k: int):
        from .engine import exact_topk

        layer = self.layer
        scores, labels = exact_topk(layer.W, layer.b, Q, k, square=layer.square, labels=layer.row_class)
        return scores, labels, np.full(Q.shape[0], self.n_classes, np.int64)

    @cached_property
    def _logit_bound(self) -> tuple[float, float]:
        """(max over classes of sum_j |W_cj|, max |b_c|) in float64: |w_c . h + b_c| <= |h|_inf * first + second."""
        W = self.layer.W
        rows = max(1, (1 << 22) // W.shape[1])
        l1 = max(float(np.abs(as_float32_rows(W[lo:lo + rows])).sum(axis=1, dtype=np.float64).max())
                 for lo in range(0, len(W), rows))
        return l1, float(np.abs(self.layer.b).max())

    def _check_no_overflow(self, Q: np.ndarray) -> None:
        """ValueError when float32 scores of Q could overflow (every engine then agrees: no score is +-inf or NaN)."""
        h_max = max(float(Q.max()), -float(Q.min()))
        l1, b_max = self._logit_bound
        bound = h_max * l1 + b_max
        limit = float(np.finfo(np.float32).max) / 2
        if bound > (np.sqrt(limit) if self.layer.square else limit):
            raise ValueError(f"H: entries up to {h_max:.3g} in absolute value can overflow float32 in w_c . h + b_c"
                             f"{' squared' if self.layer.square else ''} (|h|_inf * max_c |w_c|_1 + max |b| = "
                             f"{bound:.3g}); rescale the queries or the layer")

    def to(self, device: str = "cuda", dtype: str | None = None):
        """This index on `device`: 'cpu' gives itself; 'cuda' or 'cuda:N' a wolindex.gpu.GpuIndex searched on
        that NVIDIA GPU (needs CuPy), its rows stored in dtype 'float32', 'float16' or 'bfloat16' (None: as
        this index stores them)."""
        if device == "cpu":
            return self
        from .gpu import to_device

        return to_device(self, device, dtype or self.layer.row_dtype)

    def tune(self, H_val, k: int = 10, **options: Any) -> dict[str, Any]:
        """Make the cheapest search setting that meets a target on held-out queries the default:
        ``index.tune(H_val, target_p1=0.99)`` or ``index.tune(H_val, target_recall=0.30, labels=y_val)``.
        See wolindex.tune.tune for the options; the report is returned and kept in stats()."""
        from .tune import tune

        return tune(self, H_val, k, **options)

    def save(self, path, with_layer: bool = True) -> None:
        """Write the index to a folder, or to a single uncompressed zip when path ends in .zip or .wol;
        with_layer=False leaves out W and b (then wolindex.load needs layer=...)."""
        save_index(self, path, with_layer)

    def nbytes(self) -> int:
        """Bytes held by the index: the layer plus the method's arrays (resident or memory-mapped)."""
        return sum(a.nbytes for a in self._layer_arrays()) + self.method.nbytes()

    def mapped_nbytes(self) -> int:
        """The part of nbytes() in arrays memory-mapped from an index file (load(mmap=True)): the system pages
        them in as searches read them, and can drop them again."""
        return sum(a.nbytes for a in self._layer_arrays() + list(self.method.arrays.values()) if _is_mapped(a))

    def _layer_arrays(self) -> list[np.ndarray]:
        layer = self.layer
        return [a for a in (layer.W, layer.b, layer.class_counts, layer.row_class) if a is not None]

    def stats(self, H=None, k: int = 10, **settings: Any) -> dict[str, Any]:
        """Sizes, settings and build information; with sample queries H, also the mean number of classes
        scored per query under the given (or default) search settings."""
        out = {
            "method": self.method_name,
            "n_classes": self.n_classes,
            "dim": self.dim,
            "row_dtype": self.layer.row_dtype,
            "index_bytes": self.nbytes(),
            "mapped_bytes": self.mapped_nbytes(),
            "resident_bytes": self.nbytes() - self.mapped_nbytes(),
            "method_bytes": self.method.nbytes(),
            "index_bytes_over_W_bytes": self.nbytes() / (4 * self.n_classes * self.dim),   # W in float32
            "build_params": self.build_params.to_dict(),
            "default_search": dict(self.default_search),
            **self.info,
        }
        if H is not None:
            _, _, n_scored = self.search(H, k, return_n_scored=True, **settings)
            out["candidates_per_query"] = float(np.mean(n_scored))
            out["candidates_fraction"] = out["candidates_per_query"] / self.n_classes
        return out

    def __repr__(self) -> str:
        return f"<wolindex.Index method={self.method_name!r} D={self.n_classes} d={self.dim}>"


def _is_mapped(a: np.ndarray) -> bool:
    """Whether a is (a view of) a np.memmap."""
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = a.base if isinstance(a.base, np.ndarray) else None
    return False


def save_index(index: Index, path, with_layer: bool = True, order: np.ndarray | None = None,
               dtype: str | None = None) -> None:
    """Write `index` to `path` atomically: a zip if path ends in .zip / .wol, else a folder.

    with_layer=False leaves W, b and class_counts out (the method's arrays only, with the layer's SHA-256):
    load then needs the same layer passed in. order (D,) and dtype: write the layer as
    index.layer.permuted(order, dtype) (order None: stored_as(dtype)) would store it, its rows gathered and
    converted into the file a block at a time (wolindex.build's save_to: the stored rows are never all in
    memory). Only a wolindex index of the same kind, or an empty folder, is replaced (format.write_index
    checks the path first); temporaries of earlier killed saves of `path` are removed."""
    if not isinstance(with_layer, bool):
        raise TypeError(f"with_layer: expected a bool, got {type(with_layer).__name__}")
    layer = index.layer
    W, b, row_class, row_dtype = layer.W, layer.b, layer.row_class, layer.row_dtype
    if order is not None or dtype not in (None, row_dtype):
        row_dtype = dtype or row_dtype
        rows = np.arange(layer.n_classes) if order is None else order
        W = fmt.ArrayInBlocks(layer.W.shape, np.dtype(STORED_AS[row_dtype]),
                              lambda: gathered_blocks(layer.W, rows, row_dtype))
        if order is not None:
            b, row_class = layer.b[order], layer.permuted_row_class(order)
    arrays = {"layer.W": W, "layer.b": b} if with_layer else {}
    if with_layer and layer.class_counts is not None:
        arrays["layer.class_counts"] = layer.class_counts
    if row_class is not None:
        arrays["layer.row_class"] = row_class
    for name, a in index.method.arrays.items():
        arrays[f"method.{name}"] = a
    fields = {
        "method": index.method_name,
        "build_params": index.build_params.to_dict(),
        "default_search": index.default_search,
        "method_state": index.method.state,
        "info": index.info,
        "n_classes": index.n_classes,
        "dim": index.dim,
        "scoring": layer.scoring,
        "epsilon": layer.epsilon,
        "layer": "included" if with_layer else "external",
        **({} if row_dtype == "float32" else {"row_dtype": row_dtype}),
        **({} if with_layer else {"layer_sha256": fmt.layer_fingerprint(layer.stored_as(row_dtype))}),
    }
    fmt.write_index(path, arrays, fields)


def load(path, mmap: bool = False, verify: bool = True, layer: OutputLayer | None = None) -> Index:
    """Read an index written by Index.save. mmap=True maps arrays read-only instead of reading them;
    verify=False skips the SHA-256 checks (which read every byte once); layer: the OutputLayer of an index
    saved with_layer=False (its fingerprint is checked unless verify=False)."""
    store = fmt.open_store(path)
    meta = fmt.read_meta(store, verify)
    method_cls = get_method(meta["method"])
    arrays = fmt.read_arrays(store, meta, mmap, verify)
    layer = fmt.read_layer(arrays, meta, store.path, verify, layer)
    method = method_cls.restore(layer, {n[len("method."):]: a for n, a in arrays.items() if n.startswith("method.")},
                                meta["method_state"])
    build_params = method_cls.Build.from_dict(meta["build_params"])
    return Index(layer, method, build_params, meta["default_search"], meta["info"])
