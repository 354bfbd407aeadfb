"""Spherical-softmax layers: classes ranked by (w.h + b)^2 in every method that supports them, and exact
probabilities through h'^T Q h'."""
import numpy as np
import pytest

import wolindex
from helpers import assert_topk_matches, random_layer, random_queries

W, B = random_layer(3000, 16, seed=11)
H = random_queries(300, 16, seed=12)
SQUARES = (H.astype(np.float64) @ W.T.astype(np.float64) + B) ** 2
EPS = 0.05

# Ceilings on the classes scored by the certified bounds (work, <=), each with what was observed on its
# seeded data (ray_layer(seed=21), 300 ray_queries(seed=1); deterministic), set at most 1.5x the observation,
# and a floor (>=) leaving at least 1/1.5 of the observed value.
FLOORS = {
    "rays_spherical_scored_fraction": (0.105, "observed 0.0708 (k=1) / 0.0722 (k=3) of D, ray_layer seed 21, "
                                              "queries seed 1"),
    "rays_logit_scored_fraction": (0.105, "observed 0.0710 (k=1) / 0.0715 (k=3) of D, ray_layer seed 21, "
                                          "positive queries seed 1"),
    # a floor (>=): the share of the top-10 (by square) with logits below -3, from the faiss methods
    "faiss_top10_negative_share": (0.4, "observed 0.506 (300 queries; 0.525 for the first 100, faiss-hnsw), "
                                   "exact search's share, layer seed 11, queries seed 12"),
}


def spherical(method="exact", **params):
    return wolindex.build(W, B, method=method, scoring="spherical", epsilon=EPS, verbose=False, **params)


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_exact_ranks_by_square_both_signs(engine):
    scores, labels = spherical().search(H, 10, engine=engine)
    assert_topk_matches(scores, labels, SQUARES, 10, rtol=1e-4)
    logits = H @ W.T + B
    assert np.any(np.take_along_axis(logits, labels, 1) < 0)      # the negative end is found too


def test_probabilities_are_exact():
    scores, labels, probs = spherical().search(H, 10, return_probs=True)
    full = (SQUARES + EPS) / (SQUARES + EPS).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, np.take_along_axis(full, labels, 1), rtol=1e-5)
    _, _, n_scored, probs2 = spherical().search(H, 10, return_n_scored=True, return_probs=True)
    np.testing.assert_array_equal(probs, probs2)


def test_faiss_flat_and_adaptive_certified_equal_exact():
    """Tie-aware: squares that agree to float32 rounding (row 90 has two within 2e-5 at 132.56) may come
    in either order from differently ordered float32 sums. (Random rows: the certified bounds cannot prune
    here, every class is scored; pruning is checked on the rays below.)"""
    pytest.importorskip("faiss")
    scores, labels = spherical("faiss-flat").search(H, 10)
    assert_topk_matches(scores, labels, SQUARES, 10, rtol=1e-4)
    counts = np.random.default_rng(0).integers(0, 100, W.shape[0])
    adaptive = spherical("adaptive", train=random_queries(1500, 16, seed=13), class_counts=counts, cost_queries=256)
    for settings in ({"mode": "certified"}, {"margin": 1e6}):
        scores, labels = adaptive.search(H, 10, **settings)
        assert_topk_matches(scores, labels, SQUARES, 10, rtol=1e-4)


def ray_layer(n_groups=30, per_group=100, head_per_group=4, dim=24, seed=21):
    """Classes in n_groups rays: group j's tail classes are s * u_j (plus a little noise) with norms s spread
    over [0.5, 3], so one bounding block per group reaches from a logit near 0 to its most extreme one; the
    head (the most frequent classes) holds head_per_group classes of norm about 2.4 on each ray. Tail groups
    get decreasing frequencies, one cluster each. Returns W, b, class_counts, cutoffs, unit directions U."""
    rng = np.random.default_rng(seed)
    U = rng.standard_normal((n_groups, dim))
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    norms = rng.uniform(0.5, 3.0, (n_groups, per_group))
    tail = (norms[..., None] * U[:, None, :]).reshape(-1, dim)
    head_norms = rng.uniform(2.2, 2.6, (n_groups, head_per_group))
    head = (head_norms[..., None] * U[:, None, :]).reshape(-1, dim)
    W = np.concatenate([head, tail])
    W = (W + 0.02 * rng.standard_normal(W.shape)).astype(np.float32)
    b = (0.05 * rng.standard_normal(W.shape[0])).astype(np.float32)
    n_head = n_groups * head_per_group
    counts = np.concatenate([np.full(n_head, 10 ** 6), np.repeat(np.arange(n_groups, 0, -1) * 1000, per_group)])
    counts = counts + rng.integers(0, 100, W.shape[0])
    cutoffs = [n_head + per_group * j for j in range(n_groups)]
    return W, b, counts, cutoffs, U


def ray_queries(U, n, seed, positive=False):
    """Queries along +-4 u_j for random groups j: half of them point against their ray, so their top
    classes (by square) are the ray's longest rows with logits near -12 (positive=True: all along +4 u_j,
    the same groups and noise)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, U.shape[0], n)
    sign = np.where((rng.random(n) < 0.5) & (not positive), -1.0, 1.0)
    return (sign[:, None] * 4.0 * U[group] + 0.1 * rng.standard_normal((n, U.shape[1]))).astype(np.float32)


@pytest.fixture(scope="module")
def rays():
    W_r, b_r, counts, cutoffs, U = ray_layer()
    index = wolindex.build(W_r, b_r, method="adaptive", scoring="spherical", epsilon=0.01,
                           train=ray_queries(U, 1000, seed=2), class_counts=counts, cutoffs=cutoffs,
                           bound_block=100, cost_queries=256, verbose=False)
    return index, W_r, b_r, ray_queries(U, 300, seed=1)


@pytest.mark.parametrize("path", ["fused", "grouped"])
@pytest.mark.parametrize("k", [1, 3])
def test_certified_bound_covers_the_negative_end(rays, path, k):
    """Certified mode on a spherical layer must bound each block by both of its ends: here the bounds rule
    out most blocks (about 7 % of the classes are scored), and for half the queries the top classes are the
    most negative logits of a block whose other end is near -2 (its bound from that end alone excludes it).
    Results equal exact search (tie-aware)."""
    index, W_r, b_r, Hq = rays
    logits = Hq.astype(np.float64) @ W_r.T.astype(np.float64) + b_r
    top = np.argmax(logits ** 2, axis=1)
    negative_top = logits[np.arange(len(Hq)), top] < -8
    assert 0.3 < negative_top.mean() < 0.7                        # the data: many tops at the negative end
    scores, labels, n_scored = index.search(Hq, k, mode="certified", path=path, return_n_scored=True)
    assert n_scored.mean() <= FLOORS["rays_spherical_scored_fraction"][0] * index.n_classes, n_scored.mean()
    assert_topk_matches(scores, labels, logits ** 2, k, rtol=1e-4)
    assert np.all(np.take_along_axis(logits, labels, 1)[negative_top] < 0)
    exact_s, exact_l = wolindex.build(W_r, b_r, scoring="spherical", epsilon=0.01).search(Hq, k)
    np.testing.assert_allclose(scores, exact_s, rtol=1e-5)


@pytest.fixture(scope="module")
def logit_rays():
    W_r, b_r, counts, cutoffs, U = ray_layer()
    index = wolindex.build(W_r, b_r, method="adaptive", train=ray_queries(U, 1000, seed=2), class_counts=counts,
                           cutoffs=cutoffs, bound_block=100, cost_queries=256, verbose=False)
    return index, W_r, b_r, ray_queries(U, 300, seed=1, positive=True)


@pytest.mark.parametrize("path", ["fused", "grouped"])
@pytest.mark.parametrize("k", [1, 3])
def test_certified_bound_on_the_logit_layer_of_the_rays(logit_rays, path, k):
    """The logit-layer (softmax) counterpart of the test above, on the same rays with queries along +4 u_j:
    the top logits are the ray's longest rows, the bounds (upper end only) rule out the other rays' blocks
    (a ceiling on the classes scored), and the results equal exact search (tie-aware, and its labels)."""
    index, W_r, b_r, Hq = logit_rays
    logits = Hq.astype(np.float64) @ W_r.T.astype(np.float64) + b_r
    scores, labels, n_scored = index.search(Hq, k, mode="certified", path=path, return_n_scored=True)
    assert n_scored.mean() <= FLOORS["rays_logit_scored_fraction"][0] * index.n_classes, n_scored.mean()
    assert_topk_matches(scores, labels, logits, k)
    assert np.array_equal(labels, wolindex.build(W_r, b_r).search(Hq, k)[1])


# method -> (build settings, search settings that reach every class: every list / node, and for faiss-ivfpq,
# whose own scores are approximate, k_factor * 10 = D candidates rescored), queries searched
FAISS_EVERYTHING = {"faiss-ivf": ({"nlist": 16}, {"n_probe": 16}, 300),
                    "faiss-hnsw": ({}, {"ef_search": 3000}, 100),
                    "faiss-ivfpq": ({"nlist": 16}, {"n_probe": 16, "k_factor": 300}, 300)}


@pytest.mark.parametrize("method", list(FAISS_EVERYTHING))
def test_faiss_methods_reaching_every_class_equal_exact_spherical_search(method):
    """Spherical layers on faiss-ivf, faiss-hnsw and faiss-ivfpq: reaching every class, the top-k by square
    equals exact spherical search (tie-aware), both ends included: about half the top classes here have
    large negative logits (down to -25), and where exact search's best class is at the negative end, so is
    the method's."""
    pytest.importorskip("faiss")
    build, settings, n = FAISS_EVERYTHING[method]
    scores, labels = spherical(method, **build).search(H[:n], 10, **settings)
    assert_topk_matches(scores, labels, SQUARES[:n], 10, rtol=1e-4)
    logits = H[:n].astype(np.float64) @ W.T.astype(np.float64) + B
    got = np.take_along_axis(logits, labels, 1)
    assert np.mean(got < -3) >= FLOORS["faiss_top10_negative_share"][0], np.mean(got < -3)
    exact_top = np.take_along_axis(logits, spherical().search(H[:n], 1)[1], 1)[:, 0]
    assert np.all(got[exact_top < 0, 0] < 0)
    assert 0.3 < np.mean(exact_top < 0) < 0.7


def test_save_load_keeps_the_scoring(tmp_path):
    idx = spherical()
    idx.save(tmp_path / "s.wol")
    loaded = wolindex.load(tmp_path / "s.wol")
    assert loaded.layer.scoring == "spherical" and loaded.layer.epsilon == EPS
    assert np.array_equal(loaded.search(H, 5)[1], idx.search(H, 5)[1])


def test_errors():
    with pytest.raises(ValueError, match="return_probs"):
        wolindex.build(W, B).search(H, 5, return_probs=True)
    with pytest.raises(ValueError, match="scoring"):
        wolindex.build(W, B, scoring="cosine")
    with pytest.raises(ValueError, match="epsilon"):
        wolindex.build(W, B, scoring="spherical", epsilon=-1.0)
    with pytest.raises(ValueError, match="epsilon"):
        wolindex.build(W, B, epsilon=0.1)
    with pytest.raises(ValueError, match="scoring"):
        wolindex.build(W, B, method="ds", train=H, scoring="spherical", epsilon=EPS)
