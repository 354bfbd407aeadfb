"""The candidate engine (fused and grouped paths) against its NumPy reference and the full logits."""
import numpy as np
import pytest

from wolindex.engine import Buckets, PackedRows, candidate_topk, dispatch
from helpers import assert_topk_matches, random_layer, random_queries


def random_buckets(n_classes, n_buckets, rng, max_size=60):
    """Overlapping buckets of random sizes, some empty; class ids unique within a bucket."""
    lists = []
    for i in range(n_buckets):
        size = 0 if i % 7 == 3 else int(rng.integers(1, max_size))
        lists.append(np.sort(rng.choice(n_classes, size=min(size, n_classes), replace=False)))
    return Buckets.from_lists(lists)


def candidate_mask(buckets, probes, n_classes):
    mask = np.zeros((probes.shape[0], n_classes), bool)
    for i, row in enumerate(probes):
        for q in row[row >= 0]:
            mask[i, buckets.indices[buckets.indptr[q]:buckets.indptr[q + 1]]] = True
    return mask


@pytest.mark.parametrize("path", ["fused", "grouped", "auto"])
@pytest.mark.parametrize("n,m,k", [(1, 1, 5), (3, 2, 10), (40, 3, 7), (200, 4, 30), (9, 5, 200)])
def test_candidates_match_reference(path, n, m, k):
    rng = np.random.default_rng(n * 10 + m)
    W, b = random_layer(800, 20, seed=m)
    H = random_queries(n, 20, seed=k)
    buckets = random_buckets(800, 25, rng)
    probes = rng.integers(-1, 25, (n, m)).astype(np.int32)
    probes[0, :] = probes[0, 0]  # the same bucket probed m times
    scores, labels, n_scored = candidate_topk(W, b, H, k, buckets, probes, path=path)
    ref_s, ref_l, ref_n = candidate_topk(W, b, H, k, buckets, probes, engine="numpy")
    logits = H.astype(np.float64) @ W.T.astype(np.float64) + b
    mask = candidate_mask(buckets, probes, 800)
    assert_topk_matches(scores, labels, logits, k, cand_mask=mask)
    assert_topk_matches(ref_s, ref_l, logits, k, cand_mask=mask)
    np.testing.assert_array_equal(ref_n, mask.sum(axis=1))
    if path == "fused":
        np.testing.assert_array_equal(n_scored, ref_n)
    else:
        assert np.all(n_scored >= ref_n)


def test_all_empty_probes_pad():
    W, b = random_layer(50, 4)
    buckets = Buckets.from_lists([np.array([], np.int64), np.array([3, 4])])
    probes = np.array([[-1, 0], [1, -1]], np.int32)
    for path in ("fused", "grouped"):
        scores, labels, n = candidate_topk(W, b, random_queries(2, 4), 3, buckets, probes, path=path)
        assert labels[0].tolist() == [-1, -1, -1] and np.isneginf(scores[0]).all()
        assert sorted(labels[1, :2].tolist()) == [3, 4] and labels[1, 2] == -1
        assert n.tolist() == [0, 2]


def test_probing_everything_is_exact():
    rng = np.random.default_rng(3)
    W, b = random_layer(600, 12)
    H = random_queries(30, 12)
    assignment = rng.integers(0, 10, 600)
    buckets = Buckets.from_assignment(assignment, 10)
    probes = np.tile(np.arange(10, dtype=np.int32), (30, 1))
    logits = H.astype(np.float64) @ W.T.astype(np.float64) + b
    for path in ("fused", "grouped"):
        scores, labels, n = candidate_topk(W, b, H, 10, buckets, probes, path=path)
        assert_topk_matches(scores, labels, logits, 10)
        assert np.all(n == 600)


def test_fused_and_grouped_agree_on_shared_buckets(monkeypatch):
    """Many queries per bucket (the grouped path's case), with small work items and query blocks."""
    rng = np.random.default_rng(5)
    W, b = random_layer(2000, 40)
    H = random_queries(300, 40)
    buckets = Buckets.from_assignment(rng.integers(0, 8, 2000), 8)
    probes = rng.integers(0, 8, (300, 2)).astype(np.int32)
    assert dispatch.choose_path(probes) == "grouped"
    fused = candidate_topk(W, b, H, 10, buckets, probes, path="fused")
    monkeypatch.setattr(dispatch, "ITEM_QUERIES", 5)
    monkeypatch.setattr(dispatch, "QUERY_BLOCK", 64)
    grouped = candidate_topk(W, b, H, 10, buckets, probes, path="grouped")
    np.testing.assert_array_equal(fused[1], grouped[1])
    np.testing.assert_allclose(fused[0], grouped[0], rtol=1e-5)


def test_stamps_survive_many_calls(monkeypatch):
    """The visited-stamp workspace is reused across calls and reset before its counter overflows."""
    monkeypatch.setattr(dispatch, "_STAMP_LIMIT", 50)
    W, b = random_layer(100, 8)
    buckets = Buckets.from_lists([np.arange(0, 60), np.arange(40, 100)])
    H = random_queries(7, 8)
    probes = np.array([[0, 1]] * 7, np.int32)
    first = candidate_topk(W, b, H, 5, buckets, probes, path="fused")
    for _ in range(20):
        again = candidate_topk(W, b, H, 5, buckets, probes, path="fused")
        np.testing.assert_array_equal(first[1], again[1])
        assert np.all(again[2] == 100)


@pytest.mark.parametrize("probes,error", [
    (np.array([[0, 5]]), ValueError), (np.array([[-2]]), ValueError), (np.array([0]), ValueError),
    (np.array([[0.0]]), TypeError), (np.zeros((2, 1), int), ValueError),
])
def test_bad_probes(probes, error):
    W, b = random_layer(10, 2)
    buckets = Buckets.from_lists([np.arange(5), np.arange(5, 10)])
    with pytest.raises(error, match="probes"):
        candidate_topk(W, b, random_queries(1, 2), 2, buckets, probes)


def test_bucket_validation():
    Buckets.from_lists([np.arange(3), np.arange(2)]).validate(3)
    with pytest.raises(ValueError, match="class ids"):
        Buckets.from_lists([np.arange(4)]).validate(3)
    with pytest.raises(ValueError, match="indptr"):
        Buckets(np.array([0, 5], np.int64), np.arange(3, dtype=np.int32)).validate(10)
    with pytest.raises(ValueError, match="twice"):
        Buckets.from_lists([np.array([1, 1])]).validate(3)


@pytest.mark.parametrize("path", ["fused", "grouped"])
def test_packed_rows_give_the_same_results(path):
    rng = np.random.default_rng(8)
    W, b = random_layer(900, 24)
    H = random_queries(60, 24)
    buckets = random_buckets(900, 30, rng)
    probes = rng.integers(-1, 30, (60, 3)).astype(np.int32)
    packed = PackedRows.of(buckets, W, b)
    packed.validate(buckets, 24)
    plain = candidate_topk(W, b, H, 12, buckets, probes, path=path)
    fast = candidate_topk(W, b, H, 12, buckets, probes, path=path, packed=packed)
    ref = candidate_topk(W, b, H, 12, buckets, probes, engine="numpy", packed=packed)
    for x, y in zip(plain, fast):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(ref[1], plain[1])


@pytest.mark.parametrize("path", ["fused", "grouped"])
def test_rows_stored_in_another_order_give_the_same_results(path):
    """Entries read through row_of from a permuted copy of W (an index's storage order) score as W itself
    (to the last ulps: rows pair differently in the register tiles)."""
    rng = np.random.default_rng(9)
    W, b = random_layer(700, 16)
    H = random_queries(40, 16)
    buckets = random_buckets(700, 25, rng)
    probes = rng.integers(-1, 25, (40, 4)).astype(np.int32)
    order = rng.permutation(700)
    class_row = np.argsort(order).astype(np.int32)
    shared = PackedRows(np.ascontiguousarray(W[order]), b[order], class_row[buckets.indices])
    plain = candidate_topk(W, b, H, 9, buckets, probes, path=path)
    for engine in ("numba", "numpy"):
        got = candidate_topk(W, b, H, 9, buckets, probes, path=path, engine=engine, packed=shared)
        np.testing.assert_allclose(got[0], plain[0], rtol=1e-5)
        np.testing.assert_array_equal(got[1], plain[1])
    np.testing.assert_array_equal(candidate_topk(W, b, H, 9, buckets, probes, path=path, packed=shared)[2], plain[2])


def test_packed_rows_validation():
    buckets = Buckets.from_lists([np.arange(3)])
    with pytest.raises(ValueError, match="packed: row_of must be int32 of shape"):
        PackedRows.from_arrays(np.zeros((2, 4), np.float32), np.zeros(2, np.float32)).validate(buckets, 4)
    with pytest.raises(ValueError, match="packed: W"):
        PackedRows.from_arrays(np.zeros((3, 5), np.float32), np.zeros(3, np.float32)).validate(buckets, 4)
    with pytest.raises(ValueError, match="packed: b"):
        PackedRows(np.zeros((3, 4), np.float32), np.zeros(2, np.float32), np.arange(3, dtype=np.int32)).validate(
            buckets, 4)
