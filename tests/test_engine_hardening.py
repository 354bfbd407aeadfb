"""Engine entry points check what they are handed (class ids, buckets, packed rows, shapes, dtypes) before a
kernel reads it: a bad argument is a ValueError / TypeError naming it, never an out-of-bounds access."""
import tracemalloc

import numpy as np
import pytest

from wolindex.engine import buckets as buckets_module
from wolindex.engine import Buckets, PackedRows, candidate_topk, exact_topk, rescore_topk
from helpers import random_layer, random_queries

W, B = random_layer(50, 8)
H = random_queries(3, 8)
PROBES = np.array([[0, 1]] * 3, np.int32)


@pytest.mark.parametrize("engine", ["numba", "numpy"])
@pytest.mark.parametrize("candidates,error,match", [
    (np.array([[0, 50], [1, 2], [3, 4]]), ValueError, r"candidates: class ids must lie in \[-1, 50\)"),
    (np.array([[0, 19771], [1, 2], [3, 4]]), ValueError, "candidates: class ids"),
    (np.array([[0, -2], [1, 2], [3, 4]]), ValueError, "candidates: class ids"),
    (np.full((3, 2), np.iinfo(np.int64).max), ValueError, "candidates: class ids"),
    (np.full((3, 2), 2 ** 32, np.uint64), ValueError, "candidates: class ids"),
    (np.zeros((3, 2), np.float32), TypeError, "candidates: expected an integer dtype"),
    (np.zeros((2, 2), np.int64), ValueError, "candidates: expected shape"),
    (np.zeros(3, np.int64), ValueError, "candidates: expected shape"),
])
def test_rescore_refuses_class_ids_outside_the_layer(engine, candidates, error, match):
    with pytest.raises(error, match=match):
        rescore_topk(W, B, H, 2, candidates, engine=engine)


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_rescore_accepts_faiss_padding_and_repeats(engine):
    cand = np.array([[3, 3, -1, 7], [-1, -1, -1, -1], [49, 0, 0, -1]])
    scores, labels, n_scored = rescore_topk(W, B, H, 3, cand, engine=engine)
    assert n_scored.tolist() == [2, 0, 2]
    assert labels[1].tolist() == [-1, -1, -1] and np.all(np.isneginf(scores[1]))
    assert sorted(labels[0, :2].tolist()) == [3, 7] and labels[0, 2] == -1
    assert sorted(labels[2, :2].tolist()) == [0, 49] and labels[2, 2] == -1


@pytest.mark.parametrize("engine,path", [("numba", "fused"), ("numba", "grouped"), ("numpy", "auto")])
@pytest.mark.parametrize("buckets,error,match", [
    (Buckets(np.array([0, 2, 3], np.int64), np.array([0, 50, 1], np.int32)), ValueError, "class ids"),
    (Buckets(np.array([0, 2, 3], np.int64), np.array([0, -1, 1], np.int32)), ValueError, "class ids"),
    (Buckets(np.array([0, 2, 9], np.int64), np.array([0, 1, 2], np.int32)), ValueError, "indptr"),
    (Buckets(np.array([0, 3, 2], np.int64), np.array([0, 1], np.int32)), ValueError, "indptr"),
    (Buckets(np.array([0, 2, 3], np.int64), np.array([0, 1, 2], np.int64)), TypeError, "int32"),
])
def test_candidate_topk_validates_unchecked_buckets(engine, path, buckets, error, match):
    with pytest.raises(error, match=match):
        candidate_topk(W, B, H, 2, buckets, PROBES, engine=engine, path=path)


def test_buckets_are_checked_against_each_layer_they_meet():
    buckets = Buckets.from_lists([np.arange(45), np.arange(5)])
    candidate_topk(W, B, H, 2, buckets, PROBES)
    with pytest.raises(ValueError, match=r"class ids must lie in \[0, 40\)"):
        candidate_topk(W[:40], B[:40], H, 2, buckets, PROBES)


@pytest.mark.parametrize("check_entries", [1, 7, 1 << 16])
def test_a_class_twice_in_one_bucket_is_found_wherever_the_check_blocks_fall(monkeypatch, check_entries):
    """Runs of whole buckets are checked at a time: a repeat is found in a short bucket inside a run and in a
    bucket longer than a run; the same class in two buckets is not a repeat."""
    monkeypatch.setattr(buckets_module, "CHECK_ENTRIES", check_entries)
    lists = [np.arange(i % 5) for i in range(40)] + [np.arange(30)]
    Buckets.from_lists(lists).validate(50)
    for where in (3, 22, 40):
        bad = list(lists)
        bad[where] = np.append(bad[where], 0) if where != 3 else np.array([2, 1, 2])
        with pytest.raises(ValueError, match="holds the same class id twice"):
            Buckets.from_lists(bad).validate(50)


def test_checking_many_buckets_takes_memory_of_one_run_not_of_all_entries():
    buckets = Buckets.from_lists([np.arange(i, i + 8) for i in range(1 << 17)])   # 2^20 entries
    tracemalloc.start()
    try:
        buckets.validate((1 << 17) + 8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 24 * buckets_module.CHECK_ENTRIES + buckets.indptr.nbytes, peak   # all at once: 40 bytes an entry


def test_candidate_topk_validates_packed_rows():
    buckets = Buckets.from_lists([np.arange(10), np.arange(10, 20)])
    good = PackedRows.of(buckets, W, B)
    for packed, match in [(PackedRows(good.W, good.b, np.full(20, 10 ** 6, np.int32)), "packed: row_of must lie"),
                          (PackedRows(good.W, good.b, np.arange(20, dtype=np.int64)), "packed: row_of must be int32"),
                          (PackedRows.from_arrays(good.W[:5], good.b[:5]), "packed: row_of must be int32 of shape"),
                          (PackedRows.from_arrays(good.W[:, :4].copy(), good.b), "packed: W")]:
        for path in ("fused", "grouped"):
            with pytest.raises(ValueError, match=match):
                candidate_topk(W, B, H, 2, buckets, PROBES, path=path, packed=packed)
    plain = candidate_topk(W, B, H, 4, buckets, PROBES)
    fast = candidate_topk(W, B, H, 4, buckets, PROBES, packed=good)
    np.testing.assert_array_equal(plain[1], fast[1])


@pytest.mark.parametrize("args,error,match", [
    ((W, B[:40], H, 2), ValueError, r"b: expected shape \(50,\)"),
    ((W, B, np.ascontiguousarray(H[:, :4]), 2), ValueError, "H: expected 8 columns"),
    ((W.astype(np.float64), B, H, 2), TypeError, "W: expected rows stored as float32, float16 or bfloat16"),
    ((W, B.astype(np.float16), H, 2), TypeError, "b: expected a float32"),
    ((W, B, H.tolist(), 2), TypeError, "H: expected a float32"),
    ((W[0], B, H, 2), ValueError, "W: expected a 2-D"),
    ((W, B, H[0], 2), ValueError, "H: expected a 2-D"),
    ((W, B, H, 0), ValueError, "k: expected an int >= 1"),
    ((W, B, H, 2.0), TypeError, "k: expected an int"),
    ((W, B, H, True), TypeError, "k: expected an int"),
])
def test_entry_points_check_shapes_dtypes_and_k(args, error, match):
    buckets = Buckets.from_lists([np.arange(5), np.arange(5, 9)])
    probes = np.zeros((3, 1), np.int32)
    calls = [lambda: exact_topk(*args), lambda: exact_topk(*args, engine="numpy"),
             lambda: candidate_topk(*args, buckets, probes), lambda: rescore_topk(*args, np.zeros((3, 1), np.int64))]
    for call in calls:
        with pytest.raises(error, match=match):
            call()


def test_numpy_integers_are_accepted_as_k():
    k = np.int64(3)
    assert exact_topk(W, B, H, k)[1].shape == (3, 3)
    assert candidate_topk(W, B, H, k, Buckets.from_lists([np.arange(9)]), np.zeros((3, 1), np.int32))[1].shape == (3, 3)
    assert rescore_topk(W, B, H, np.int32(2), np.zeros((3, 1), np.int64))[1].shape == (3, 2)


def test_indptr_wrapping_around_int64_is_refused():
    n = 5
    indptr = np.array([0, 2 ** 63 - 1, -2 ** 63 + n + 5, n], np.int64)
    with pytest.raises(ValueError, match="indptr"):
        Buckets(indptr, np.arange(n, dtype=np.int32)).validate(10)
