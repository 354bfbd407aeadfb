"""Concurrent searches on one index from several Python threads give the sequential results."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import wolindex
from wolindex.engine import Buckets, candidate_topk
from conftest import random_layer, random_queries


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
