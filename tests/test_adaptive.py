"""Adaptive-softmax frequency clusters: certified mode = exact search (ties included), approximate mode
accuracy floors and monotonicity, cutoffs (checked, chosen), save / load."""
import tracemalloc

import numpy as np
import pytest

import wolindex
from wolindex.data import synthetic
from wolindex.engine.dispatch import merge_topk
from wolindex.methods import adaptive
from wolindex.methods.frequency_clusters import (check_cutoffs, choose_cutoffs, geometric_cutoffs,
                                                 ideal_opening_cost)
from wolindex.metrics import p_at_k
from conftest import assert_topk_matches, random_layer, random_queries

DATA = synthetic(n_classes=5000, dim=32, n_train=6000, n_test=600, seed=3)
FAST = dict(cost_queries=512, verbose=False)
EXACT_S, EXACT_L = wolindex.build(DATA.W, DATA.b).search(DATA.H_test, 10)


@pytest.fixture(scope="module")
def index():
    return wolindex.build(DATA.W, DATA.b, method="adaptive", train=DATA.H_train, class_counts=DATA.class_counts,
                          **FAST)


@pytest.mark.parametrize("path", ["fused", "grouped"])
@pytest.mark.parametrize("k", [1, 7])
def test_certified_is_exact_on_structured_data(index, path, k):
    scores, labels, n_scored = index.search(DATA.H_test, k, mode="certified", path=path, return_n_scored=True)
    logits = DATA.H_test.astype(np.float64) @ DATA.W.T.astype(np.float64) + DATA.b
    assert_topk_matches(scores, labels, logits, k)
    assert np.array_equal(labels, EXACT_L[:, :k])
    assert np.all(n_scored <= DATA.n_classes)


@pytest.mark.parametrize("integer", [False, True])
def test_certified_is_exact_on_random_data_with_ties(integer):
    """Integer weights and queries make every logit exact and ties common: the certified top-k must be the
    exact one, ties broken by the smaller id, as exact search does."""
    W, b = random_layer(3000, 16, seed=5, integer=integer)
    H = random_queries(200, 16, seed=6, integer=integer)
    counts = np.random.default_rng(7).integers(0, 50, 3000)
    idx = wolindex.build(W, b, method="adaptive", train=random_queries(1000, 16, seed=8, integer=integer),
                         class_counts=counts, bound_block=32, **FAST)
    exact_s, exact_l = wolindex.build(W, b).search(H, 10)
    scores, labels = idx.search(H, 10, mode="certified")
    assert np.array_equal(labels, exact_l)
    np.testing.assert_allclose(scores, exact_s, rtol=0 if integer else 1e-6)  # kernels may round differently


def test_certified_skips_blocks_when_bounds_allow():
    """Well-separated class groups: the bounds must rule most blocks out, and the answer stays exact."""
    rng = np.random.default_rng(0)
    centres = 8.0 * rng.standard_normal((20, 16))
    group = rng.integers(0, 20, 4000)
    W = (centres[group] + 0.1 * rng.standard_normal((4000, 16))).astype(np.float32)
    b = np.zeros(4000, np.float32)
    H = (centres[rng.integers(0, 20, 300)] + 0.1 * rng.standard_normal((300, 16))).astype(np.float32)
    idx = wolindex.build(W, b, method="adaptive", train=H, class_counts=rng.integers(0, 9, 4000),
                         cutoffs=[100, 1000], bound_block=100, **FAST)
    scores, labels, n_scored = idx.search(H, 5, mode="certified", return_n_scored=True)
    assert np.array_equal(labels, wolindex.build(W, b).search(H, 5)[1])
    assert n_scored.mean() < 0.5 * 4000                      # observed about 0.1 of the classes


def test_approximate_accuracy_floor_and_monotone_margin(index):
    p1, p10, scored = [], [], []
    for margin in (-1.0, 0.0, 1.0, 2.0, 4.0):
        _, labels, n = index.search(DATA.H_test, 10, margin=margin, return_n_scored=True)
        p1.append(p_at_k(labels, EXACT_L, 1))
        p10.append(p_at_k(labels, EXACT_L, 10))
        scored.append(n.mean())
    assert p1[-1] >= 0.99 and p10[-1] >= 0.98, (p1, p10)       # observed 1.0 / 0.997
    assert np.all(np.diff(p10) >= 0) and np.all(np.diff(scored) >= 0)
    assert scored[2] < 0.5 * DATA.n_classes                      # observed 0.19 of the classes
    _, labels = index.search(DATA.H_test, 10, margin=1e6)
    assert np.array_equal(labels, EXACT_L)


def test_beat_rank_one_opens_fewer_clusters(index):
    _, labels_k, n_k = index.search(DATA.H_test, 10, margin=4.0, return_n_scored=True)
    _, labels_1, n_1 = index.search(DATA.H_test, 10, margin=4.0, beat_rank=1, return_n_scored=True)
    assert n_1.mean() < 0.5 * n_k.mean()                         # observed 861 against 4,644
    assert p_at_k(labels_1, EXACT_L, 1) >= 0.95                  # observed 0.972


def test_save_load_identical(index, tmp_path):
    index.save(tmp_path / "a.wol")
    loaded = wolindex.load(tmp_path / "a.wol")
    for settings in ({}, {"mode": "certified"}, {"margin": 0.5, "beat_rank": 1}):
        a, b = index.search(DATA.H_test, 10, **settings), loaded.search(DATA.H_test, 10, **settings)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("mode", adaptive.MODES)
@pytest.mark.parametrize("setting, value", [("SEARCH_BLOCK", 64), ("ROUTING_CELLS", 100)])
def test_search_in_steps_gives_the_same_results(index, monkeypatch, mode, setting, value):
    """Queries go through search in steps (SEARCH_BLOCK, or ROUTING_CELLS per tail block); the fused path is
    batch-independent, so the results equal one pass over the batch."""
    whole = index.search(DATA.H_test, 10, mode=mode, path="fused", return_n_scored=True)
    n_blocks = index.method.block_cluster.size
    monkeypatch.setattr(adaptive, setting, value * (n_blocks if setting == "ROUTING_CELLS" else 1))
    steps = index.search(DATA.H_test, 10, mode=mode, path="fused", return_n_scored=True)
    assert all(np.array_equal(a, b) for a, b in zip(whole, steps))


def test_search_memory_does_not_grow_with_the_batch():
    """Peak extra memory of a search (NumPy allocations, traced) at 20,000 queries stays near that at 5,000:
    routing state is held for one step of queries at a time (before: about 4x)."""
    W, b = random_layer(5000, 16, seed=21)
    idx = wolindex.build(W, b, method="adaptive", train=random_queries(2000, 16, seed=22), cutoffs=[500, 1500],
                         class_counts=np.random.default_rng(23).integers(0, 100, 5000), **FAST)
    H = random_queries(20000, 16, seed=24)
    for mode in adaptive.MODES:
        idx.search(H[:100], 1, mode=mode)                       # compiled kernels, engine workspaces
        peaks = []
        for n in (5000, 20000):
            tracemalloc.start()
            idx.search(H[:n], 1, mode=mode)
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        assert peaks[1] < 1.5 * peaks[0], (mode, peaks)


def test_given_cutoffs_and_frequency_sources():
    idx = wolindex.build(DATA.W, DATA.b, method="adaptive", train=DATA.H_train, labels=DATA.y_train,
                         cutoffs=[500, 1500, 3000], gate_target="max", **FAST)
    state = idx.method.state
    assert state["cutoffs"] == [500, 1500, 3000] and state["frequencies_from"] == "labels"
    assert idx.method.buckets.sizes()[0] == 500
    top1 = wolindex.build(DATA.W, DATA.b, method="adaptive", train=DATA.H_train, cutoffs=[500], **FAST)
    assert top1.method.state["frequencies_from"] == "exact top-1 of train"


@pytest.mark.parametrize("cutoffs, error", [
    ([0, 10], ValueError), ([10, 10], ValueError), ([20, 10], ValueError), ([10, 5000], ValueError),
    ([], ValueError), ([1.5, 20], TypeError), ("100", TypeError)])
def test_bad_cutoffs_are_rejected(cutoffs, error):
    with pytest.raises(error, match="cutoffs"):
        wolindex.build(DATA.W, DATA.b, method="adaptive", train=DATA.H_train, cutoffs=cutoffs, **FAST)


def test_bad_settings_are_rejected(index):
    with pytest.raises(ValueError, match="train"):
        wolindex.build(DATA.W, DATA.b, method="adaptive", verbose=False)
    with pytest.raises(ValueError, match="gate_target"):
        wolindex.build(DATA.W, DATA.b, method="adaptive", train=DATA.H_train, gate_target="min", **FAST)
    with pytest.raises(ValueError, match="mode"):
        index.search(DATA.H_test, 5, mode="exact")
    with pytest.raises(ValueError, match="margin"):
        index.search(DATA.H_test, 5, margin=float("nan"))
    with pytest.raises(ValueError, match="beat_rank"):
        index.search(DATA.H_test, 5, beat_rank=-1)


def test_cutoff_helpers():
    assert geometric_cutoffs(100, 10, 10, 2.0).tolist() == [10, 20, 40, 80]  # head 10, clusters 10, 20, 40, 20
    assert geometric_cutoffs(100, 10, 40, 1.0).tolist() == [10, 50]          # a last cluster of 10 joins: 40, 50
    assert check_cutoffs(np.array([3, 7]), 10).tolist() == [3, 7]
    # one query, head [0, 2), clusters [2, 4), [4, 10); the query's tail hits lie at ranks 2 and 3 only
    cost = ideal_opening_cost(np.array([2, 4]), np.array([0, 0]), np.array([2, 3]), 1, 10)
    assert cost == 2 + 2 + 2
    logits = np.tile(np.arange(10, 0, -1, dtype=np.float32), (4, 1))   # frequency order = logit order
    cutoffs, cost = choose_cutoffs([logits], 10, 1)
    assert cutoffs[0] >= 1 and cost >= cutoffs[0]


def test_merge_topk_orders_by_score_then_label():
    s, lab = merge_topk(np.array([[3.0, 1.0, -np.inf]], np.float32), np.array([[5, 2, -1]]),
                        np.array([[3.0, 2.0, 1.0]], np.float32), np.array([[4, 9, 0]]))
    assert lab.tolist() == [[4, 5, 9]] and s.tolist() == [[3.0, 3.0, 2.0]]
