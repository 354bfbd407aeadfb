"""Adaptive-softmax frequency clusters: certified mode = exact search (ties included), approximate mode
accuracy floors and monotonicity, cutoffs (checked, chosen), save / load."""
import tracemalloc

import numpy as np
import pytest

import wolindex
from wolindex.contrib.datasets import synthetic
from wolindex.engine.dispatch import merge_topk
from wolindex.methods import adaptive
from wolindex.methods.adaptive.clusters import (check_cutoffs, choose_cutoffs, geometric_cutoffs,
                                                 ideal_opening_cost, opened_rows)
from wolindex.metrics import p_at_k
from helpers import assert_topk_matches, random_layer, random_queries

DATA = synthetic(n_classes=5000, dim=32, n_train=6000, n_test=600, seed=3)
FAST = dict(cost_queries=512, verbose=False)
EXACT_S, EXACT_L = wolindex.build(DATA.W, DATA.b).search(DATA.H_test, 10)

# Floors (accuracy, >=) and ceilings (work, <=) of the approximate and certified modes, each with what was
# observed on its seeded data (deterministic; DATA is synthetic seed 3, 600 test queries). Each is set
# within 1.5x of the observation: a ceiling at most 1.5x the observed work, a floor leaving at most 1.5x
# the observed miss rate.
FLOORS = {
    "margin4_p1": (1.0, "observed 1.000, margin=4, DATA seed 3"),
    "margin4_p10": (0.986, "observed 0.9902, margin=4, DATA seed 3"),
    "margin1_scored_fraction": (0.15, "observed 0.1064 of D, margin=1, DATA seed 3"),
    "beat_rank1_scored_ratio": (0.2, "observed 529 / 3,939 = 0.134 classes scored, margin=4, DATA seed 3"),
    "beat_rank1_p1": (0.95, "observed 0.960, margin=4, DATA seed 3"),
    "mass_p1": (0.9925, "observed 0.995, gate_target='mass', margin=2, DATA seed 3"),
    "mass_p10": (0.925, "observed 0.9478, gate_target='mass', margin=2, DATA seed 3"),
    "mass_scored_fraction": (0.64, "observed 0.427 of D, gate_target='mass', margin=2, DATA seed 3"),
    "certified_separated_scored_fraction_k1": (0.21, "observed 0.1410 of D, separated(), rng seed 0"),
    "certified_separated_scored_fraction_k5": (0.30, "observed 0.2058 of D, separated(), rng seed 0"),
}


@pytest.fixture(scope="module")
def index():
    return wolindex.build(DATA.W, DATA.b, method="adaptive", train=DATA.H_train, class_counts=DATA.class_counts,
                          **FAST)


@pytest.mark.parametrize("path", ["fused", "grouped"])
@pytest.mark.parametrize("k", [1, 7])
def test_certified_is_exact_on_structured_data(index, path, k):
    """On this synthetic layer the bounds cannot prune (observed 0.993 of the classes scored at k=1, all at
    k=7: |h| is large against the spread of the blocks), so only exactness is checked here; the pruning is
    checked on separated groups (test_certified_skips_blocks_when_bounds_allow)."""
    scores, labels, n_scored = index.search(DATA.H_test, k, mode="certified", path=path, return_n_scored=True)
    logits = DATA.H_test.astype(np.float64) @ DATA.W.T.astype(np.float64) + DATA.b
    assert_topk_matches(scores, labels, logits, k)
    assert np.array_equal(labels, EXACT_L[:, :k])
    assert np.all(n_scored <= DATA.n_classes)


@pytest.mark.parametrize("integer", [False, True])
def test_certified_is_exact_on_random_data_with_ties(integer):
    """Integer weights and queries make every logit exact and ties common: the certified top-k must be the
    exact one, ties broken by the smaller id, as exact search does. (Random rows: nothing to prune, every
    class is scored; pruning is checked in test_certified_skips_blocks_when_bounds_allow.)"""
    W, b = random_layer(3000, 16, seed=5, integer=integer)
    H = random_queries(200, 16, seed=6, integer=integer)
    counts = np.random.default_rng(7).integers(0, 50, 3000)
    idx = wolindex.build(W, b, method="adaptive", train=random_queries(1000, 16, seed=8, integer=integer),
                         class_counts=counts, bound_block=32, **FAST)
    exact_s, exact_l = wolindex.build(W, b).search(H, 10)
    scores, labels = idx.search(H, 10, mode="certified")
    assert np.array_equal(labels, exact_l)
    np.testing.assert_allclose(scores, exact_s, rtol=0 if integer else 1e-6)  # kernels may round differently


@pytest.fixture(scope="module")
def separated():
    """Well-separated class groups (20 centres, spread 8, rows within 0.1 of theirs; rng seed 0) and queries
    near the centres: an index the certified bounds can prune, and its float64 logits."""
    rng = np.random.default_rng(0)
    centres = 8.0 * rng.standard_normal((20, 16))
    group = rng.integers(0, 20, 4000)
    W = (centres[group] + 0.1 * rng.standard_normal((4000, 16))).astype(np.float32)
    b = np.zeros(4000, np.float32)
    H = (centres[rng.integers(0, 20, 300)] + 0.1 * rng.standard_normal((300, 16))).astype(np.float32)
    idx = wolindex.build(W, b, method="adaptive", train=H, class_counts=rng.integers(0, 9, 4000),
                         cutoffs=[100, 1000], bound_block=100, **FAST)
    return idx, W, b, H, H.astype(np.float64) @ W.T.astype(np.float64) + b


@pytest.mark.parametrize("path", ["fused", "grouped"])
@pytest.mark.parametrize("k", [1, 5])
def test_certified_skips_blocks_when_bounds_allow(separated, path, k):
    """The logit-layer counterpart of test_spherical's test_certified_bound_covers_the_negative_end: on
    well-separated class groups the bounds must rule most blocks out (a ceiling on the classes scored), and
    the answer stays the exact top-k (tie-aware, and the labels of exact search)."""
    idx, W, b, H, logits = separated
    scores, labels, n_scored = idx.search(H, k, mode="certified", path=path, return_n_scored=True)
    ceiling, observed = FLOORS[f"certified_separated_scored_fraction_k{k}"]
    assert n_scored.mean() <= ceiling * idx.n_classes, (n_scored.mean() / idx.n_classes, observed)
    assert_topk_matches(scores, labels, logits, k)
    assert np.array_equal(labels, wolindex.build(W, b).search(H, k)[1])


def test_approximate_accuracy_floor_and_monotone_margin(index):
    p1, p10, scored = [], [], []
    for margin in (-1.0, 0.0, 1.0, 2.0, 4.0):
        _, labels, n = index.search(DATA.H_test, 10, margin=margin, return_n_scored=True)
        p1.append(p_at_k(labels, EXACT_L, 1))
        p10.append(p_at_k(labels, EXACT_L, 10))
        scored.append(n.mean())
    assert p1[-1] >= FLOORS["margin4_p1"][0] and p10[-1] >= FLOORS["margin4_p10"][0], (p1, p10)
    assert np.all(np.diff(p10) >= 0) and np.all(np.diff(scored) >= 0)
    assert scored[2] <= FLOORS["margin1_scored_fraction"][0] * DATA.n_classes, scored[2] / DATA.n_classes
    _, labels = index.search(DATA.H_test, 10, margin=1e6)
    assert np.array_equal(labels, EXACT_L)


def test_beat_rank_one_opens_fewer_clusters(index):
    _, labels_k, n_k = index.search(DATA.H_test, 10, margin=4.0, return_n_scored=True)
    _, labels_1, n_1 = index.search(DATA.H_test, 10, margin=4.0, beat_rank=1, return_n_scored=True)
    assert n_1.mean() <= FLOORS["beat_rank1_scored_ratio"][0] * n_k.mean(), (n_1.mean(), n_k.mean())
    assert p_at_k(labels_1, EXACT_L, 1) >= FLOORS["beat_rank1_p1"][0]


def _cluster_classes(idx):
    """Class ids of each tail cluster of an adaptive index (the union of its bounding blocks; bucket 0 is
    the head)."""
    ptr, buckets = idx.method.arrays["cluster_ptr"], idx.method.buckets
    return [buckets.indices[buckets.indptr[1 + ptr[j]]:buckets.indptr[1 + ptr[j + 1]]] for j in range(ptr.size - 1)]


def test_gate_target_mass_fits_the_log_mass_and_searches_well(index):
    """gate_target='mass' (BENCHMARKS.md: the paper's quantity, the log of the cluster's softmax mass) builds,
    keeps the cutoffs, and its gates differ from the default ('max') ones the way the targets do: a least-
    squares gate with a free intercept has the mean of its target over the training queries, so per cluster
    the mean gate equals the mean log-sum-exp ('mass') or the mean best logit ('max') of its classes. It
    searches with recall floors against exact search at the default margin."""
    mass = wolindex.build(DATA.W, DATA.b, method="adaptive", train=DATA.H_train, class_counts=DATA.class_counts,
                          gate_target="mass", **FAST)
    assert index.build_params.gate_target == "max" and mass.build_params.gate_target == "mass"
    assert mass.method.state["cutoffs"] == index.method.state["cutoffs"]
    clusters = _cluster_classes(index)
    assert all(np.array_equal(a, c) for a, c in zip(clusters, _cluster_classes(mass)))
    H64 = DATA.H_train.astype(np.float64)
    target_max, target_mass = np.zeros(len(clusters)), np.zeros(len(clusters))
    for lo in range(0, H64.shape[0], 1000):
        logits = H64[lo:lo + 1000] @ DATA.W.T.astype(np.float64) + DATA.b
        for j, rows in enumerate(clusters):
            best = logits[:, rows].max(axis=1)
            target_max[j] += best.sum()
            target_mass[j] += (best + np.log(np.exp(logits[:, rows] - best[:, None]).sum(axis=1))).sum()
    target_max /= H64.shape[0]
    target_mass /= H64.shape[0]
    for idx, target in ((index, target_max), (mass, target_mass)):
        gates = H64 @ idx.method.arrays["gate_V"].T.astype(np.float64) + idx.method.arrays["gate_c"]
        np.testing.assert_allclose(gates.mean(axis=0), target, rtol=1e-4, atol=1e-3)
    gap = target_mass - target_max                                # in (0, log |cluster|]: a real difference
    assert np.all(gap > 0.1) and np.all(gap <= np.log([r.size for r in clusters]) + 1e-9)
    _, labels, n = mass.search(DATA.H_test, 10, return_n_scored=True)
    assert p_at_k(labels, EXACT_L, 1) >= FLOORS["mass_p1"][0]
    assert p_at_k(labels, EXACT_L, 10) >= FLOORS["mass_p10"][0]
    assert n.mean() <= FLOORS["mass_scored_fraction"][0] * DATA.n_classes, n.mean() / DATA.n_classes
    _, exact_labels = mass.search(DATA.H_test, 10, mode="certified")
    assert np.array_equal(exact_labels, EXACT_L)


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
    opened = opened_rows(np.array([2, 4]), np.array([0, 0]), np.array([2, 3]), 10)
    assert opened == 2 and ideal_opening_cost(np.array([2, 4]), opened, 1) == 2 + 2 + 2
    logits = np.tile(np.arange(10, 0, -1, dtype=np.float32)[:, None], (1, 4))   # frequency order = logit order
    cutoffs, cost = choose_cutoffs([logits], 10, 1)
    assert cutoffs[0] >= 1 and cost >= cutoffs[0]


def test_log_scores_by_rank_are_the_logits_of_the_given_classes_in_order(monkeypatch):
    """A block of queries' scores, a few rows of W at a time, land at their classes' places, on a layer stored
    in the caller's order and on one with permuted rows, for all classes or a subset; every block is exact."""
    from wolindex.layer import OutputLayer
    from wolindex.methods.adaptive import gates

    monkeypatch.setattr(gates, "PRODUCT_CELLS", 50)
    monkeypatch.setattr(gates, "SCORE_CELLS", 300 * 7)
    W, b = random_layer(300, 6, seed=51)
    H = random_queries(40, 6, seed=52)
    layer = OutputLayer(W, b)
    permuted = layer.permuted(np.random.default_rng(53).permutation(300))
    for on in (layer, permuted):
        for classes in (np.random.default_rng(54).permutation(300), np.arange(250, 10, -3)):
            blocks = [block.copy() for block in gates.log_scores_by_rank(on, classes, H, False, "")]
            assert [x.shape[1] for x in blocks] == [7] * 5 + [5]
            np.testing.assert_allclose(np.concatenate(blocks, axis=1), (H @ W[classes].T + b[classes]).T,
                                       rtol=1e-5, atol=1e-5)


def test_merge_topk_orders_by_score_then_label():
    s, lab = merge_topk(np.array([[3.0, 1.0, -np.inf]], np.float32), np.array([[5, 2, -1]]),
                        np.array([[3.0, 2.0, 1.0]], np.float32), np.array([[4, 9, 0]]))
    assert lab.tolist() == [[4, 5, 9]] and s.tolist() == [[3.0, 3.0, 2.0]]


def test_smallest_settings_and_array_cutoffs_are_taken():
    """The lower bounds of the build settings are inclusive (cost_k=1, cost_queries=1, bound_block=1) and
    cutoffs may come as a 1-D NumPy array (a 2-D one is refused)."""
    W, b = random_layer(400, 8, seed=31)
    H = random_queries(300, 8, seed=32)
    counts = np.random.default_rng(33).integers(0, 50, 400)
    built = wolindex.build(W, b, method="adaptive", train=H, class_counts=counts, cost_k=1, cost_queries=1,
                           bound_block=1, cutoffs=np.array([50, 200]), verbose=False)
    assert built.build_params.cutoffs == (50, 200)
    assert built.search(H[:5], 3, mode="certified")[1].shape == (5, 3)
    with pytest.raises((TypeError, ValueError), match="cutoffs"):
        wolindex.build(W, b, method="adaptive", train=H, class_counts=counts, cutoffs=np.array([[50, 200]]),
                       verbose=False)
