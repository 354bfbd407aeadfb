"""The GPU engine bound to one method: its rows and router copied to the device once, and the operations
a method's search_with asks for (see wolindex.methods.ops, which HostOps implements on the CPU)."""
from __future__ import annotations

from . import kernels
from .engine import DeviceBuckets, candidate_topk, exact_topk, select_topk
from ..rows import rows_to_storage


class DeviceOps:
    """ops for index.method on runtime rt (a CuPy device, or the emulator): the layer's rows (methods without
    buckets) or the buckets' packed rows in `dtype`, and the method's router, on the device."""

    def __init__(self, rt, index, dtype: str):
        self.rt, self.xp, self.dtype = rt, rt.xp, dtype
        method = index.method
        self.W = self.b = self.rows = None
        if hasattr(method, "buckets"):
            self.rows = DeviceBuckets.upload(rt, method.buckets, method.packed, dtype)
        else:
            self.W = rt.to_device(rows_to_storage(index.layer.W, dtype))
            self.b = rt.to_device(index.layer.b)
        router = getattr(method, "router", None)
        self.router = None if router is None else router.to(rt.to_device)
        self._columns: dict = {}

    def scores(self, H, V, c):
        """H (N, d) @ V (M, d).T + c (M,) in float32."""
        S = self.xp.empty((H.shape[0], V.shape[0]), self.xp.float32)
        self.rt.gemm_nt(H, V, S, "float32")
        S += c
        return S

    def top_columns(self, S, n: int):
        """(R, C) float32 -> (R, n) int32 column ids of each row's n largest, best first (ties to the smaller
        column): the selection kernel up to KMAX, a sort above."""
        xp = self.xp
        if n <= kernels.KMAX:
            return select_topk(self.rt, S, n, n_rows=S.shape[0], n_cols=S.shape[1])[1].astype(xp.int32)
        return xp.argsort(-S, axis=1)[:, :n].astype(xp.int32)

    def top_rows(self, V, c, H, n: int, groups: int = 1):
        """One GEMM over all groups' rows, then a top-n per (query, group)."""
        xp = self.xp
        N, size = H.shape[0], V.shape[0] // groups
        top = self.top_columns(self.scores(H, V, c).reshape(N * groups, size), n).reshape(N, groups, n)
        return (top + (xp.arange(groups, dtype=xp.int32) * size)[:, None]).reshape(N, groups * n)

    def exact(self, H, k: int):
        scores, labels = exact_topk(self.rt, self.W, self.b, H, k, self.dtype)
        return scores, labels, self.xp.full(H.shape[0], self.W.shape[0], self.xp.int64)

    def candidates(self, H, k: int, probes, path: str, rows: str = "packed", screen: int = 0):
        if screen:
            raise ValueError("screen: the GPU engine has no screening stage yet; search with screen=0")
        if rows != "packed":
            raise ValueError("rows: the GPU engine scores candidates with the layer's rows ('exact') only")
        return candidate_topk(self.rt, self.rows, H, probes, k, path)

    def merge(self, a, b):
        xp = self.xp
        k = a[0].shape[1]
        scores, labels = select_topk(self.rt, xp.concatenate([a[0], b[0]], axis=1), k, n_rows=a[0].shape[0],
                                     n_cols=2 * k, ids=xp.concatenate([a[1], b[1]], axis=1))
        return scores, labels, a[2] + b[2]

    def probe_lists(self, mask, offset: int = 0):
        """Every column, -1 where mask is False (no compaction: that would wait for the device)."""
        key = (offset, mask.shape[1])
        if key not in self._columns:
            self._columns[key] = self.xp.arange(offset, offset + mask.shape[1], dtype=self.xp.int32)
        return self.xp.where(mask, self._columns[key], self.xp.int32(-1)).astype(self.xp.int32)

    @staticmethod
    def surely_empty(mask) -> bool:
        return False       # finding out would wait for the device
