"""Each method's search on the GPU: the same routing as its CPU search (hashes, gates, head and clusters),
evaluated on the device, then the GPU engine. Methods without an entry in SEARCHES stay on the CPU."""
from __future__ import annotations

from . import kernels
from .engine import DeviceBuckets, candidate_topk, exact_topk, select_topk
from .runtime import rows_to_storage


def top_columns(rt, S, n: int):
    """(R, C) float32 scores on the device -> (R, n) int32 column ids of each row's n largest (in no set
    order beyond best first; ties to the smaller column)."""
    xp = rt.xp
    if n <= kernels.KMAX:
        return select_topk(rt, S, n, n_rows=S.shape[0], n_cols=S.shape[1])[1].astype(xp.int32)
    return xp.argsort(-S, axis=1)[:, :n].astype(xp.int32)


def linear_scores(rt, H, V, c):
    """H (N, d) @ V (M, d).T + c (M,) in float32 on the device."""
    S = rt.xp.empty((H.shape[0], V.shape[0]), rt.xp.float32)
    rt.gemm_nt(H, V, S, "float32")
    S += c
    return S


class ExactSearch:
    def __init__(self, rt, index, dtype: str):
        self.rt, self.dtype = rt, dtype
        self.W = rt.to_device(rows_to_storage(index.layer.W, dtype))
        self.b = rt.to_device(index.layer.b)

    def search(self, H, k, params):
        scores, labels = exact_topk(self.rt, self.W, self.b, H, k, self.dtype)
        return scores, labels, self.rt.xp.full(H.shape[0], self.W.shape[0], self.rt.xp.int64)


class BucketSearch:
    """Methods whose candidates are buckets: the packed rows go to the device once."""

    def __init__(self, rt, index, dtype: str):
        self.rt, self.method, self.layer = rt, index.method, index.layer
        self.rows = DeviceBuckets.upload(rt, index.method.buckets, index.method.packed, dtype)


class LSSSearch(BucketSearch):
    def __init__(self, rt, index, dtype):
        super().__init__(rt, index, dtype)
        self.V, self.c = rt.to_device(self.method.hash_V), rt.to_device(self.method.hash_c)

    def search(self, H, k, params):
        self.method.check_search(params)
        L, B = self.method.state["n_tables"], self.method.state["n_buckets"]
        N, p = H.shape[0], params.n_probe
        S = linear_scores(self.rt, H, self.V, self.c).reshape(N * L, B)
        offsets = (self.rt.xp.arange(L, dtype=self.rt.xp.int32) * B)[:, None]
        probes = (top_columns(self.rt, S, p).reshape(N, L, p) + offsets).reshape(N, L * p)
        return candidate_topk(self.rt, self.rows, H, probes, k, params.path)


class DSSearch(BucketSearch):
    def __init__(self, rt, index, dtype):
        super().__init__(rt, index, dtype)
        self.gate = {name: rt.to_device(a) for name, a in self.method.gate.params.items()}

    def search(self, H, k, params):
        self.method.check_search(params)
        if params.scoring != "exact":
            raise ValueError("scoring: the GPU engine scores candidates with the layer's rows ('exact') only")
        g = self.gate
        if self.method.gate.hidden:
            z = self.rt.xp.maximum(linear_scores(self.rt, H, g["U1"], g["c1"]), 0)
            logits = linear_scores(self.rt, z, g["U"], g["c"])
        else:
            logits = linear_scores(self.rt, H, g["U"], g["c"])
        probes = top_columns(self.rt, logits, params.n_probe)
        return candidate_topk(self.rt, self.rows, H, probes, k, params.path)


class AdaptiveSearch(BucketSearch):
    def __init__(self, rt, index, dtype):
        super().__init__(rt, index, dtype)
        self.arrays = {name: rt.to_device(a) for name, a in self.method.arrays.items()
                       if name.startswith(("gate_", "block_"))}
        self.block_cluster = rt.to_device(self.method.block_cluster)
        self.block_ids = rt.xp.arange(1, self.method.buckets.n_buckets, dtype=rt.xp.int32)

    def search(self, H, k, params):
        xp = self.rt.xp
        N = H.shape[0]
        head_s, head_l, head_n = candidate_topk(self.rt, self.rows, H, xp.zeros((N, 1), xp.int32), k, params.path)
        rank = self.method.threshold_rank(k, params)
        opened = self.method.opened_blocks(self.layer, H, head_s[:, rank - 1], params, xp=xp, arrays=self.arrays,
                                           block_cluster=self.block_cluster)
        probes = xp.where(opened, self.block_ids, xp.int32(-1)).astype(xp.int32)
        tail_s, tail_l, tail_n = candidate_topk(self.rt, self.rows, H, probes, k, params.path)
        scores, labels = select_topk(self.rt, xp.concatenate([head_s, tail_s], axis=1), k, n_rows=N, n_cols=2 * k,
                                     ids=xp.concatenate([head_l, tail_l], axis=1))
        return scores, labels, head_n + tail_n


SEARCHES = {"exact": ExactSearch, "lss": LSSSearch, "ds": DSSearch, "adaptive": AdaptiveSearch}
