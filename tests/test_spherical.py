"""Spherical-softmax layers: classes ranked by (w.h + b)^2 in every method that supports them, and exact
probabilities through h'^T Q h'."""
import numpy as np
import pytest

import wolindex
from conftest import assert_topk_matches, random_layer, random_queries

W, B = random_layer(3000, 16, seed=11)
H = random_queries(300, 16, seed=12)
SQUARES = (H.astype(np.float64) @ W.T.astype(np.float64) + B) ** 2
EPS = 0.05


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
    pytest.importorskip("faiss")
    _, exact_labels = spherical().search(H, 10)
    assert np.array_equal(spherical("faiss-flat").search(H, 10)[1], exact_labels)
    counts = np.random.default_rng(0).integers(0, 100, W.shape[0])
    adaptive = spherical("adaptive", train=random_queries(1500, 16, seed=13), class_counts=counts, cost_queries=256)
    assert np.array_equal(adaptive.search(H, 10, mode="certified")[1], exact_labels)
    _, labels = adaptive.search(H, 10, margin=1e6)
    assert np.array_equal(labels, exact_labels)


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
