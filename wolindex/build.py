"""wolindex.build: checks the inputs once, runs a method's builder, wraps the result in an Index."""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

import numpy as np

from ._version import __version__
from .arrays import as_labels, as_queries
from . import format as fmt
from .index import Index, load, save_index
from .layer import OutputLayer
from .methods import METHODS, get_method
from .rows import check_row_dtype

def build(W, b=None, method: str = "exact", *, train=None, labels=None, class_counts=None,
          scoring: str = "logit", epsilon: float = 0.0, dtype: str = "float32", device: str = "cpu",
          save_to=None, verbose: bool = True, **params: Any):
    """Build an index over the output layer ``logits = H @ W.T + b``.

    W: (D, d) array from any framework (or an OutputLayer, then b and class_counts must be None);
    b: (D,) or None for zeros; method: a name in wolindex.METHODS; train: (N, d) sample hidden states and
    labels: (N,) their true class ids, for learned builders that use them (DS; LSS with train_on='labels';
    adaptive's frequencies without class_counts); class_counts: (D,) training frequencies;
    scoring: 'logit' (softmax layers) or 'spherical' (spherical softmax with `epsilon`: classes ranked by
    (w.h + b)^2, and search(..., return_probs=True) available); params: the method's build settings (see
    wolindex.METHODS[method].Build); dtype: how the index stores W's rows, 'float32', 'float16' or
    'bfloat16' (rounded to nearest even; the method is fitted on the rounded rows, and CPU searches return
    the exact float32 scores of the rows as stored); device: 'cpu' (an Index) or 'cuda' / 'cuda:N' (the
    built Index moved to that GPU, its rows in the same dtype: a wolindex.gpu.GpuIndex, whose exact GEMM
    also rounds the queries to that dtype; see Index.to); save_to: a path (as Index.save's) to write the index
    to as it is built, its rows going into the file a block at a time instead of into a copy in memory, and
    to return it from, loaded with mmap=True (for layers near the size of memory)."""
    if not isinstance(device, str) or not (device in ("cpu", "cuda") or device.startswith("cuda:")):
        raise ValueError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if isinstance(W, OutputLayer):
        if b is not None or class_counts is not None or scoring != "logit" or epsilon != 0.0:
            raise ValueError("b / class_counts / scoring / epsilon: pass them inside the OutputLayer, not beside it")
        layer = W.in_class_order()
    else:
        layer = OutputLayer.from_arrays(W, b, class_counts, scoring, epsilon)
    check_row_dtype(dtype)
    method_cls = get_method(method)
    if layer.square and not method_cls.supports_spherical:
        spherical = sorted(name for name, m in METHODS.items() if m.supports_spherical)
        raise ValueError(f"scoring: method {method!r} does not index spherical layers; these do: {spherical}")
    build_params = method_cls.Build.from_dict(params)
    H = None if train is None else as_queries(train, layer.dim, "train")
    y = None
    if labels is not None:
        if H is None:
            raise ValueError("labels: given without train hidden states")
        y = as_labels(labels, H.shape[0], layer.n_classes)
    if save_to is not None:
        fmt.check_save_path(save_to)
    t0 = time.perf_counter()
    # The builder fits the values the index will score, as float32 rows (the caller's own when they round to
    # themselves). The stored copy is made from the caller's rows once that float32 copy is gone, so a build
    # holds at most one copy of W's values besides the caller's.
    fitted = layer.rounded_rows(dtype)
    built = method_cls.build(fitted, build_params, H, y, verbose)
    order = built.storage_order(fitted) if hasattr(built, "storage_order") else None
    if save_to is not None:
        parts = [built.arrays, built.state, built.default_search()]
        del built, fitted          # the fitted float32 copy of 16-bit rows, released before the rows are written
        seconds = time.perf_counter() - t0
        return _saved(save_to, layer, method_cls, parts, order, dtype, build_params, seconds).to(device)
    if order is not None or fitted is not layer or dtype != layer.row_dtype:
        arrays, state = built.arrays, built.state
        del built, fitted
        layer = layer.stored_as(dtype) if order is None else layer.permuted(order, dtype)
        built = method_cls.restore(layer, arrays, state)
    index = Index(layer, built, build_params, built.default_search(), _build_info(time.perf_counter() - t0))
    return index.to(device, dtype)


def _build_info(seconds: float) -> dict[str, Any]:
    return {"build_seconds": seconds, "built_with": f"wolindex {__version__}",
            "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _saved(path, layer: OutputLayer, method_cls, parts: list, order: np.ndarray | None, dtype: str, build_params,
           seconds: float) -> Index:
    """The built method (parts: [its arrays, state, default search], emptied here so that nothing holds the
    arrays once written) over the caller's layer, written to `path` with the rows in `order` and stored in
    `dtype` a block at a time, then loaded back with mmap=True (checked; the SHA-256 just written is not read
    again)."""
    arrays, state, defaults = parts
    parts.clear()
    index = Index(layer, method_cls.restore(layer, arrays, state), build_params, defaults, _build_info(seconds))
    del arrays
    save_index(index, path, order=order, dtype=dtype)
    del index
    return load(path, mmap=True, verify=False)
