"""What a method's search asks of the engine it runs on, so that each method writes its routing and search
once for the CPU and the GPU.

A method with a GPU search defines ``search_with(ops, H, k, params)`` in terms of an *ops* object: an
engine bound to the method's arrays where they live. Two kinds exist: ``HostOps`` here (NumPy arrays, the
CPU engine's kernels) and ``wolindex.gpu.ops.DeviceOps`` (CuPy arrays, the GPU engine's kernels). Both
offer:

- ``xp``: the array module (NumPy or CuPy);
- ``router``: the method's router (the arrays its routing reads: hash rows, gate, cluster bounds) on the
  same side as the queries; a router has ``to(move)``, the same router with every array passed through
  ``move`` (how the GPU engine copies it to the device);
- ``scores(H, V, c)``: H @ V.T + c, float32 (float64 too on the host);
- ``top_columns(S, n)``: (R, n) int32 column ids of each row's n largest, best first;
- ``top_rows(V, c, H, n, groups=1)``: the rows of V split into ``groups`` equal groups (hash tables), each
  query's top-n rows of each group by H @ V.T + c, as (N, groups * n) int32 row ids of V;
- ``exact(H, k)``: exact top-k over all classes -> scores, labels, n_scored;
- ``candidates(H, k, probes, path, rows="packed", screen=0)``: exact top-k over the union of each query's
  probed buckets (probes (N, m) int32, -1: none), scored with the method's PackedRows attribute ``rows``;
  with screen > 0, over the `screen` best of them by the method's int8 screening codes (n_scored: the
  classes rescored);
- ``merge(a, b)``: two (scores, labels, n_scored) results over disjoint classes -> their joint top-k;
- ``probe_lists(mask, offset)``: (N, B) bool -> probes naming the True columns (+ offset), -1 elsewhere;
- ``surely_empty(mask)``: True when the mask is known to be all False without waiting for a device.

The GPU engine finds a method's GPU search through the method class (``search_with``), so there is one
registry of methods: a method without ``search_with`` searches on the CPU only."""
from __future__ import annotations

import numpy as np

from ..engine import candidate_topk, exact_topk
from ..engine.dispatch import merge_topk, query_products


def top_columns(S: np.ndarray, n: int) -> np.ndarray:
    """(R, C) scores -> (R, n) int32 column ids of each row's n largest, best first (n >= C: all columns,
    ties to the smaller column)."""
    if n >= S.shape[1]:
        top = np.argsort(-S, axis=1, kind="stable")
    else:
        part = np.argpartition(-S, n - 1, axis=1)[:, :n]
        top = np.take_along_axis(part, np.argsort(-np.take_along_axis(S, part, axis=1), axis=1), axis=1)
    return top.astype(np.int32)


def padded_rows(mask: np.ndarray, offset: int = 0) -> np.ndarray:
    """(N, B) bool -> (N, m) int32 column ids + offset of each row's True entries, -1 padded
    (m = the largest count, at least 1)."""
    counts = mask.sum(axis=1)
    width = max(1, int(counts.max()) if counts.size else 1)
    order = np.argsort(~mask, axis=1, kind="stable")[:, :width]
    out = (order + offset).astype(np.int32)
    out[np.arange(width)[None, :] >= counts[:, None]] = -1
    return out


def in_steps(xp, H, k: int, step: int, search):
    """search(H_part) -> (scores (n, k) float32, labels (n, k) int64, n_scored (n,) int64), run on H in steps
    of at most `step` queries (so whatever it holds per query stays bounded for any N); results joined in
    xp arrays."""
    N = H.shape[0]
    if N <= step:
        return search(H)
    scores, labels, n_scored = xp.empty((N, k), xp.float32), xp.empty((N, k), xp.int64), xp.empty(N, xp.int64)
    for lo in range(0, N, step):
        scores[lo:lo + step], labels[lo:lo + step], n_scored[lo:lo + step] = search(H[lo:lo + step])
    return scores, labels, n_scored


class HostOps:
    """The CPU engine bound to one method's arrays (see the module docstring). engine: the CPU engine's
    kernels ('numba' or 'numpy') for top_rows, exact and candidates; None for top_rows by a BLAS product
    and top_columns (what training uses)."""

    xp = np

    def __init__(self, layer=None, method=None, engine: str | None = "numba"):
        self.layer, self.method, self.engine = layer, method, engine
        self.router = getattr(method, "router", None)

    def scores(self, H, V, c):
        """H @ V.T + c: by the engine's products kernel when searching with Numba (no BLAS threads left
        spinning beside the engine's), by NumPy otherwise."""
        if self.engine == "numba":
            return query_products(H, V, c)
        return H @ V.T + c

    @staticmethod
    def top_columns(S, n: int):
        return top_columns(S, n)

    def top_rows(self, V, c, H, n: int, groups: int = 1):
        """Each group's top rows by the query engine's exact top-k over them: no BLAS call, whose threads
        would contend with the engine's at small batches."""
        size = V.shape[0] // groups
        tops = []
        for t in range(groups):
            Vt, ct = V[t * size:(t + 1) * size], c[t * size:(t + 1) * size]
            top = (top_columns(self.scores(H, Vt, ct), n) if self.engine is None
                   else exact_topk(Vt, ct, H, n, self.engine)[1])
            tops.append(top + t * size)
        return np.concatenate(tops, axis=1).astype(np.int32)

    def exact(self, H, k: int):
        layer = self.layer
        scores, labels = exact_topk(layer.W, layer.b, H, k, engine=self.engine, square=layer.square,
                                    labels=layer.row_class)
        return scores, labels, np.full(H.shape[0], layer.n_classes, np.int64)

    def candidates(self, H, k: int, probes, path: str, rows: str = "packed", screen: int = 0):
        layer, method = self.layer, self.method
        if screen:
            from ..engine.buckets import check_probes
            from ..engine.screen import screened_candidate_topk

            if method.screen_codes is None:
                raise ValueError("screen: this index has no screening codes; build it with screen=True")
            if layer.square:
                raise ValueError("screen: spherical layers have no screened search")
            if rows != "packed":
                raise ValueError("screen: rescores the layer's own rows; search with rows='exact'")
            probes = check_probes(probes, method.buckets.n_buckets, H.shape[0])
            return screened_candidate_topk(layer.W, layer.b, H, k, method.screen_codes, probes, max(k, screen),
                                           self.engine, layer.class_row)
        return candidate_topk(layer.W, layer.b, H, k, method.buckets, probes, engine=self.engine, path=path,
                              packed=getattr(method, rows), square=layer.square and method.supports_spherical)

    @staticmethod
    def merge(a, b):
        scores, labels = merge_topk(a[0], a[1], b[0], b[1])
        return scores, labels, a[2] + b[2]

    @staticmethod
    def probe_lists(mask, offset: int = 0):
        return padded_rows(mask, offset)

    @staticmethod
    def surely_empty(mask) -> bool:
        return not mask.any()
