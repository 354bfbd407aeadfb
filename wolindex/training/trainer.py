"""wolindex.train: SGD on an output layer with sparse targets, factored (O(d^2) per example) or naive."""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..arrays import as_queries, to_numpy
from ..layer import OutputLayer
from ..params import check_int, check_number
from .layers import FactoredLayer, NaiveLayer
from .losses import check_loss

ALGORITHMS = ("factored", "naive")
DTYPES = {"float32": np.float32, "float64": np.float64}


@dataclass
class TrainResult:
    """W (D, d) and b (D,) float32 after training; history: one dict per epoch (loss, seconds, refactors)."""

    W: np.ndarray
    b: np.ndarray
    history: list = field(default_factory=list)


def sparse_targets(targets, values, n_rows: int, n_classes: int):
    """targets (N,) or (N, K) class ids (-1 for none, repeats allowed) and values (same shape or None for
    ones) -> ids (N, K') int64 distinct per row, padded with id 0, and their summed weights (N, K')
    float64, 0 for padding."""
    ids = to_numpy(targets, "targets")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"targets: expected integer class ids, got {ids.dtype}")
    ids = ids.reshape(-1, 1) if ids.ndim == 1 else ids
    if ids.ndim != 2 or ids.shape[0] != n_rows:
        raise ValueError(f"targets: expected shape ({n_rows},) or ({n_rows}, K), got {ids.shape}")
    if ids.size and (ids.min() < -1 or ids.max() >= n_classes):
        raise ValueError(f"targets: class ids must lie in [0, {n_classes}) (-1 for none)")
    if values is None:
        vals = np.ones(ids.shape)
    else:
        vals = to_numpy(values, "values").astype(np.float64)
        if vals.ndim == 1 and ids.shape[1] == 1:
            vals = vals[:, None]
        if vals.shape != ids.shape:
            raise ValueError(f"values: expected the shape of targets {ids.shape}, got {vals.shape}")
        if not np.all(np.isfinite(vals)):
            raise ValueError("values: NaN or Inf")
    key = np.where(ids < 0, n_classes, ids)                     # padding sorts last
    order = np.argsort(key, axis=1, kind="stable")
    key = np.take_along_axis(key, order, 1)
    vals = np.take_along_axis(vals, order, 1)
    valid = key < n_classes
    first = valid.copy()
    first[:, 1:] &= key[:, 1:] != key[:, :-1]
    group = np.cumsum(first, axis=1) - 1
    width = int(first.sum(axis=1).max()) if ids.size else 0
    out_ids = np.zeros((n_rows, width), np.int64)
    out_vals = np.zeros((n_rows, width))
    rows = np.broadcast_to(np.arange(n_rows)[:, None], key.shape)
    out_ids[rows[first], group[first]] = key[first]
    np.add.at(out_vals, (rows[valid], group[valid]), vals[valid])
    return out_ids, out_vals


def train(W, b, H, targets, *, values=None, loss: str = "spherical", epsilon: float = 1e-3, lr: float = 0.01,
          epochs: int = 1, batch_size: int = 1, algorithm: str = "factored", dtype: str = "float64",
          refactor_cond: float | None = None, check_every: int = 100, seed: int = 0,
          verbose: bool = True) -> TrainResult:
    """Train the output layer ``o = W h + b`` on fixed inputs H with sparse targets, by minibatch SGD.

    W (D, d), b (D,) or None: the starting layer; H (N, d) inputs; targets (N,) or (N, K) class ids
    (-1 for none) with optional values (weights, default 1); loss: 'squared' (|o - y|^2) or 'spherical'
    (spherical softmax, p_c = (o_c^2 + epsilon) / sum_j (o_j^2 + epsilon)); algorithm: 'factored' (Vincent
    et al., O(d^2) per example) or 'naive' (O(D d), the reference); dtype of the training state; examples
    are visited in a seeded random order each epoch; refactor_cond / check_every: when the factored form
    folds U back into V (see FactoredLayer; None: by dtype)."""
    check_loss(loss)
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm: expected one of {ALGORITHMS}, got {algorithm!r}")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {sorted(DTYPES)}, got {dtype!r}")
    layer = OutputLayer.from_arrays(W, b)
    X = as_queries(H, layer.dim, "H")
    ids, vals = sparse_targets(targets, values, X.shape[0], layer.n_classes)
    epochs, batch_size = check_int("epochs", epochs, 1), check_int("batch_size", batch_size, 1)
    check_every, seed = check_int("check_every", check_every, 1), check_int("seed", seed, 0)
    lr, epsilon = check_number("lr", lr), check_number("epsilon", epsilon)
    if refactor_cond is not None:
        refactor_cond = check_number("refactor_cond", refactor_cond)
    if algorithm == "factored":
        state = FactoredLayer(layer.W, layer.b, loss, epsilon, DTYPES[dtype], refactor_cond, check_every)
    else:
        state = NaiveLayer(layer.W, layer.b, loss, epsilon, DTYPES[dtype])
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(epochs):
        order = rng.permutation(X.shape[0])
        total, t0 = 0.0, time.perf_counter()
        for lo in tqdm(range(0, X.shape[0], batch_size), desc=f"train epoch {epoch + 1}", disable=not verbose,
                       unit="batch", leave=False):
            rows = order[lo:lo + batch_size]
            value, _ = state.step(X[rows], ids[rows], vals[rows], lr)
            total += float(value.sum())
        if not np.isfinite(total):
            raise ValueError(f"lr: training diverged in epoch {epoch + 1} (the loss is not finite); try a smaller lr")
        history.append({"epoch": epoch + 1, "mean_loss": total / X.shape[0],
                        "seconds": time.perf_counter() - t0,
                        "refactors": getattr(state, "refactors", 0)})
    W_out, b_out = state.weights()
    return TrainResult(W_out.astype(np.float32), b_out.astype(np.float32), history)
