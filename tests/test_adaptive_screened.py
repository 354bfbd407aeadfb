"""Adaptive's screened search in one kernel call (methods/adaptive/screened.py) against the general search it
replaces on the numba engine (search_with: head, router, tail and merge as separate calls)."""
import numpy as np
import pytest

import wolindex
from wolindex.contrib.datasets import synthetic
from wolindex.methods.ops import HostOps
from helpers import numba_threads


@pytest.fixture(scope="module")
def data():
    return synthetic(n_classes=2000, dim=40, n_train=4000, n_test=150, seed=31)


_built = {}


def built(data, cutoffs, **build):
    """The adaptive + screen index of data with these cutoffs (built once per module)."""
    key = (None if cutoffs is None else tuple(cutoffs), tuple(sorted(build.items())))
    if key not in _built:
        _built[key] = wolindex.build(data.W, data.b, method="adaptive", train=data.H_train, labels=data.y_train,
                                     cutoffs=cutoffs, cost_queries=256, screen=True, verbose=False, **build)
    return _built[key]


def general(index, H, k, settings):
    """The search through search_with (the path the kernel replaces)."""
    params = index.search_params(**settings)
    return index.method.search_with(HostOps(index.layer, index.method, params.engine), H, k, params)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("cutoffs, settings, k", [
    ([200, 500, 900], {"margin": 1.0, "screen": 12}, 5),
    ([200, 500, 900], {"margin": 3.0, "beat_rank": 1, "screen": 20}, 10),
    ([3, 700], {"margin": -50.0, "screen": 8}, 5),      # a head of 3 classes: every cluster opens for k = 5
    ([200, 500, 900], {"margin": -1e30, "screen": 12}, 5),   # no cluster opens
    (None, {"margin": 2.0, "screen": 16}, 7),           # cutoffs by expected cost: many small clusters
])
def test_one_call_equals_the_general_search(data, threads, cutoffs, settings, k):
    """Labels, scores and classes rescored equal the general search's for batches of 1, of a run of queries
    plus a remainder, and for several runs, on one and two threads."""
    index = built(data, cutoffs)
    with numba_threads(threads):
        for H in (data.H_test[:1], data.H_test[1:2], data.H_test[:67], data.H_test):
            got = index.search(H, k, return_n_scored=True, **settings)
            want = general(index, H, k, settings)
            np.testing.assert_array_equal(got[1], want[1])
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[2], want[2])
    if settings["margin"] == -1e30:
        assert np.all(got[2] == settings["screen"])     # the head's screen alone


def test_steps_and_stored_rows(data, monkeypatch):
    """Queries in steps give the one-step answer; a saved and loaded index (rows in bucket order, mapped)
    gives the same answer as the built one; 16-bit rows are rescored as stored."""
    index = built(data, [100, 400, 1000])
    H, settings = data.H_test, {"margin": 2.0, "screen": 10}
    whole = index.search(H, 5, return_n_scored=True, **settings)
    monkeypatch.setattr(type(index.method), "search_step", lambda self: 9)
    stepped = index.search(H, 5, return_n_scored=True, **settings)
    for got, want in zip(stepped, whole):
        np.testing.assert_array_equal(got, want)
    monkeypatch.undo()
    half = built(data, [100, 400, 1000], dtype="bfloat16")
    got, want = half.search(H, 5, **settings), general(half, H, 5, settings)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def test_saved_index_searches_the_same(data, tmp_path):
    index = built(data, [100, 400, 1000])
    index.save(tmp_path / "a")
    loaded = wolindex.load(tmp_path / "a", mmap=True)
    for settings in ({"margin": 2.0, "screen": 10}, {"margin": 4.0, "beat_rank": 1, "screen": 16}):
        a, b = index.search(data.H_test, 5, **settings), loaded.search(data.H_test, 5, **settings)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])
