"""The exact engine against numpy.argsort of the full logits."""
import numpy as np
import pytest

import wolindex
from wolindex.engine import dispatch, exact_topk
from helpers import assert_topk_matches, random_layer, random_queries


@pytest.mark.parametrize("n_classes,dim,n,k", [
    (1, 1, 1, 1), (7, 3, 5, 7), (1000, 64, 1, 10), (1000, 64, 4, 1), (1001, 33, 9, 10),
    (3000, 16, 37, 100), (500, 128, 130, 500),
])
@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_exact_matches_full_sort(n_classes, dim, n, k, engine):
    W, b = random_layer(n_classes, dim)
    H = random_queries(n, dim)
    scores, labels = wolindex.build(W, b).search(H, k, engine=engine)
    assert scores.dtype == np.float32 and labels.dtype == np.int64 and scores.shape == labels.shape == (n, k)
    logits = H.astype(np.float64) @ W.T.astype(np.float64) + b
    assert_topk_matches(scores, labels, logits, k)


def test_ties_break_by_smaller_id():
    """Integer data makes every logit exact, so ties are real; the smaller class id must come first."""
    W, b = random_layer(2000, 8, integer=True)
    H = random_queries(50, 8, integer=True)
    scores, labels = wolindex.build(W, b).search(H, 20)
    logits = H @ W.T + b
    order = np.lexsort((np.broadcast_to(np.arange(2000), logits.shape), -logits), axis=1)[:, :20]
    np.testing.assert_array_equal(labels, order)
    np.testing.assert_array_equal(scores, np.take_along_axis(logits, order, axis=1))


def test_duplicate_rows_give_equal_scores_in_id_order():
    W, b = random_layer(300, 16)
    W[200], b[200] = W[17], b[17]  # class 200 duplicates class 17
    H = np.ascontiguousarray(W[17:18] * 10)
    scores, labels = wolindex.build(W, b).search(H, 2)
    assert labels[0].tolist() == [17, 200] and scores[0, 0] == scores[0, 1]


def test_query_blocks_bound_memory(monkeypatch):
    """Many queries are processed QUERY_BLOCK at a time with the same results."""
    W, b = random_layer(700, 24)
    H = random_queries(50, 24)
    full = exact_topk(W, b, H, 5)
    monkeypatch.setattr(dispatch, "QUERY_BLOCK", 8)
    blocked = exact_topk(W, b, H, 5)
    np.testing.assert_array_equal(full[1], blocked[1])
    np.testing.assert_allclose(full[0], blocked[0], rtol=1e-6)


def test_serial_and_parallel_kernels_agree(monkeypatch):
    """Small problems run on the calling thread (SERIAL_MAX_WORK); both kernels give the same top-k,
    ties (integer data) included."""
    W, b = random_layer(900, 8, integer=True)
    H = random_queries(6, 8, integer=True)
    monkeypatch.setattr(dispatch, "SERIAL_MAX_WORK", 0)
    parallel = exact_topk(W, b, H, 30)
    monkeypatch.setattr(dispatch, "SERIAL_MAX_WORK", 10**12)
    serial = exact_topk(W, b, H, 30)
    np.testing.assert_array_equal(parallel[1], serial[1])
    np.testing.assert_array_equal(parallel[0], serial[0])
    logits = H @ W.T + b
    order = np.lexsort((np.broadcast_to(np.arange(900), logits.shape), -logits), axis=1)[:, :30]
    np.testing.assert_array_equal(serial[1], order)


def test_same_query_same_answer():
    W, b = random_layer(5000, 32)
    H = random_queries(20, 32)
    index = wolindex.build(W, b)
    first = index.search(H, 10)
    for _ in range(3):
        again = index.search(H, 10)
        np.testing.assert_array_equal(first[0], again[0])
        np.testing.assert_array_equal(first[1], again[1])


def test_n_scored_is_all_classes():
    W, b = random_layer(400, 8)
    _, _, n = wolindex.build(W, b).search(random_queries(3, 8), 4, return_n_scored=True)
    assert n.tolist() == [400, 400, 400]


def test_real_layer_matches_numpy_and_card(lm_data):
    """On debian-lm-100k: same top-10 as float64 numpy on 512 queries, and the card's R_true@1 on the
    whole validation split (0.3014)."""
    W = np.asarray(lm_data.W, np.float32)
    index = wolindex.build(W, lm_data.b)
    H = np.asarray(lm_data.H_test[:512], np.float32)
    scores, labels = index.search(H, 10)
    logits = H.astype(np.float64) @ W.T.astype(np.float64) + lm_data.b
    assert_topk_matches(scores, labels, logits, 10, atol=2e-3)
    _, top1 = index.search(lm_data.H_test, 1)
    recall = float(np.mean(top1[:, 0] == lm_data.y_test))
    assert abs(recall - 0.3014) < 0.0005, recall


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,r,d", [(1, 1, 1), (3, 5, 7), (4, 2, 16), (17, 129, 33), (130, 301, 64)])
@pytest.mark.parametrize("serial_max", [0, 10**12])
def test_query_products_match_numpy(monkeypatch, dtype, n, r, d, serial_max):
    """The engine's products (a search's projections, gates and bounds: no BLAS call) equal H @ V.T + c to
    rounding, on the calling thread and in parallel, for tails of the 2 x 4 register tiles."""
    monkeypatch.setattr(dispatch, "SERIAL_MAX_WORK", serial_max)
    rng = np.random.default_rng(n * r + d)
    H, V, c = (rng.standard_normal(shape).astype(dtype) for shape in ((n, d), (r, d), (r,)))
    got = dispatch.query_products(H, V, c)
    assert got.dtype == dtype and got.shape == (n, r)
    ref = H.astype(np.float64) @ V.T.astype(np.float64) + c
    tol = (d + 2) * np.finfo(dtype).eps * (np.abs(H).astype(np.float64) @ np.abs(V).T.astype(np.float64) + np.abs(c))
    assert (np.abs(got - ref) <= tol).all()
    np.testing.assert_array_equal(dispatch.query_products(H, V), dispatch.query_products(H, V, np.zeros(r, dtype)))


def test_query_products_integer_data_exact_and_bad_arguments():
    H, V = random_queries(9, 12, integer=True), random_queries(20, 12, seed=3, integer=True)
    np.testing.assert_array_equal(dispatch.query_products(H, V), H @ V.T)
    with pytest.raises(TypeError, match="one dtype"):
        dispatch.query_products(H, V.astype(np.float64))
    with pytest.raises(TypeError, match="one dtype"):
        dispatch.query_products(H.astype(np.int32), V.astype(np.int32))
    with pytest.raises(ValueError, match="H, V"):
        dispatch.query_products(H, V[:, :5])
    with pytest.raises(ValueError, match="c: expected shape"):
        dispatch.query_products(H, V, np.zeros(3, np.float32))
    assert dispatch.query_products(H[:0], V).shape == (0, 20)
