"""Concurrent searches on one index from several Python threads give the sequential results."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import wolindex
from wolindex.engine import Buckets, candidate_topk
from helpers import random_layer, random_queries


def test_concurrent_exact_searches():
    W, b = random_layer(20000, 32)
    index = wolindex.build(W, b)
    batches = [random_queries(n, 32, seed=n) for n in (1, 3, 17, 64, 5, 130, 2, 33)]
    expected = [index.search(H, 10) for H in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda H: index.search(H, 10), batches * 3))
    for (s, lab), (es, el) in zip(got, expected * 3):
        np.testing.assert_array_equal(lab, el)
        np.testing.assert_array_equal(s, es)


def test_concurrent_candidate_searches():
    """The fused path's visited-stamp workspace is per thread."""
    rng = np.random.default_rng(0)
    W, b = random_layer(5000, 16)
    buckets = Buckets.from_lists([rng.choice(5000, 300, replace=False) for _ in range(40)])
    batches = [(random_queries(n, 16, seed=n), rng.integers(0, 40, (n, 3)).astype(np.int32))
               for n in (1, 2, 9, 50, 3, 7)]

    def run(args):
        return candidate_topk(W, b, args[0], 8, buckets, args[1], path="fused")

    expected = [run(a) for a in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, batches * 4))
    for g, e in zip(got, expected * 4):
        for x, y in zip(g, e):
            np.testing.assert_array_equal(x, y)


# --- every method, both engine paths ---

@pytest.fixture(scope="module")
def small():
    """A small layer and each method built on it once (fast builds)."""
    from wolindex.contrib.datasets import synthetic

    data = synthetic(n_classes=1500, dim=16, n_train=3000, n_test=200, seed=9)
    built = {}

    def index(method):
        if method not in built:
            if method.startswith("faiss"):
                pytest.importorskip("faiss")
            built[method] = wolindex.build(data.W, data.b, method=method, train=data.H_train, labels=data.y_train,
                                           verbose=False, **METHOD_BUILDS[method][0])
        return built[method]

    return data, index


METHOD_BUILDS = {
    "exact": ({}, [{}, {"engine": "numpy"}]),
    "adaptive": (dict(cutoffs=[200, 700], bound_block=64, cost_queries=256),
                 [{"margin": 1.0, "path": p} for p in ("fused", "grouped")]
                 + [{"mode": "certified", "path": p} for p in ("fused", "grouped")]),
    "ds": (dict(n_experts=8, start_experts=2, epochs_per_stage=0.2, final_epochs=0.2),
           [{"n_probe": 2, "path": p} for p in ("fused", "grouped")]),
    "lss": (dict(n_buckets=32, n_tables=2, rounds=1),
            [{"n_probe": 3, "path": p} for p in ("fused", "grouped")]),
    "faiss-ivf": (dict(nlist=20), [{"n_probe": 3}, {"n_probe": 7, "k_factor": 2}]),
}


@pytest.mark.parametrize("method", sorted(METHOD_BUILDS))
def test_concurrent_searches_every_method_and_path(small, method):
    """Several threads searching one index at once, with different batch sizes and with the fused and grouped
    paths (or other settings) interleaved, give exactly the sequential answers (scores, labels, n_scored)."""
    data, build = small
    index = build(method)
    settings = METHOD_BUILDS[method][1]
    H = data.H_test
    jobs = [(s, lo, hi) for s in settings for lo, hi in ((0, 1), (1, 4), (4, 37), (37, 200), (100, 129))]

    def run(job):
        s, lo, hi = job
        return index.search(H[lo:hi], 7, return_n_scored=True, **s)

    expected = [run(job) for job in jobs]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(jobs) * 3) % len(jobs)            # settings and batches shuffled together
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, [jobs[i] for i in order]))
    for i, g in zip(order, got):
        for x, y in zip(g, expected[i]):
            np.testing.assert_array_equal(x, y, err_msg=f"{method} {jobs[i]}")


def test_concurrent_searches_over_several_indexes_at_once(small):
    """Different methods and paths running at the same moment share no hidden state: one pool, all indexes."""
    data, build = small
    indexes = {m: build(m) for m in ("exact", "lss", "adaptive", "ds")}
    jobs = [(m, s, lo, lo + n) for m in indexes for s in METHOD_BUILDS[m][1] for lo, n in ((0, 3), (50, 90))]

    def run(job):
        m, s, lo, hi = job
        return indexes[m].search(data.H_test[lo:hi], 5, return_n_scored=True, **s)

    expected = [run(job) for job in jobs]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(run, jobs[::-1] * 3))
    for job, g, e in zip(jobs[::-1] * 3, got, expected[::-1] * 3):
        for x, y in zip(g, e):
            np.testing.assert_array_equal(x, y, err_msg=str(job))
