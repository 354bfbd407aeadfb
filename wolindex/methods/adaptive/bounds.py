"""Adaptive's routing: bounding blocks of the tail clusters (k-means pieces with a centre, a radius and bias
and norm bounds, for mode='certified') and the router that opens tail blocks from the gates or the bounds,
on either engine (see methods.ops)."""
from __future__ import annotations

import numpy as np

from .gates import log_scores

UNIT_ROUNDOFF = 2.0 ** -24
BLOCK_BOUNDS = ("block_radius", "block_bias_max", "block_bias_min", "block_norm_max")
ROUTER_ARRAYS = ("gate_V", "gate_c", "block_centre") + BLOCK_BOUNDS
FIT_CELLS = 1 << 22        # k-means of a cluster is fitted on max(FIT_CELLS / d, 8 x its blocks) of its rows at most
ASSIGN_CELLS = 1 << 22     # row values assigned to their nearest centre at a time (ASSIGN_CELLS / d rows)


def bounding_blocks(cluster_rows: list[np.ndarray], W: np.ndarray, block: int, seed: int):
    """Split each tail cluster's classes (arrays of class ids) into blocks of about `block` rows by k-means
    (fitted on a seeded sample of a large cluster's rows from seeded random centres: k-means++ seeding costs
    several times the whole fit at thousands of centres; then every row assigned to its nearest centre a
    block of rows at a time, so no copy of a cluster's rows is made). Returns the blocks (list of class-id
    arrays, each cluster's blocks consecutive) and cluster_ptr (J + 1,) int64: cluster j owns blocks
    cluster_ptr[j]:cluster_ptr[j + 1]."""
    from sklearn.cluster import KMeans

    blocks, ptr = [], [0]
    rng = np.random.default_rng(seed)
    d = W.shape[1]
    for rows in cluster_rows:
        n_blocks = -(-rows.size // block)
        if n_blocks == 1:
            blocks.append(rows)
        else:
            fit_rows = max(FIT_CELLS // d, 8 * n_blocks)
            sample = rows if rows.size <= fit_rows else np.sort(rng.choice(rows, fit_rows, replace=False))
            km = KMeans(n_blocks, init="random", n_init=1, max_iter=20, random_state=seed,
                        copy_x=False).fit(W[sample])        # W[sample] is a copy already
            step = max(1, ASSIGN_CELLS // d)
            assign = np.concatenate([km.predict(W[rows[lo:lo + step]]) for lo in range(0, rows.size, step)])
            grouped = rows[np.argsort(assign, kind="stable")]
            ends = np.searchsorted(np.sort(assign), np.arange(n_blocks + 1))
            blocks.extend(grouped[a:z] for a, z in zip(ends[:-1], ends[1:]) if z > a)
        ptr.append(len(blocks))
    return blocks, np.array(ptr, np.int64)


def block_bounds(blocks: list[np.ndarray], W: np.ndarray, b: np.ndarray):
    """Per block: centre (B, d) float32, radius (B,) float64 = max |w - centre|, bias_max and bias_min
    (B,) float64, norm_max (B,) float64 = max |w| (for the rounding slack)."""
    centre = np.stack([W[rows].mean(axis=0) for rows in blocks]).astype(np.float32)
    radius = np.array([np.linalg.norm(W[rows].astype(np.float64) - centre[i], axis=1).max()
                       for i, rows in enumerate(blocks)])
    bias_max = np.array([b[rows].max() for rows in blocks], np.float64)
    bias_min = np.array([b[rows].min() for rows in blocks], np.float64)
    norm_max = np.array([np.linalg.norm(W[rows], axis=1).max() for rows in blocks], np.float64)
    return centre, radius, bias_max, bias_min, norm_max


class ClusterRouter:
    """Which tail blocks a query opens. arrays: gate_V (J, d), gate_c (J,) float32, block_centre (n_blocks, d)
    float32 and the BLOCK_BOUNDS (n_blocks,) float64; block_cluster (n_blocks,): each block's cluster; all on
    the host or on a device. square, epsilon: the layer's (spherical layers rank by o^2)."""

    def __init__(self, arrays: dict, block_cluster, square: bool, epsilon: float):
        self.arrays, self.block_cluster, self.square, self.epsilon = arrays, block_cluster, square, epsilon

    def to(self, move) -> "ClusterRouter":
        return ClusterRouter({name: move(a) for name, a in self.arrays.items()}, move(self.block_cluster),
                             self.square, self.epsilon)

    def opened_blocks(self, ops, H, threshold, params):
        """(N, n_blocks) bool: tail blocks that may hold a class whose score (o, or o^2 on spherical layers)
        reaches threshold (N,); ops: the engine of H and of this router's arrays (methods.ops)."""
        xp = ops.xp
        if params.mode == "certified":
            return self._reachable(ops, H, threshold)
        a = self.arrays
        gates = ops.scores(H, a["gate_V"], a["gate_c"])
        level = xp.where(xp.isneginf(threshold), -xp.inf,   # -inf: fewer than k
                         log_scores(threshold, self.square, self.epsilon, xp))
        return (gates + xp.float32(params.margin) >= level[:, None])[:, self.block_cluster]

    def _reachable(self, ops, H, threshold):
        """Certified: blocks whose bound on the best score (centre score + radius * |h| + bias bound, plus
        the float32 rounding slack) reaches threshold."""
        a, xp = self.arrays, ops.xp
        H64 = H.astype(xp.float64)
        norm_h = xp.linalg.norm(H64, axis=1)[:, None]
        centre64 = a["block_centre"].astype(xp.float64)
        centre = (ops.scores(H64, centre64, xp.zeros(centre64.shape[0], xp.float64)) if xp is np
                  else H64 @ centre64.T)
        spread = a["block_radius"] * norm_h
        upper, lower = centre + spread + a["block_bias_max"], centre - spread + a["block_bias_min"]
        slack = (H.shape[1] + 4) * UNIT_ROUNDOFF * (a["block_norm_max"] * norm_h + xp.abs(centre) + spread
                                                     + xp.maximum(xp.abs(a["block_bias_max"]),
                                                                  xp.abs(a["block_bias_min"])))
        if self.square:
            reach = xp.maximum(xp.abs(upper), xp.abs(lower)) + slack
            return reach * reach * (1 + 4 * UNIT_ROUNDOFF) >= threshold[:, None]
        return upper + slack >= threshold[:, None]
