"""Real-data regression tests: every approximate method on debian-lm-100k (needs WOLINDEX_DATA; see conftest's
lm_data), small enough for CI (well under 3 minutes for the whole file on 2 cores).

The layer is cut to the N_CLASSES classes most frequent in y_train (a sub-layer of the real W, b); the
approximate methods learn from N_TRAIN training-split hidden states whose labels fall in it, and are measured
on N_QUERIES held-out validation-split states (H_valid, never the training split) against exact search of
the same sub-layer:
  P@1       agreement with the exact top-1 (tie-aware),
  R_true@1  the true next word ranked first (labels outside the sub-layer count as misses),
  n_scored  mean classes scored per query (return_n_scored=True).
Each method's build and search settings are pinned in METHODS, and each measure has a limit with the value
observed when it was set (seed SEED) beside it: P@1 floors leave at most 1.5x the observed miss rate,
R_true@1 floors at most 1.5x the observed recall lost against exact search, n_scored ceilings 1.5x the
observed mean. Everything is seeded, so the observed values repeat exactly from run to run on one machine;
a method that gets worse (or costlier) fails here. After a deliberate change, re-measure and update the
constants (run with -s: each test prints what it saw)."""
import numpy as np
import pytest

import wolindex
from wolindex.metrics import mean_candidates, p_at_k, true_recall_at_k
from helpers import assert_topk_matches

pytestmark = pytest.mark.data

SEED = 0
N_CLASSES = 10_000     # most frequent classes of y_train
N_TRAIN = 10_000       # training-split states (labels in the sub-layer) for the learned methods
N_QUERIES = 4096       # held-out validation-split states
N_CERTIFIED = 384      # queries of the certified-mode test
K = 10

# method: (build settings, search settings), pinned so that a change of defaults does not move the figures
METHODS = {
    "adaptive": ({"cost_queries": 512, "seed": SEED}, {"mode": "approximate", "margin": 2.0}),
    "ds": ({"n_experts": 16, "lasso": 0.003, "epochs_per_stage": 0.25, "final_epochs": 0.5, "seed": SEED},
           {"n_probe": 1}),
    "lss": ({"n_tables": 2, "n_buckets": 128, "rounds": 1, "train_on": "labels", "max_copies": 2, "seed": SEED},
            {"n_probe": 2}),
    "screen": ({"rank": 48}, {"n_candidates": 32}),
    "faiss-ivf": ({"nlist": 128, "seed": SEED}, {"n_probe": 16, "k_factor": 1}),
    "faiss-hnsw": ({"m": 16, "ef_construction": 40}, {"ef_search": 64, "k_factor": 1}),
    "faiss-ivfpq": ({"nlist": 128, "m": 16, "seed": SEED}, {"n_probe": 16, "k_factor": 8}),
}
LEARNED = ("adaptive", "ds", "lss", "screen")   # built from the training states (and their labels)

# method: (floor, where it comes from); floor >= 1 - 1.5 * (1 - observed)
P1_FLOORS = {
    "adaptive": (0.948, "observed 0.9648, seed 0"),
    "ds": (0.885, "observed 0.9233, seed 0"),
    "lss": (0.744, "observed 0.8289, seed 0"),
    "screen": (0.819, "observed 0.8799, seed 0"),
    "faiss-ivf": (0.808, "observed 0.8716, seed 0"),
    "faiss-hnsw": (0.79, "observed 0.8594, seed 0"),
    "faiss-ivfpq": (0.357, "observed 0.5710, seed 0"),
}
# method: (floor, where it comes from); floor >= exact - 1.5 * (exact - observed), exact R_true@1 = EXACT_RECALL
EXACT_RECALL = (0.2971, "observed 0.2971, seed 0")   # exact search of the sub-layer, same queries (checked too)
RECALL_FLOORS = {
    "adaptive": (0.289, "observed 0.2913, seed 0"),
    "ds": (0.278, "observed 0.2842, seed 0"),
    "lss": (0.254, "observed 0.2678, seed 0"),
    "screen": (0.268, "observed 0.2778, seed 0"),
    "faiss-ivf": (0.261, "observed 0.2729, seed 0"),
    "faiss-hnsw": (0.238, "observed 0.2571, seed 0"),
    "faiss-ivfpq": (0.174, "observed 0.2148, seed 0"),
}
# method: (ceiling on the mean classes scored per query, where it comes from); ceiling <= 1.5 * observed (the
# faiss methods rescore exactly k * k_factor candidates, so theirs only guards that contract)
SCORED_CEILINGS = {
    "adaptive": (3344, "observed 2229.9, seed 0"),
    "ds": (2833, "observed 1888.9, seed 0"),
    "lss": (1037, "observed 691.7, seed 0"),
    "screen": (48, "observed 32.0 (n_candidates), seed 0"),
    "faiss-ivf": (15, "observed 10.0, seed 0"),
    "faiss-hnsw": (15, "observed 10.0, seed 0"),
    "faiss-ivfpq": (120, "observed 80.0, seed 0"),
}
# the certified screen's mean classes rescored per query: (ceiling, where it comes from), ceiling <= 1.5 x observed
SCREEN_CERTIFIED_CEILING = (56, "observed 37.9, seed 0")
# screened LSS (screen=32) against the same probes scored exactly: (P@1 floor, where it comes from)
SCREENED_LSS_AGREEMENT = (0.999, "observed 1.0000, seed 0")
# certified mode's bounds are loose on this layer (at the default bound_block=128 it scores all 10,000 classes;
# on the whole layer 99 % in the benchmarks): small blocks make it skip some (observed 9294.1 of 10,000 per
# query, seed 0), so the bounds are put to the test
CERTIFIED_BUILD = {**METHODS["adaptive"][0], "bound_block": 4}


class SubLayer:
    """The real layer cut to its N_CLASSES most frequent classes, with training and held-out queries
    (float32) and their labels in sub-layer ids (-1: the true word is outside the sub-layer)."""

    def __init__(self, data):
        rng = np.random.default_rng(SEED)
        counts = np.bincount(data.y_train, minlength=data.n_classes)
        keep = np.sort(np.argsort(-counts, kind="stable")[:N_CLASSES])
        new_id = np.full(data.n_classes, -1, np.int64)
        new_id[keep] = np.arange(N_CLASSES)
        self.W = np.asarray(data.W[keep], np.float32)
        self.b = np.asarray(data.b[keep], np.float32)
        y_train = new_id[np.asarray(data.y_train)]
        rows = np.sort(rng.choice(np.flatnonzero(y_train >= 0), N_TRAIN, replace=False))
        self.H_train = np.asarray(data.H_train[rows], np.float32)
        self.y_train = y_train[rows]
        rows = np.sort(rng.choice(len(data.y_test), N_QUERIES, replace=False))
        self.H = np.asarray(data.H_test[rows], np.float32)
        self.y = new_id[np.asarray(data.y_test)[rows]]
        self.exact_scores, self.exact_labels = wolindex.build(self.W, self.b, verbose=False).search(self.H, K)
        self.indexes = {}

    def index(self, method, build=None):
        """The method's index over the sub-layer (with METHODS' build settings, or `build`), built once."""
        build = METHODS[method][0] if build is None else build
        key = (method, tuple(sorted(build.items())))
        if key not in self.indexes:
            learned = {"train": self.H_train, "labels": self.y_train} if method in LEARNED else {}
            self.indexes[key] = wolindex.build(self.W, self.b, method=method, verbose=False, **learned, **build)
        return self.indexes[key]


@pytest.fixture(scope="module")
def sub(lm_data):
    return SubLayer(lm_data)


def test_sub_layer_and_exact_recall(sub):
    """The cut is what the figures assume, and exact search of it finds the true word as often as when the
    floors were set."""
    assert sub.W.shape == (N_CLASSES, 256) and sub.H.shape == (N_QUERIES, 256)
    assert np.all(sub.y_train >= 0) and np.all(sub.y_train < N_CLASSES)
    recall = true_recall_at_k(sub.exact_labels, sub.y, 1)
    print(f"\nexact: R_true@1={recall:.4f} (labels in sub-layer: {np.mean(sub.y >= 0):.4f})")
    assert recall == pytest.approx(EXACT_RECALL[0], abs=5e-4), f"exact R_true@1 {recall:.4f}; {EXACT_RECALL[1]}"


@pytest.mark.parametrize("method", list(METHODS))
def test_method_accuracy_and_cost(sub, method):
    """P@1 and R_true@1 on held-out queries above their floors, mean classes scored under its ceiling, and
    the same answer when searched again."""
    index = sub.index(method)
    settings = METHODS[method][1]
    scores, labels, n_scored = index.search(sub.H, K, return_n_scored=True, **settings)
    p1 = p_at_k(labels, sub.exact_labels, 1, scores=scores, exact_scores=sub.exact_scores)
    recall = true_recall_at_k(labels, sub.y, 1)
    scored = mean_candidates(n_scored)
    print(f"\n{method}: P@1={p1:.4f} R_true@1={recall:.4f} n_scored={scored:.1f} (max {n_scored.max()})")
    assert p1 >= P1_FLOORS[method][0], f"{method}: P@1 {p1:.4f} < floor {P1_FLOORS[method]}"
    assert recall >= RECALL_FLOORS[method][0], f"{method}: R_true@1 {recall:.4f} < floor {RECALL_FLOORS[method]}"
    assert scored <= SCORED_CEILINGS[method][0], \
        f"{method}: {scored:.1f} classes scored per query > ceiling {SCORED_CEILINGS[method]}"
    # every returned score is the exact logit of its label
    logits = (sub.H[:256].astype(np.float64) @ sub.W.T.astype(np.float64) + sub.b)
    np.testing.assert_allclose(scores[:256], np.take_along_axis(logits, labels[:256], axis=1), rtol=1e-5, atol=1e-4)
    again = index.search(sub.H, K, return_n_scored=True, **settings)
    for got, first in zip(again, (scores, labels, n_scored)):
        np.testing.assert_array_equal(got, first)


def test_adaptive_certified_is_exact(sub):
    """Certified adaptive search returns the exact top-K (tie-aware, against float64 logits) on real
    held-out queries, while its bounds rule out some classes."""
    index = sub.index("adaptive", CERTIFIED_BUILD)
    H = sub.H[:N_CERTIFIED]
    scores, labels, n_scored = index.search(H, K, return_n_scored=True, mode="certified")
    logits = H.astype(np.float64) @ sub.W.T.astype(np.float64) + sub.b
    assert_topk_matches(scores, labels, logits, K)
    scored = mean_candidates(n_scored)
    print(f"\nadaptive certified: n_scored={scored:.1f} (min {n_scored.min()})")
    assert scored < N_CLASSES, "certified: every class scored for every query, so no bound was put to the test"


def test_screen_certified_is_exact(sub):
    """The certified screen (full-d int8 codes) returns the exact top-K (tie-aware, against float64 logits) on
    real held-out queries, rescoring few classes."""
    index = sub.index("screen", {})
    scores, labels, n_scored = index.search(sub.H, K, return_n_scored=True, mode="certified")
    logits = sub.H.astype(np.float64) @ sub.W.T.astype(np.float64) + sub.b
    assert_topk_matches(scores, labels, logits, K)
    scored = mean_candidates(n_scored)
    print(f"\nscreen certified: n_scored={scored:.1f} (max {n_scored.max()})")
    assert scored <= SCREEN_CERTIFIED_CEILING[0], \
        f"certified screen: {scored:.1f} rescored > {SCREEN_CERTIFIED_CEILING}"


def test_screened_lss_keeps_its_accuracy(sub):
    """LSS with its probed buckets screened in int8 (screen=32) loses at most a little P@1 against the same
    probes scored exactly, while rescoring 32 classes per query."""
    index = sub.index("lss", {**METHODS["lss"][0], "screen": True})
    settings = METHODS["lss"][1]
    _, plain = index.search(sub.H, K, **settings)
    _, labels, n_scored = index.search(sub.H, K, screen=32, return_n_scored=True, **settings)
    agree = p_at_k(labels, plain, 1)
    print(f"\nlss + screen: P@1 against unscreened {agree:.4f}, n_scored {mean_candidates(n_scored):.1f}")
    assert agree >= SCREENED_LSS_AGREEMENT[0], f"{agree:.4f} < {SCREENED_LSS_AGREEMENT}"
    assert n_scored.max() <= 32
