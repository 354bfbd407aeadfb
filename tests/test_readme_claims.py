"""README claims that no other test holds: "Results are sorted best first; ties are broken by the smaller
class id" for every candidate method (adaptive, ds, lss and its screened search, screen and its certified mode,
faiss-*), on integer layers where ties are real."""
import numpy as np
import pytest

import wolindex
from helpers import random_layer, random_queries

D, DIM, K = 600, 8, 20
W, B = random_layer(D, DIM, seed=0, integer=True)
H = random_queries(50, DIM, seed=1, integer=True)
H_TRAIN = random_queries(2000, DIM, seed=2, integer=True)
LOGITS = H @ W.T + B                                   # exact: small integers in float32
ORDER = np.lexsort((np.broadcast_to(np.arange(D), LOGITS.shape), -LOGITS), axis=1)[:, :K]   # score, then id
# in most rows, classes tied at the k-th score fall on both sides of it (test_the_data_has_ties_at_the_boundary),
# so a method that keeps any but the smallest ids among them is caught; floor (>=) within 1.5x of the observed
FLOORS = {"rows_with_ties_across_the_kth": (40, "observed 44 of 50, layer seed 0, queries seed 1")}

# method -> (build settings, search settings that reach every class)
EVERYTHING = {
    "adaptive": ({"train": H_TRAIN, "cutoffs": [50, 200], "cost_queries": 256, "bound_block": 64},
                 [{"mode": "certified"}, {"margin": 1e6}]),
    "ds": ({"train": H_TRAIN, "n_experts": 4, "start_experts": 2, "epochs_per_stage": 1.0, "final_epochs": 1.0,
            "batch_size": 256}, [{"n_probe": 4}]),
    "lss": ({"train": H_TRAIN, "n_buckets": 8, "n_tables": 2, "rounds": 1, "screen": True},
            [{"n_probe": 8}, {"n_probe": 8, "screen": D}]),
    "screen": ({}, [{"n_candidates": D}, {"mode": "certified"}]),
    # FAISS methods: every list / node, and k_factor * K = D candidates rescored
    "faiss-flat": ({}, [{"k_factor": D // K}]),
    "faiss-ivf": ({"nlist": 8}, [{"n_probe": 8, "k_factor": D // K}]),
    "faiss-hnsw": ({}, [{"ef_search": D, "k_factor": D // K}]),
    "faiss-ivfpq": ({"nlist": 8}, [{"n_probe": 8, "k_factor": D // K}]),
}


def build(method):
    if method.startswith("faiss"):
        pytest.importorskip("faiss")
    return wolindex.build(W, B, method=method, verbose=False, **EVERYTHING[method][0])


def test_the_data_has_ties_at_the_boundary():
    kth = np.take_along_axis(LOGITS, ORDER[:, -1:], axis=1)
    straddle = (LOGITS >= kth).sum(axis=1) > K            # classes tied at the k-th score on both sides of it
    assert straddle.sum() >= FLOORS["rows_with_ties_across_the_kth"][0], straddle.sum()


@pytest.mark.parametrize("method", list(EVERYTHING))
def test_ties_break_by_smaller_id_when_every_class_is_reached(method):
    index = build(method)
    paths = ("fused", "grouped") if method in ("adaptive", "ds", "lss") else (None,)
    for settings in EVERYTHING[method][1]:
        for path in paths:
            extra = {"path": path} if path else {}
            scores, labels = index.search(H, K, **settings, **extra)
            np.testing.assert_array_equal(labels, ORDER, err_msg=f"{method} {settings} {extra}")
            np.testing.assert_array_equal(scores, np.take_along_axis(LOGITS, ORDER, axis=1))


@pytest.mark.xfail(strict=True, reason="documented in the README: faiss-flat / faiss-ivf at k_factor=1 "
                   "(the default) take the k candidates FAISS keeps, and FAISS's heap keeps the larger ids "
                   "among classes tied at the k-th score, so the smaller tied ids never reach the rescoring")
@pytest.mark.parametrize("method, settings", [("faiss-flat", {}), ("faiss-ivf", {"n_probe": 8})])
def test_faiss_default_k_factor_breaks_ties_by_smaller_id(method, settings):
    """FAISS's inner products are exact here (small integers) and every list is probed, so the only thing
    between FAISS's candidates and the exact top-k is the tie order. The smallest case: classes 0 and 1
    tie at 1 below class 2 at 2; the top-2 must be [2, 0]."""
    pytest.importorskip("faiss")
    small = wolindex.build(np.array([[1.0], [1.0], [2.0]], np.float32), np.zeros(3, np.float32), method=method,
                           verbose=False, **({"nlist": 1} if method == "faiss-ivf" else {}))
    assert small.search(np.ones((1, 1), np.float32), 2, **({"n_probe": 1} if method == "faiss-ivf" else {}))[1
                        ].tolist() == [[2, 0]]
    _, labels = build(method).search(H, K, **settings)
    np.testing.assert_array_equal(labels, ORDER)
