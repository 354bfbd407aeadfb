"""The screening stage: int8 codes of every class's row, scanned to pick each query's candidates, which the
engine then rescores exactly (rescore_topk), so every returned score is an exact logit.

Codes. Row c is coded as z_c = A (w_c - mean) (A: an (r, d) row projection, or none: z_c = w_c - mean) with
one scale per row: z_c ~ scale_c * codes_c, codes in [-127, 127]. A query h is coded as B h (B: the matching
(r, d) query projection, A^T B ~ I on the logits that matter; or none) with one scale per query: B h ~ qscale
* p. The approximate logit is qscale * scale_c * (p . codes_c) + b_c + h . mean.

Certified search (no projection). For every class, with float64 arithmetic,
  |h . w_c + b_c - approx_c| <= |h|_1 err_c + scale_c * eq * |codes_c|_1
where err_c = max_j |w_cj - mean_j - scale_c codes_cj| (the row's reconstruction error) and eq = max_j
|h_j - qscale p_j| (the query's). The float32 score the exact kernel computes is within (d + 2) 2^-24 (|h|_2
|w_c|_2 + |b_c|) of the real one, whatever its summation order. So each class has a lower and an upper bound
on its float32 score. theta, the k-th best lower bound, is at most the k-th best score; every class whose
upper bound reaches theta is rescored. The others score strictly below k scores that are rescored, so the
rescored top-k equals the exact top-k, ties included. The kernel works the bounds out in float64 only for the
classes whose float32 approximate score reaches theta minus a per-query bound on every class's margin and
rounding (query_bounds); the others could not be kept."""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from ..arrays import row_blocks
from ..rows import as_float32_rows, kernel_rows
from .dispatch import (_launch, _num_threads, _row_block, check_rows, exact_topk, query_products, readonly,
                       rescore_topk)
from .names import QUERY_BLOCK, check_engine

RUN = 64                  # queries per work item of the scan
CERTIFIED_STEP = 256      # queries per certified kernel call (bounds its kept-class buffers)
CERTIFIED_CAP = 2048      # kept classes per (query, class range) before the query falls back to exact search
ROW_BLOCK = 8192          # rows per step when coding or measuring rows
SUM_BYTES = 1 << 18       # bytes of codes per step of code_sums
STEP_CELLS = 2**21        # at most this many (query, candidate) pairs per step of a screened search
_lock = threading.Lock()
_kernels_module = None


def _kernels():
    global _kernels_module
    with _lock:
        if _kernels_module is None:
            from . import screen_cpu

            _kernels_module = screen_cpu
    return _kernels_module


def quantize(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, r) float rows -> int8 codes (n, r) in [-127, 127] and float32 scales (n,) with
    Z[i] ~ scales[i] * codes[i] (round to nearest; a zero row gets scale 0)."""
    Z = np.asarray(Z, np.float32)
    if Z.shape[1] == 0:
        return np.zeros(Z.shape, np.int8), np.zeros(len(Z), np.float32)
    scales = (np.abs(Z).max(axis=1) / np.float32(127)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1))
    codes = np.clip(np.rint(Z / safe[:, None]), -127, 127).astype(np.int8)
    return codes, scales


def to_blocks(codes: np.ndarray) -> np.ndarray:
    """(n, r) int8 codes -> the scan's layout (ceil(n / 16), ceil(r / 4), 64), zero padded (see vnni.py)."""
    n, r = codes.shape
    n_pad, r_pad = -(-n // 16) * 16, max(4, -(-r // 4) * 4)
    full = np.zeros((n_pad, r_pad), np.int8)
    full[:n, :r] = codes
    return np.ascontiguousarray(full.reshape(n_pad // 16, 16, r_pad // 4, 4).transpose(0, 2, 1, 3)).reshape(
        n_pad // 16, r_pad // 4, 64)


def put_slots(blocks: np.ndarray, slots: np.ndarray, codes: np.ndarray) -> None:
    """Write int8 codes (m, r) into the slots (m,) of blocks in to_blocks' layout (n_blocks, n_quads, 64), zero
    beyond r; no copy of blocks is made."""
    g, n_quads, _ = blocks.shape
    padded = np.zeros((len(slots), n_quads * 4), np.int8)
    padded[:, :codes.shape[1]] = codes
    blocks.reshape(g, n_quads, 16, 4)[slots // 16, :, slots % 16, :] = padded.reshape(len(slots), n_quads, 4)


def from_blocks(blocks: np.ndarray, n: int) -> np.ndarray:
    """to_blocks undone: (n, n_quads * 4) int8 codes (the padded dimensions included)."""
    g, n_quads, _ = blocks.shape
    return blocks.reshape(g, n_quads, 16, 4).transpose(0, 2, 1, 3).reshape(g * 16, n_quads * 4)[:n]


def code_sums(blocks: np.ndarray) -> np.ndarray:
    """(n_blocks * 16,) int32 sum of each slot's codes, from blocks (n_blocks, n_quads, 64) in steps of about
    SUM_BYTES (read through the file for a memmap: arrays.row_blocks)."""
    csum = np.zeros(blocks.shape[0] * 16, np.int32)
    for g0, part in row_blocks(blocks, SUM_BYTES):
        part = part.astype(np.int32)
        csum[g0 * 16:(g0 + part.shape[0]) * 16] = part.reshape(part.shape[0], -1, 16, 4).sum(axis=(1, 3)).ravel()
    return csum


def offset_correction(csum: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """scale * 128 * csum in float32, per class: what the queries' +128 offset adds to a scaled integer sum."""
    return (scale * (np.float32(128) * csum.astype(np.float32))).astype(np.float32)


def code_queries(H: np.ndarray, mean: np.ndarray, proj: np.ndarray | None, n_quads: int):
    """H (N, d) float32 -> (quads (N, n_quads) int32: the uint8 codes p + 128 of (proj @) h, four to an int32;
    qscale (N,) f32; qconst (N,) f32 = H . mean; p (N, r) int8)."""
    Z = H if proj is None else query_products(H, proj)
    N = H.shape[0]
    quads, qscale, qconst = np.empty((N, n_quads), np.int32), np.empty(N, np.float32), np.empty(N, np.float32)
    p = np.empty(Z.shape, np.int8)
    _kernels().code_queries_kernel(readonly(Z), readonly(H), readonly(mean), quads, qscale, qconst, p)
    return quads, qscale, qconst, p


@dataclass(frozen=True)
class ScreenCodes:
    """Codes of a layer's D rows. blocks: (ceil(D / 16), n_quads, 64) int8 (vnni.py's layout); scale: (D,)
    float32; mean: (d,) float32; proj: (r, d) float32 projection of the queries, or None (no projection:
    r = d); bias: (D,) float32, the layer's. Derived on construction: csum, the per-row code sums, and the
    scan's padded scale, bias and offset correction (offset_correction)."""

    blocks: np.ndarray
    scale: np.ndarray
    mean: np.ndarray
    proj: np.ndarray | None
    bias: np.ndarray

    @classmethod
    def encode(cls, W: np.ndarray, b: np.ndarray, mean: np.ndarray, row_proj: np.ndarray | None = None,
               query_proj: np.ndarray | None = None) -> "ScreenCodes":
        """Code W (D, d) float32 rows minus mean (through row_proj (r, d) when given; queries then go through
        query_proj (r, d)), in blocks of rows."""
        if (row_proj is None) != (query_proj is None):
            raise ValueError("row_proj / query_proj: give both or neither")
        codes, scales = [], []
        for lo in range(0, W.shape[0], ROW_BLOCK):
            Z = W[lo:lo + ROW_BLOCK] - mean
            part = quantize(Z if row_proj is None else Z @ row_proj.T)
            codes.append(part[0])
            scales.append(part[1])
        return cls(to_blocks(np.concatenate(codes)), np.concatenate(scales), mean, query_proj, b)

    def __post_init__(self):
        D = self.scale.shape[0]
        pad = self.blocks.shape[0] * 16
        csum = code_sums(self.blocks)
        object.__setattr__(self, "csum", csum)
        object.__setattr__(self, "scan_scale", np.pad(self.scale, (0, pad - D)).astype(np.float32))
        object.__setattr__(self, "scan_bias", np.pad(self.bias, (0, pad - D)).astype(np.float32))
        object.__setattr__(self, "scan_corr", offset_correction(csum, self.scan_scale))

    @property
    def n_classes(self) -> int:
        return self.scale.shape[0]

    @property
    def rank(self) -> int:
        """Coded dimensions: r of the projection, or d."""
        return self.mean.shape[0] if self.proj is None else self.proj.shape[0]

    def codes(self) -> np.ndarray:
        """(D, rank) int8 codes (tests and the NumPy reference)."""
        return from_blocks(self.blocks, self.n_classes)[:, :self.rank]

    def nbytes(self) -> int:
        return self.blocks.nbytes + self.scale.nbytes + self.csum.nbytes + self.scan_scale.nbytes + \
            self.scan_bias.nbytes + self.scan_corr.nbytes + (0 if self.proj is None else self.proj.nbytes)

    def queries(self, H: np.ndarray):
        """H (N, d) float32 -> (quads (N, n_quads) int32, qscale (N,) f32, qconst (N,) f32 = H . mean, p (N, r)
        int8 query codes)."""
        return code_queries(H, self.mean, self.proj, self.blocks.shape[1])

    def certificate(self, W: np.ndarray, b: np.ndarray) -> "Certificate":
        """The per-row terms of the certified bounds (see the module docstring) for these codes of W's rows."""
        if self.proj is not None:
            raise ValueError("mode: 'certified' needs a screen without projection (rank=None)")
        D, d = W.shape
        out = np.zeros((8, self.blocks.shape[0] * 16), np.float64)
        mean = self.mean.astype(np.float64)
        for lo in range(0, D, ROW_BLOCK):
            hi = min(D, lo + ROW_BLOCK)
            codes = from_blocks(self.blocks[lo // 16:-(-hi // 16)], hi - (lo // 16) * 16)[lo % 16:, :d]
            codes = codes.astype(np.float64)
            s = self.scale[lo:hi].astype(np.float64)
            Wf = as_float32_rows(W[lo:hi]).astype(np.float64)
            resid = np.abs(Wf - mean - s[:, None] * codes)
            out[0, lo:hi] = s
            out[1, lo:hi] = resid.max(axis=1)
            out[2, lo:hi] = np.abs(codes).sum(axis=1)
            out[3, lo:hi] = np.sqrt((Wf * Wf).sum(axis=1))
            out[6, lo:hi] = np.sqrt((resid * resid).sum(axis=1))
            out[7, lo:hi] = np.sqrt((codes * codes).sum(axis=1))
        out[4, :D] = b
        out[5, :D] = (d + 2) * 2.0**-24 * 1.01
        return Certificate(out, D)


@dataclass(frozen=True)
class Certificate:
    """Per-row terms of the certified bounds, for rows padded to whole blocks (zero for padding): `stats` (8,
    n_slots) float64 rows: scale, max |r| (r = w - mean - scale codes, the reconstruction error), |codes|_1,
    |w|_2, bias, the float32 rounding factor (d + 2) 2^-24 1.01, |r|_2, |codes|_2. Derived: the kernels'
    float32 prefilter terms A = max |r| and B = scale |codes|_1 (rounded up), and the rows' maxima."""

    stats: np.ndarray
    n_classes: int

    def __post_init__(self):
        s, err, l1 = self.stats[0], self.stats[1], self.stats[2]
        up = 1 + 1e-5
        object.__setattr__(self, "A", (err * up).astype(np.float32))
        object.__setattr__(self, "B", (s * l1 * up).astype(np.float32))
        real = self.stats[:, :self.n_classes]
        object.__setattr__(self, "max", {"err": float(real[1].max(initial=0.0)), "sl1": float((real[0] * real[2]).max(
            initial=0.0)), "wn": float(real[3].max(initial=0.0)), "b": float(np.abs(real[4]).max(initial=0.0)),
            "rnd": float(real[5].max(initial=0.0)), "A": float(self.A.max(initial=0.0)),
            "B": float(self.B.max(initial=0.0))})


def _split(N: int, n_blocks: int) -> tuple[int, int]:
    """(n_ranges, run): queries in runs of RUN (a multiple of 4), classes in enough ranges that every thread
    has a work item (each range keeps its own candidates, merged at the end: more ranges, more to merge)."""
    n_runs = -(-N // RUN)
    return max(1, min(n_blocks, -(-_num_threads() // n_runs))), RUN


def screen_candidates(codes: ScreenCodes, H: np.ndarray, n_cand: int, engine: str = "numba"):
    """Each query's n_cand best classes by approximate logit: ids (N, n_cand) int64 (-1 padding) and their
    approximate logits (N, n_cand) float32, best first (ties: smaller id first)."""
    check_engine(engine)
    quads, qscale, qconst, _ = codes.queries(H)
    N, D = H.shape[0], codes.n_classes
    if engine == "numpy":
        approx = _approx_numpy(codes, quads, qscale, qconst)
        order = np.lexsort((np.broadcast_to(np.arange(D), approx.shape), -approx), axis=1)[:, :n_cand]
        ids = np.full((N, n_cand), -1, np.int64)
        ids[:, :order.shape[1]] = order
        vals = np.full((N, n_cand), -np.inf, np.float32)
        vals[:, :order.shape[1]] = np.take_along_axis(approx, order, axis=1)
        return ids, vals
    n_ranges, run = _split(N, codes.blocks.shape[0])
    out_l = np.empty((N, n_cand), np.int64)
    out_s = np.empty((N, n_cand), np.float32)
    _launch(_kernels().screen_kernel, readonly(codes.blocks), codes.scan_corr, codes.scan_scale, codes.scan_bias, quads,
            qscale, qconst, D, n_cand, n_ranges, run, out_l, out_s)
    return out_l, out_s


def _approx_numpy(codes, quads, qscale, qconst) -> np.ndarray:
    """(N, D) float32 approximate logits, the same float32 operations as the kernels (vnni.block_scores)."""
    D = codes.n_classes
    u8 = quads.view(np.uint8).astype(np.int32)
    acc = (u8 @ from_blocks(codes.blocks, D).astype(np.int32).T).astype(np.float32)
    corr = offset_correction(codes.csum[:D], codes.scale)
    return qscale[:, None] * (codes.scale[None, :] * acc - corr[None, :]) + codes.bias[None, :] + qconst[:, None]


def in_steps(H: np.ndarray, k: int, n_cand: int, search):
    """search(H_part, rows) -> (scores, labels, n_scored) on H in steps of at most QUERY_BLOCK queries and
    STEP_CELLS / n_cand (so the candidate buffers and lists stay bounded for any N and n_cand); rows: the
    part's slice of H."""
    N = H.shape[0]
    step = max(1, min(QUERY_BLOCK, STEP_CELLS // n_cand))
    if N <= step:
        return search(H, slice(0, N))
    scores, labels, n_scored = np.empty((N, k), np.float32), np.empty((N, k), np.int64), np.empty(N, np.int64)
    for lo in range(0, N, step):
        rows = slice(lo, min(N, lo + step))
        scores[rows], labels[rows], n_scored[rows] = search(H[rows], rows)
    return scores, labels, n_scored


def screen_topk(W, b, H, k: int, codes: ScreenCodes, n_cand: int, engine: str = "numba"):
    """Exact rescoring of the screen's n_cand candidates -> scores (N, k) f32, labels (N, k) i64, n_scored (N,).
    W (D, d) rows of a row dtype (wolindex.rows), b (D,) f32: row c is class c, the classes of `codes`."""
    check_engine(engine)
    if W.shape[0] != codes.n_classes:
        raise ValueError(f"W: expected {codes.n_classes} rows to match the codes, got {W.shape[0]}")
    if engine == "numpy":
        return in_steps(H, k, n_cand, lambda part, rows: rescore_topk(
            W, b, part, k, screen_candidates(codes, part, n_cand, engine)[0], engine))
    check_rows(W, b, H, k)
    return in_steps(H, k, n_cand, lambda part, rows: _screen_rescore(W, b, part, k, codes, n_cand))


def _screen_rescore(W, b, H, k, codes, n_cand):
    """screen_topk's numba engine on one step: the scan and the exact rescoring in one kernel call."""
    quads, qscale, qconst, _ = codes.queries(H)
    N = H.shape[0]
    n_ranges, run = _split(N, codes.blocks.shape[0])
    out_s, out_l, n_scored = np.empty((N, k), np.float32), np.empty((N, k), np.int64), np.empty(N, np.int64)
    _launch(_kernels().screen_rescore_kernel, readonly(codes.blocks), codes.scan_corr, codes.scan_scale,
            codes.scan_bias, quads, qscale, qconst, codes.n_classes, n_cand, n_ranges, run, readonly(kernel_rows(W)),
            readonly(b), readonly(H), int(k), _row_block(W), out_s, out_l, n_scored)
    return out_s, out_l, n_scored


def query_bounds(codes: ScreenCodes, cert: Certificate, H: np.ndarray, p: np.ndarray, qscale: np.ndarray,
                 qconst: np.ndarray) -> np.ndarray:
    """(N, 7) float64 per-query terms of the certified bounds: h . mean, qscale, max |e| (e = h - qscale p, the
    query's quantisation error), |h|_1, |h|_2, |e|_2, and the kernels' prefilter slack: a bound on the rest of
    every class's margin (beyond |h|_1 A + max |e| B) and on the float32 rounding of its approximate score."""
    Hf = H.astype(np.float64)
    e = np.abs(Hf - qscale.astype(np.float64)[:, None] * p)
    out = np.empty((H.shape[0], 7), np.float64)
    out[:, 0] = query_products(Hf, codes.mean.astype(np.float64)[None, :])[:, 0]
    out[:, 1] = qscale
    out[:, 2] = e.max(axis=1)
    out[:, 3] = np.abs(Hf).sum(axis=1)
    out[:, 4] = np.sqrt((Hf * Hf).sum(axis=1))
    out[:, 5] = np.sqrt((e * e).sum(axis=1))
    m = cert.max
    hmu, t, eq, n1, n2 = out[:, :5].T
    rest = m["rnd"] * (n2 * m["wn"] + m["b"]) + 1e-9 * (np.abs(hmu) + 127 * t * m["sl1"] + m["b"]) + \
        1e-9 * (n1 * m["err"] + eq * m["sl1"])
    float32_error = 16 * 2.0**-24 * (t * 383 * m["sl1"] + m["b"] + np.abs(qconst) + n1 * m["A"] + eq * m["B"]) + \
        np.abs(qconst.astype(np.float64) - hmu)
    out[:, 6] = (rest + float32_error) * (1 + 1e-6)
    return out


def certified_candidates(codes: ScreenCodes, cert: Certificate, H: np.ndarray, k: int, engine: str = "numba"):
    """Every class whose float32 score can reach the k-th best: ids (N, m) int64 (-1 padding), counts (N,)
    int64, and overflow (N,) bool: queries whose list hit CERTIFIED_CAP (incomplete: search them exactly)."""
    quads, qscale, qconst, p = codes.queries(H)
    q_stats = query_bounds(codes, cert, H, p, qscale, qconst)
    row_stats = cert.stats
    N, D = H.shape[0], codes.n_classes
    if engine == "numpy":
        acc = (quads.view(np.uint8).astype(np.int64) @ from_blocks(codes.blocks, D).astype(np.int64).T
               - 128 * codes.csum[:D].astype(np.int64))
        s, err, l1, wn, bc, rnd, r2, c2 = row_stats[:, :D]
        hmu, t, eq, n1, n2, e2 = (q_stats[:, j:j + 1] for j in range(6))   # column 6: the kernels' prefilter
        dot = s * t * acc.astype(np.float64)
        mid = hmu + dot + bc
        margin = (np.minimum(n1 * err, n2 * r2) + s * np.minimum(eq * l1, e2 * c2)) * (1.0 + 1e-9) + \
            rnd * (n2 * wn + np.abs(bc)) + 1e-9 * (np.abs(hmu) + np.abs(dot) + np.abs(bc))
        theta = -np.sort(-(mid - margin), axis=1)[:, k - 1:k]
        keep = mid + margin >= theta
        counts = keep.sum(axis=1)
        ids = np.full((N, max(1, int(counts.max()))), -1, np.int64)
        ids[np.arange(ids.shape[1])[None, :] < counts[:, None]] = np.nonzero(keep)[1]
        return ids, counts.astype(np.int64), np.zeros(N, bool)
    n_ranges, run = _split(N, codes.blocks.shape[0])
    out_l = np.empty((N, n_ranges * CERTIFIED_CAP), np.int64)
    out_n = np.empty(N, np.int64)
    overflow = np.zeros(N, np.bool_)
    up = np.float32(np.inf)
    qa = np.nextafter(q_stats[:, 3].astype(np.float32), up)
    qb = np.nextafter(q_stats[:, 2].astype(np.float32), up)
    _launch(_kernels().certified_kernel, readonly(codes.blocks), codes.csum, codes.scan_corr, codes.scan_scale,
            codes.scan_bias, cert.A, cert.B, row_stats, quads, qscale, qconst, qa, qb, q_stats, D, int(k), n_ranges,
            run, CERTIFIED_CAP, out_l, out_n, overflow)
    return out_l[:, :max(1, int(out_n.max()))], out_n, overflow


def certified_topk(W, b, H, k: int, codes: ScreenCodes, cert: Certificate, engine: str = "numba"):
    """The exact top-k of H @ W.T + b through the certified screen -> scores, labels, n_scored (N,)."""
    N = H.shape[0]
    scores, labels, n_scored = np.empty((N, k), np.float32), np.empty((N, k), np.int64), np.empty(N, np.int64)
    for lo in range(0, N, CERTIFIED_STEP):
        Hs = H[lo:lo + CERTIFIED_STEP]
        ids, counts, overflow = certified_candidates(codes, cert, Hs, k, engine)
        part = rescore_topk(W, b, Hs, k, ids, engine)
        if overflow.any():
            rows = np.flatnonzero(overflow)
            part[0][rows], part[1][rows] = exact_topk(W, b, np.ascontiguousarray(Hs[rows]), k, engine)
            part[2][rows] = W.shape[0]
        scores[lo:lo + len(Hs)], labels[lo:lo + len(Hs)], n_scored[lo:lo + len(Hs)] = part
    return scores, labels, n_scored


@dataclass(frozen=True)
class BucketCodes:
    """Screening codes stored bucket by bucket, for routed methods: bucket p's classes (buckets.indices order)
    in blocks block_ptr[p]:block_ptr[p + 1] of `blocks` (vnni.py's layout), each bucket padded to whole
    blocks of 16. A class is coded once (class_scale (D,), codes of w_c - mean) and stored again in every
    bucket that holds it. Derived on construction from (blocks, class_scale, mean, buckets, bias): the slots'
    classes, code sums, scales and shifts (the bias; -inf for padding)."""

    blocks: np.ndarray
    class_scale: np.ndarray
    mean: np.ndarray
    buckets: object
    bias: np.ndarray

    @staticmethod
    def layout(buckets) -> tuple[np.ndarray, np.ndarray]:
        """(block_ptr (B + 1,) int64, slot_class (16 * n_blocks,) int64, -1 for padding) of the buckets."""
        sizes = buckets.sizes()
        n_blocks = -(-sizes // 16)
        block_ptr = np.zeros(sizes.size + 1, np.int64)
        np.cumsum(n_blocks, out=block_ptr[1:])
        slot_class = np.full(16 * int(block_ptr[-1]), -1, np.int64)
        starts = np.repeat(16 * block_ptr[:-1] - buckets.indptr[:-1], sizes)
        slot_class[np.arange(buckets.indices.size) + starts] = buckets.indices
        return block_ptr, slot_class

    @classmethod
    def encode(cls, W: np.ndarray, b: np.ndarray, buckets) -> "BucketCodes":
        """Code W's rows (minus their mean, one scale per class) into the buckets' layout, a block of rows at a
        time written straight to the slots that hold them (memory: the codes and a block of rows)."""
        mean = W.mean(axis=0, dtype=np.float64).astype(np.float32)
        _, slot_class = cls.layout(buckets)
        real = np.flatnonzero(slot_class >= 0)
        by_class = real[np.argsort(slot_class[real], kind="stable")]
        sorted_class = slot_class[by_class]
        blocks = np.zeros((slot_class.size // 16, max(1, -(-W.shape[1] // 4)), 64), np.int8)
        del real, slot_class
        scales = []
        for lo in range(0, W.shape[0], ROW_BLOCK):
            codes, scale = quantize(W[lo:lo + ROW_BLOCK] - mean)
            a, z = np.searchsorted(sorted_class, [lo, lo + codes.shape[0]])
            put_slots(blocks, by_class[a:z], codes[sorted_class[a:z] - lo])
            scales.append(scale)
        return cls(blocks, np.concatenate(scales), mean, buckets, b)

    def __post_init__(self):
        block_ptr, slot_class = self.layout(self.buckets)
        if self.blocks.shape[0] != block_ptr[-1]:
            raise ValueError(f"arrays: screen_blocks must have {block_ptr[-1]} blocks for these buckets, got "
                             f"{self.blocks.shape[0]}")
        real = slot_class >= 0
        object.__setattr__(self, "block_ptr", block_ptr)
        object.__setattr__(self, "slot_class", slot_class)
        object.__setattr__(self, "csum", code_sums(self.blocks))
        object.__setattr__(self, "slot_scale", np.where(real, self.class_scale[np.maximum(slot_class, 0)], 0)
                           .astype(np.float32))
        object.__setattr__(self, "slot_shift", np.where(real, self.bias[np.maximum(slot_class, 0)], -np.inf)
                           .astype(np.float32))
        object.__setattr__(self, "slot_corr", offset_correction(self.csum, self.slot_scale))

    def queries(self, H: np.ndarray):
        """As ScreenCodes.queries (no projection)."""
        return code_queries(H, self.mean, None, self.blocks.shape[1])

    def nbytes(self) -> int:
        return self.blocks.nbytes + self.class_scale.nbytes + self.csum.nbytes + self.slot_scale.nbytes + \
            self.slot_shift.nbytes + self.slot_corr.nbytes + self.slot_class.nbytes + self.block_ptr.nbytes


def screened_candidate_topk(W, b, H, k: int, codes: BucketCodes, probes: np.ndarray, n_cand: int,
                            engine: str = "numba", class_row: np.ndarray | None = None):
    """Exact rescoring of the n_cand best classes by approximate logit among each query's probed buckets ->
    scores (N, k) f32, labels (N, k) i64, n_scored (N,) i64 (classes rescored exactly). class_row: (D,) the
    row of W holding each class (a permuted layer's), None for row c = class c."""
    check_engine(engine)
    return in_steps(H, k, n_cand, lambda part, rows: _screened_step(W, b, part, k, codes, probes[rows], n_cand,
                                                                    engine, class_row))


def _screened_step(W, b, H, k, codes, probes, n_cand, engine, class_row):
    quads, qscale, qconst, _ = codes.queries(H)
    N = H.shape[0]
    if engine == "numpy":
        approx = _approx_numpy(_DenseView(codes), quads, qscale, qconst)
        ids = np.full((N, n_cand), -1, np.int64)
        for i in range(N):
            cand = np.unique(np.concatenate([codes.buckets.indices[codes.buckets.indptr[p]:codes.buckets.indptr[p + 1]]
                                             for p in probes[i] if p >= 0] + [np.zeros(0, np.int32)]))
            order = cand[np.lexsort((cand, -approx[i, cand]))][:n_cand]
            ids[i, :order.size] = order
        return rescore_topk(W, b, H, k, ids, engine, class_row=class_row)
    n_parts = max(1, -(-2 * _num_threads() // N)) if N < _num_threads() else 1
    out_s, out_l, n_scored = np.empty((N, k), np.float32), np.empty((N, k), np.int64), np.empty(N, np.int64)
    _launch(_kernels().bucket_screen_rescore_kernel, readonly(codes.blocks), codes.block_ptr, codes.slot_class,
            codes.slot_corr, codes.slot_scale, codes.slot_shift, quads, qscale, qconst, readonly(probes), n_cand,
            n_parts, readonly(kernel_rows(W)), readonly(b),
            readonly(np.zeros(0, np.int32) if class_row is None else class_row), readonly(H), int(k),
            _row_block(W), out_s, out_l, n_scored)
    return out_s, out_l, n_scored


class _DenseView:
    """A BucketCodes seen as class-major codes (ScreenCodes' fields), for the NumPy reference."""

    def __init__(self, codes: BucketCodes):
        D = codes.class_scale.shape[0]
        first = np.zeros(D, np.int64)
        real = np.flatnonzero(codes.slot_class >= 0)
        first[codes.slot_class[real[::-1]]] = real[::-1]
        self.blocks = to_blocks(from_blocks(codes.blocks, codes.slot_class.size)[first])
        self.scale, self.bias, self.n_classes = codes.class_scale, codes.bias, D
        self.csum = codes.csum[first]
