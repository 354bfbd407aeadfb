"""Sampling and probabilities from an index's candidates.

A search returns each query's top-k classes with their exact logits. This module
- draws from the softmax restricted to those candidates (``sample``; ``distribution`` gives the
  distribution, ``candidate_probs`` its dense form over the candidates), with temperature, top_k and top_p
  applied in that order, as Hugging Face's warpers do; a query whose top-p nucleus reaches past its
  candidates is given its exact nucleus instead, from one pass over every class;
- estimates the log normaliser ``log sum_c exp(o_c / T)`` over all D classes (``log_normaliser``) or computes
  it in one blocked pass over every class (``exact_log_normaliser``); ``Index.search(H, k,
  return_logprobs=True | 'exact')`` gives log-probabilities of the returned classes with either.

A method can supply its own estimate by defining

    log_normaliser_with(ops, H, scores, labels, temperature) -> (N,) float64

(ops: the host engine operations of wolindex.methods.ops; H (N, d) float32; scores, labels (N, k) as its
search returned them); ``log_normaliser`` calls it instead of the default and keeps the result at or above
the log-sum-exp of the returned classes.

The default estimate is the exact log-sum-exp of the k returned logits plus the mass of every other class
estimated from a fixed stratified sample of TAIL_ROWS classes (``tail_sample``): classes sorted by bias are cut
into strata of equal prior mass sum exp(b_c), and one class per stratum, drawn with probability proportional
to exp(b_c), stands for its stratum's classes outside the candidates with weight (stratum mass) / exp(b_c).
This is unbiased for the tail mass; a class heavy enough to fill a stratum alone is counted exactly, and a
layer of at most TAIL_ROWS classes gets the exact normaliser.

Spherical layers (scores o^2) weigh class c by o_c^2 + epsilon: their normaliser at temperature 1 is exact
in O(d^2), and their log-weights log(o^2 + epsilon) take the place of logits here."""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from ._numeric import with_one_column
from .arrays import as_queries, check_k
from .engine.names import QUERY_BLOCK
from .params import check_int, check_number
from .rows import as_float32_rows

TAIL_ROWS = 1024           # classes in the default estimate's stratified sample
TAIL_SEED = 0
PRIOR_SPAN = 50.0          # prior exp(b) floored this many nats below its largest value (no empty strata)
DEFAULT_K = 64             # candidates sample() asks the index for when neither k nor top_k is given
CELLS = 1 << 22            # float64 entries per block of the exact pass and of the tail estimate

_tails: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # Index -> TailSample


@dataclass(frozen=True)
class TailSample:
    """A fixed sample of classes for the tail estimate: ids (m,) int64 ascending, their rows W (m, d) float32
    and b (m,) float32, and log_weight (m,) float64, the log of the classes each one stands for."""

    ids: np.ndarray
    W: np.ndarray
    b: np.ndarray
    log_weight: np.ndarray


def tail_sample(layer, rows: int = TAIL_ROWS, seed: int = TAIL_SEED) -> TailSample:
    """The stratified sample of `rows` classes of `layer` (see the module docstring); every class, each of
    weight 1, when the layer has at most `rows`. Spherical layers use a flat prior (equal-size strata)."""
    D = layer.n_classes
    if D <= rows:
        ids, log_weight = np.arange(D), np.zeros(D)
    else:
        b = np.zeros(D) if layer.square else layer.class_b().astype(np.float64)
        order = np.argsort(-b, kind="stable")
        prior = np.exp(np.maximum(b[order] - b[order[0]], -PRIOR_SPAN))
        cum = np.cumsum(prior)
        cuts = np.searchsorted(cum, cum[-1] * np.arange(1, rows) / rows, side="left") + 1
        ends = np.unique(np.r_[0, cuts, D])
        lo, hi = ends[:-1], ends[1:]
        below = np.r_[0.0, cum][lo]
        mass = cum[hi - 1] - below
        u = below + np.random.default_rng(seed).random(lo.size) * mass
        pick = np.clip(np.searchsorted(cum, u, side="right"), lo, hi - 1)
        ids, log_weight = order[pick], np.log(mass) - np.log(prior[pick])
    keep = np.argsort(ids)
    ids = ids[keep].astype(np.int64)
    stored = layer.rows_of(ids)
    return TailSample(ids, np.ascontiguousarray(as_float32_rows(layer.W[stored])), layer.b[stored].copy(),
                      log_weight[keep])


def _host(index):
    """The host Index of an Index or a wolindex.gpu.GpuIndex (sampling runs on the host)."""
    return getattr(index, "index", index)


def log_weights(layer, scores: np.ndarray) -> np.ndarray:
    """Scores as a search returns them (N, k) -> float64 log-weights: the logits, or log(o^2 + epsilon) on
    spherical layers (-inf padding stays -inf)."""
    s = np.asarray(scores, np.float64)
    if not layer.square:
        return s
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(s), np.log(s + max(layer.epsilon, 1e-30)), -np.inf)


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log sum exp(x) along axis in float64; -inf where every entry is -inf."""
    top = np.max(x, axis=axis, keepdims=True)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.exp(x - safe).sum(axis=axis, keepdims=True)) + safe
    return np.squeeze(np.where(np.isneginf(top), -np.inf, out), axis=axis)


def _members(labels: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """(N, m) bool: whether sample class ids[j] is among row i's labels (ids ascending; -1 labels match none)."""
    pos = np.minimum(np.searchsorted(ids, labels), ids.size - 1)
    hit = ids[pos] == labels
    out = np.zeros((labels.shape[0], ids.size), bool)
    out[np.nonzero(hit)[0], pos[hit]] = True
    return out


def _check_results(Q: np.ndarray, scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 2 or scores.shape[0] != Q.shape[0] or labels.shape != scores.shape:
        raise ValueError(f"scores / labels: expected two (N, k) arrays with N = {Q.shape[0]} (as a search of H "
                         f"returns them), got shapes {scores.shape} and {labels.shape}")
    return scores, labels


def check_temperature(temperature, allow_zero: bool = False) -> float:
    """A finite temperature > 0 (>= 0 with allow_zero: 0 means greedy) as a float."""
    return check_number("temperature", temperature, allow_zero=allow_zero)


def default_log_normaliser(index, Q: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                           temperature: float = 1.0) -> np.ndarray:
    """The default estimate of log sum_c exp(o_c / T) over all classes, (N,) float64 (module docstring)."""
    layer = index.layer
    if layer.square and temperature == 1.0:
        return np.log(_spherical_total(layer, Q))
    top = logsumexp(log_weights(layer, scores) / temperature)
    tail = _tails.get(index)
    if tail is None:
        tail = _tails.setdefault(index, tail_sample(layer))
    rest = np.empty(Q.shape[0])
    step = max(1, CELLS // tail.ids.size)
    for lo in range(0, Q.shape[0], step):
        logits = Q[lo:lo + step] @ tail.W.T + tail.b
        z = log_weights(layer, logits) / temperature + tail.log_weight
        z[_members(labels[lo:lo + step], tail.ids)] = -np.inf
        rest[lo:lo + step] = logsumexp(z)
    return np.logaddexp(top, rest)


def log_normaliser(index, H, scores, labels, temperature: float = 1.0) -> np.ndarray:
    """Estimate of log sum_c exp(o_c / T) over all D classes for queries H (N, d), given the scores and labels
    (N, k) an index search of H returned: the method's log_normaliser_with when it has one, else
    default_log_normaliser; never below the log-sum-exp of the returned classes. Returns (N,) float64."""
    from .methods.ops import HostOps

    index = _host(index)
    Q = as_queries(H, index.dim)
    scores, labels = _check_results(Q, scores, labels)
    T = check_temperature(temperature)
    hook = getattr(index.method, "log_normaliser_with", None)
    if hook is None:
        out = default_log_normaliser(index, Q, scores, labels, T)
    else:
        out = np.asarray(hook(HostOps(index.layer, index.method, index.search_params().engine), Q, scores, labels,
                              T), np.float64)
        if out.shape != (Q.shape[0],) or np.isnan(out).any():
            raise ValueError(f"log_normaliser_with: method {index.method_name!r} returned shape {out.shape} or "
                             f"NaN; expected ({Q.shape[0]},) numbers")
    return np.maximum(out, logsumexp(log_weights(index.layer, scores) / T))


def _spherical_total(layer, Q: np.ndarray) -> np.ndarray:
    """h'^T G h' + D epsilon, a spherical layer's exact normaliser (h' = [h, 1], G = layer.gram), (N,) float64."""
    Hb = with_one_column(Q, dtype=np.float64)
    return ((Hb @ layer.gram) * Hb).sum(axis=1) + layer.n_classes * layer.epsilon


def exact_log_normaliser(index, H, temperature: float = 1.0) -> np.ndarray:
    """log sum_c exp(o_c / T) over all D classes, exactly: one pass over W in blocks (float32 products,
    float64 sums). H (N, d) -> (N,) float64."""
    index = _host(index)
    layer = index.layer
    Q = as_queries(H, index.dim)
    T = check_temperature(temperature)
    if layer.square and T == 1.0:
        return np.log(_spherical_total(layer, Q))
    D = layer.n_classes
    n_q = min(Q.shape[0], QUERY_BLOCK)
    width = max(1, CELLS // n_q)
    out = np.empty(Q.shape[0])
    for q0 in range(0, Q.shape[0], n_q):
        Hq = Q[q0:q0 + n_q]
        parts = []
        for c0 in range(0, D, width):
            logits = Hq @ as_float32_rows(layer.W[c0:c0 + width]).T + layer.b[c0:c0 + width]
            parts.append(logsumexp(log_weights(layer, logits) / T))
        out[q0:q0 + n_q] = logsumexp(np.stack(parts, axis=1))
    return out


def logprobs(index, Q: np.ndarray, scores: np.ndarray, labels: np.ndarray, mode) -> np.ndarray:
    """Index.search's return_logprobs: log-probabilities (N, k) float64 of the returned classes under the full
    softmax (-inf for padding), the normaliser estimated (mode True) or exact (mode 'exact'); exact on
    spherical layers either way."""
    if mode is not True and mode != "exact":
        raise ValueError(f"return_logprobs: expected False, True (estimated normaliser) or 'exact', got {mode!r}")
    layer = index.layer
    if layer.square:
        norm = np.log(_spherical_total(layer, Q))
    elif mode == "exact":
        norm = exact_log_normaliser(index, Q)
    else:
        norm = log_normaliser(index, Q, scores, labels)
    return log_weights(layer, scores) - norm[:, None]


def check_top_p(top_p) -> float | None:
    """None, or a number in (0, 1] as a float."""
    if top_p is not None and check_number("top_p", top_p) > 1:
        raise ValueError(f"top_p: expected a number in (0, 1], got {top_p!r}")
    return None if top_p is None else float(top_p)


def candidate_probs(logits, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                    log_normaliser=None) -> np.ndarray:
    """The sampling distribution over each row's candidates: logits (N, k) best first (-inf: padding);
    temperature T (0: all mass on the first, the greedy choice), then top_k (keep the first top_k), then
    top_p (keep the shortest prefix whose probability reaches top_p). That probability is measured against
    log_normaliser (N,), the log of sum exp(o / T) over the whole distribution (see log_normaliser), or when
    None against the candidates left by top_k. Returns (N, k) float64 rows summing to 1, 0 outside the kept
    candidates (a row without candidates: all on its first column)."""
    z = np.array(logits, np.float64)
    if z.ndim != 2 or z.shape[1] == 0:
        raise ValueError(f"logits: expected an (N, k) array with k >= 1, got shape {z.shape}")
    T = check_temperature(temperature, allow_zero=True)
    top_p = check_top_p(top_p)
    if top_k is not None:
        z[:, check_int("top_k", top_k, 1):] = -np.inf
    if T == 0:
        z[:, 0], z[:, 1:] = 0.0, -np.inf
    else:
        z /= T
    if top_p is not None and top_p < 1:
        norm = logsumexp(z) if log_normaliser is None else np.asarray(log_normaliser, np.float64)
        if norm.shape != (z.shape[0],):
            raise ValueError(f"log_normaliser: expected shape ({z.shape[0]},), got {norm.shape}")
        with np.errstate(invalid="ignore"):
            p = np.exp(z - norm[:, None])
        z[np.cumsum(p, axis=1) - p >= top_p] = -np.inf
    total = logsumexp(z)
    empty = np.isneginf(total)
    z[empty, 0], total[empty] = 0.0, 0.0
    return np.exp(z - total[:, None])


def _generator(generator) -> np.random.Generator:
    """A numpy Generator from a Generator, an int seed >= 0 or None (fresh entropy)."""
    if isinstance(generator, np.random.Generator):
        return generator
    if generator is not None and (isinstance(generator, bool) or not isinstance(generator, (int, np.integer))):
        raise TypeError(f"generator: expected a numpy.random.Generator, an int seed or None, got "
                        f"{type(generator).__name__}")
    return np.random.default_rng(None if generator is None else check_int("generator", generator, 0))


@dataclass(frozen=True)
class Distribution:
    """Each query's sampling distribution as sparse rows: row i holds classes labels[indptr[i]:indptr[i + 1]]
    (int64, best first) with probabilities probs[indptr[i]:indptr[i + 1]] (float64, positive, summing to 1);
    exact (N,) bool marks the rows whose top-p nucleus reached past the candidates and was taken from the
    exact logits of every class."""

    indptr: np.ndarray
    labels: np.ndarray
    probs: np.ndarray
    exact: np.ndarray

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(labels, probs) of query i."""
        return self.labels[self.indptr[i]:self.indptr[i + 1]], self.probs[self.indptr[i]:self.indptr[i + 1]]

    def draw(self, generator=None) -> np.ndarray:
        """One class per row, by inverse CDF: (N,) int64."""
        rng = _generator(generator)
        N = self.indptr.size - 1
        cdf = np.cumsum(self.probs)
        start = np.r_[0.0, cdf][self.indptr[:-1]]
        total = np.r_[0.0, cdf][self.indptr[1:]] - start
        pos = np.searchsorted(cdf, start + rng.random(N) * total, side="right")
        return self.labels[np.clip(pos, self.indptr[:-1], self.indptr[1:] - 1)]


def _exact_nucleus(index, Q: np.ndarray, T: float, top_p: float, n_first: int) -> list:
    """The exact top-p distribution of each query (rows of Q) from every class's logit: [(labels, probs)],
    classes best first (ties: smaller id), cut by candidate_probs against the exact normaliser."""
    from .engine.dispatch import query_products

    layer = index.layer
    classes = layer.row_class if layer.row_class is not None else np.arange(layer.n_classes)
    D = layer.n_classes
    out = []
    step = max(1, CELLS // D)
    for lo in range(0, Q.shape[0], step):
        S = query_products(Q[lo:lo + step], layer.W, layer.b)
        Z = log_weights(layer, S * S if layer.square else S) / T
        for z in Z:
            lse = logsumexp(z)
            n = min(D, n_first)
            while True:
                threshold = np.partition(z, D - n)[D - n]
                top = np.flatnonzero(z >= threshold)            # every class tied with the n-th best too
                if n == D or np.exp(logsumexp(z[top]) - lse) >= top_p:
                    break
                n = min(D, 4 * n)
            top = top[np.lexsort((classes[top], -z[top]))]
            probs = candidate_probs(z[top][None, :], 1.0, None, top_p, np.array([lse]))[0]   # the same cut
            keep = probs > 0
            out.append((classes[top[keep]].astype(np.int64), probs[keep]))
    return out


def distribution(index, H, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 k: int | None = None, exact_fallback: bool = True, **settings) -> Distribution:
    """The distribution sample() draws from: the softmax of o / temperature over the k candidates the index
    returns (their exact logits), after top_k and top_p (candidate_probs; without top_k, top_p's mass is
    measured against the estimated full normaliser, log_normaliser). With top_p < 1, no top_k, temperature > 0
    and exact_fallback, a query whose candidates hold less than top_p of that mass (its nucleus reaches past
    them) gets the exact top-p distribution instead, from one pass over every class for that query.

    H (N, d); k: candidates to search for (default top_k, else min(DEFAULT_K, D)), top_k <= k; settings: the
    index's search settings. A GpuIndex is sampled through its host index."""
    index = _host(index)
    Q = as_queries(H, index.dim)
    T = check_temperature(temperature, allow_zero=True)
    D = index.n_classes
    if top_k is not None:
        check_int("top_k", top_k, 1, D)
    k = check_k(k if k is not None else (top_k or min(DEFAULT_K, D)), D)
    if top_k is not None and top_k > k:
        raise ValueError(f"top_k: expected at most k = {k} (the candidates searched for), got {top_k}")
    if not isinstance(exact_fallback, bool):
        raise TypeError(f"exact_fallback: expected a bool, got {type(exact_fallback).__name__}")
    top_p = check_top_p(top_p)
    scores, labels = index.search(Q, k, **settings)
    z = log_weights(index.layer, scores)
    norm = None
    if top_p is not None and top_p < 1 and top_k is None and T > 0:
        norm = log_normaliser(index, Q, scores, labels, T)
    probs = candidate_probs(z, T, top_k, top_p, norm)
    exact = np.zeros(Q.shape[0], bool)
    if norm is not None and exact_fallback:
        exact = np.exp(logsumexp(z / T) - norm) < top_p
    rows = [(labels[i][probs[i] > 0], probs[i][probs[i] > 0]) for i in range(Q.shape[0])]
    if exact.any():
        for i, row in zip(np.flatnonzero(exact), _exact_nucleus(index, Q[exact], T, top_p, 4 * k)):
            rows[i] = row
    sizes = np.array([r[0].size for r in rows], np.int64)
    return Distribution(np.r_[0, np.cumsum(sizes)], np.concatenate([r[0] for r in rows]).astype(np.int64),
                        np.concatenate([r[1] for r in rows]), exact)


def sample(index, H, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           generator=None, k: int | None = None, exact_fallback: bool = True, **settings) -> np.ndarray:
    """Draw one class per query from distribution(index, H, temperature, top_k, top_p, k, exact_fallback,
    **settings): the softmax of o / temperature over the index's k candidates after top_k and top_p, or the
    exact top-p distribution where the nucleus reaches past the candidates. temperature 0: the best candidate.
    generator: a numpy Generator, an int seed or None (fresh entropy). Returns (N,) int64 class ids."""
    rng = _generator(generator)
    return distribution(index, H, temperature, top_k, top_p, k, exact_fallback, **settings).draw(rng)
