"""wolindex.distributed on a local 2-CPU Ray cluster: a sharded index equals the single index (exact method,
ties included) and the single-process merge of its own shard indexes (adaptive, frequency split); killed
actors come back from their files mid-stream, or the search fails clearly; map_batches over a Ray Data
stream equals a local loop; bad arguments name themselves."""
import itertools
import shutil
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

import wolindex  # noqa: E402
from wolindex.distributed import ShardedIndex, ShardError, map_batches  # noqa: E402
from wolindex.engine.dispatch import merge_topk  # noqa: E402
from wolindex.metrics import p_at_k  # noqa: E402

from helpers import random_layer, random_queries  # noqa: E402

D, DIM, N_SHARDS = 2000, 16, 4
ADAPTIVE_P10_FLOOR = 0.95   # tie-aware P@10 against exact search; observed 0.996 (default margin 2.0)


def warm_numba_cache(folder):
    """Compile here, once, the kernels the actors will run (memory-mapped rows and read-only queries are Numba
    types of their own; serial and parallel exact paths; adaptive's routes), so that the actors load them from
    Numba's on-disk cache instead of each compiling them at once on 2 cores."""
    W, b = random_layer(D // N_SHARDS, DIM, integer=True)
    H = random_queries(1200, DIM, integer=True)
    H.setflags(write=False)
    train = random_queries(2000, DIM, seed=5, integer=True)
    counts = np.arange(W.shape[0], 0, -1)
    for method, extra, settings in (("exact", {}, [{}]), ("adaptive", {"train": train, "class_counts": counts},
                                                           [{}, {"beat_rank": 1}, {"mode": "certified"}])):
        wolindex.build(W, b, method=method, verbose=False, **extra).save(folder / f"{method}.wol")
        index = wolindex.load(folder / f"{method}.wol", mmap=True)
        for n, k, search in itertools.product((5, 1200), (1, 10), settings):
            index.search(H[:n], k, **search)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local 2-CPU Ray cluster, after warming Numba's cache; yields a folder for the indexes."""
    folder = tmp_path_factory.mktemp("distributed")
    warm_numba_cache(folder)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield folder
    ray.shutdown()


@pytest.fixture(scope="module")
def layer():
    """An integer layer (exact dot products) whose second half repeats the first: every class ties with one in
    another shard, so tie order is tested across the merge."""
    W, b = random_layer(D // 2, DIM, integer=True)
    return np.concatenate([W, W]), np.concatenate([b, b])


@pytest.fixture(scope="module")
def queries():
    return random_queries(1200, DIM, integer=True)


@pytest.fixture(scope="module")
def exact4(cluster, layer):
    index = ShardedIndex.build(*layer, path=cluster / "exact4", n_shards=N_SHARDS)
    yield index
    index.shutdown()


@pytest.fixture(scope="module")
def single(layer):
    return wolindex.build(*layer)


def local_merge(path, H, k, **settings):
    """The single-process reference: each shard index file searched here, ids mapped, merged pairwise with
    the library's merge_topk."""
    out = None
    for shard in range(N_SHARDS):
        index = wolindex.load(path / f"shard-{shard:05d}.wol")
        ids = np.load(path / f"shard-{shard:05d}.ids.npy")
        scores, local = index.search(H, min(k, index.n_classes), **settings)
        pad = k - scores.shape[1]
        part = (np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf),
                np.pad(np.where(local >= 0, ids[np.maximum(local, 0)], -1), ((0, 0), (0, pad)), constant_values=-1))
        out = part if out is None else merge_topk(*out, *part)
    return out


@pytest.mark.parametrize("k", [1, 10, 600, D])
def test_exact_shards_equal_the_single_index(exact4, single, queries, k):
    H = queries[:200] if k >= 600 else queries
    scores, ids = exact4.search(H, k)
    ref_scores, ref_ids = single.search(H, k)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (H.shape[0], k)
    assert np.array_equal(ids, ref_ids) and np.array_equal(scores, ref_scores)
    assert exact4.shard_sizes == [500] * 4 and exact4.n_classes == D and exact4.dim == DIM


def test_log_normaliser_is_exact(exact4, layer, queries):
    W, b = layer
    logits = queries.astype(np.float64) @ W.T.astype(np.float64) + b
    top = logits.max(axis=1)
    lse = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    got = exact4.log_normaliser(queries)
    assert got.dtype == np.float64 and got.shape == (queries.shape[0],)
    np.testing.assert_allclose(got, lse, rtol=1e-9, atol=1e-9)   # integer logits: float32 holds them exactly


def test_map_batches_equals_a_local_loop(exact4, single, cluster):
    """100,000 queries streamed through Ray Data (2 actors, each loading the 4 shards with mmap), and a single
    wolindex index file with an autoscaling pool: the same results as searching the rows here. Half a CPU per
    actor leaves Ray Data a CPU for its own tasks on this 2-CPU cluster."""
    from ray import data as ray_data

    H = random_queries(100_000, DIM, seed=7)
    ds = ray_data.from_numpy(np.array_split(H, 8)).rename_columns({"data": "hidden"})   # 8 blocks
    out = map_batches(ds, exact4.path, k=5, concurrency=2, num_cpus=0.5, batch_size=8192).take_batch(
        H.shape[0] + 1, batch_format="numpy")
    rows = out["hidden"]
    assert np.array_equal(rows[np.lexsort(rows.T)], H[np.lexsort(H.T)])   # every query once, in any order
    for lo in range(0, H.shape[0], 25_000):
        scores, ids = single.search(rows[lo:lo + 25_000], 5)
        assert np.array_equal(out["ids"][lo:lo + 25_000], ids)
        assert np.array_equal(out["scores"][lo:lo + 25_000], scores)
    single.save(cluster / "single.wol")
    small = ray_data.from_numpy(H[:3000]).rename_columns({"data": "q"})
    out = map_batches(small, cluster / "single.wol", k=3, column="q", concurrency=(1, 2), num_cpus=0.5).take_batch(
        4000, batch_format="numpy")
    assert np.array_equal(out["ids"], single.search(out["q"], 3)[1])


def test_spherical_layer(cluster, layer, queries):
    """A spherical-softmax layer (classes ranked by o^2): the same top-k as its single index, and the exact
    log normaliser log sum_c (o_c^2 + epsilon); after shutdown, a clear error."""
    W, b = layer
    index = ShardedIndex.build(W, b, path=cluster / "spherical", n_shards=2, scoring="spherical", epsilon=0.5)
    single = wolindex.build(W, b, scoring="spherical", epsilon=0.5)
    try:
        scores, ids = index.search(queries, 10)
        ref_scores, ref_ids = single.search(queries, 10)
        assert np.array_equal(ids, ref_ids) and np.array_equal(scores, ref_scores)
        o = queries.astype(np.float64) @ W.T.astype(np.float64) + b
        np.testing.assert_allclose(index.log_normaliser(queries), np.log((o ** 2 + 0.5).sum(axis=1)), rtol=1e-12)
    finally:
        index.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        index.search(queries, 10)


def test_adaptive_frequency_split(cluster, layer, queries, single):
    W, b = layer
    counts = np.random.default_rng(3).zipf(1.3, D).astype(np.int64)
    train = random_queries(2000, DIM, seed=5, integer=True)
    path = cluster / "adaptive4"
    index = ShardedIndex.build(W, b, path=path, n_shards=N_SHARDS, method="adaptive", split="method",
                               class_counts=counts, train=train)
    try:
        order = np.lexsort((np.arange(D), -counts))
        for shard in range(N_SHARDS):   # rank r goes to shard r mod 4, ids kept increasing
            assert np.array_equal(np.load(path / f"shard-{shard:05d}.ids.npy"), np.sort(order[shard::N_SHARDS]))
        for settings in ({}, {"margin": 0.0, "beat_rank": 1}):
            scores, ids = index.search(queries, 10, **settings)
            ref_scores, ref_ids = local_merge(path, queries, 10, **settings)
            assert np.array_equal(ids, ref_ids) and np.array_equal(scores, ref_scores)
        exact_scores, exact_ids = single.search(queries, 10)
        scores, ids = index.search(queries, 10)
        assert p_at_k(ids, exact_ids, 10, scores=scores, exact_scores=exact_scores) >= ADAPTIVE_P10_FLOOR
        scores, ids = index.search(queries, 10, mode="certified")   # provably exact, so equal to exact search
        assert np.array_equal(ids, exact_ids) and np.array_equal(scores, exact_scores)
    finally:
        index.shutdown()


def test_killed_actors_come_back_mid_stream(exact4, single, queries):
    """One actor killed between batches, another while a batch is in flight: every batch is complete and
    correct, and the killed shards are served by new processes."""
    pids = [s["pid"] for s in exact4.stats()]
    batches = np.array_split(queries, 8)
    for i, H in enumerate(batches):
        if i == 2:
            ray.kill(exact4.actors[1], no_restart=False)
        timer = threading.Timer(0.01, ray.kill, (exact4.actors[2],), {"no_restart": False}) if i == 5 else None
        if timer is not None:
            timer.start()
        scores, ids = exact4.search(H, 10, timeout=120)
        if timer is not None:
            timer.join()
        ref_scores, ref_ids = single.search(H, 10)
        assert np.array_equal(ids, ref_ids) and np.array_equal(scores, ref_scores), f"batch {i}"
    new_pids = [s["pid"] for s in exact4.stats()]
    assert new_pids[1] != pids[1] and new_pids[2] != pids[2] and new_pids[0] == pids[0]


def search_until_error(index, H, seconds=30.0):
    """Search until it raises (ray.kill returns before the actor is gone, so the first search may still be
    answered by the old process); every answer before that must be complete."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        scores, ids = index.search(H, 3)
        assert ids.shape == (H.shape[0], 3) and (ids >= 0).all() and np.isfinite(scores).all()
        time.sleep(0.05)
    raise AssertionError(f"no error within {seconds} s")


def test_a_lost_shard_is_an_error_never_a_partial_top_k(exact4, cluster, queries):
    path = cluster / "copy"
    exact4.save(path)
    index = ShardedIndex.load(path, max_restarts=1)
    try:
        (path / "shard-00003.wol").unlink()                 # its restart cannot load the shard
        ray.kill(index.actors[3], no_restart=False)
        with pytest.raises(ShardError, match="^shard 3 .*nothing returned"):
            search_until_error(index, queries[:5])
        ray.kill(index.actors[0], no_restart=True)          # gone for good
        with pytest.raises(ShardError, match="^shard 0 .*nothing returned"):
            search_until_error(index, queries[:5])
    finally:
        index.shutdown()
    shutil.rmtree(path)


def test_bad_arguments_name_themselves(exact4, cluster, layer, queries):
    from ray import data as ray_data

    W, b = layer
    (cluster / "foreign").mkdir()
    (cluster / "foreign" / "notes.txt").write_text("mine")
    build_cases = [
        ({"n_shards": 0}, ValueError, "^n_shards"), ({"n_shards": D + 1}, ValueError, "^n_shards"),
        ({"n_shards": 2.0}, TypeError, "^n_shards"), ({"split": "random"}, ValueError, "^split"),
        ({"split": "method"}, ValueError, "^split: .*class_counts or labels"),
        ({"path": cluster / "foreign"}, ValueError, "^path: .*not a sharded"),
        ({"path": cluster / "no" / "such"}, ValueError, "^path"), ({"path": 3}, TypeError, "^path"),
        ({"max_restarts": -1}, ValueError, "^max_restarts"),
        ({"actor_options": {"max_restarts": 5}}, ValueError, "^actor_options"),
        ({"method": "nope"}, ValueError, "^method"), ({"n_lists": 3}, TypeError, "n_lists"),
        ({"labels": np.zeros(3, np.int64)}, ValueError, "^labels"),
    ]
    for kwargs, error, name in build_cases:
        with pytest.raises(error, match=name):
            ShardedIndex.build(W, b, **{"path": cluster / "bad", "n_shards": 2, **kwargs})
    assert not (cluster / "bad").exists()
    search_cases = [
        ({"k": 0}, ValueError, "^k:"), ({"k": D + 1}, ValueError, "^k:"), ({"k": 2.5}, TypeError, "^k:"),
        ({"H": queries[:, :3]}, ValueError, "^H:"), ({"n_probe": 2}, TypeError, "n_probe"),
        ({"timeout": 0}, ValueError, "^timeout"),
    ]
    for kwargs, error, name in search_cases:
        with pytest.raises(error, match=name):
            exact4.search(**{"H": queries[:4], **kwargs})
    with pytest.raises(ValueError, match="^path"):
        ShardedIndex.load(cluster / "foreign")
    with pytest.raises(TypeError, match="^path"):
        ShardedIndex.load(3)
    with pytest.raises(TypeError, match="^verify"):
        ShardedIndex.load(exact4.path, verify=1)
    ds = ray_data.from_numpy(queries[:10]).rename_columns({"data": "hidden"})
    map_cases = [
        ((queries, exact4.path), {}, TypeError, "^dataset"), ((ds, cluster / "nothing"), {}, ValueError, "^index_path"),
        ((ds, None), {}, TypeError, "^index_path"), ((ds, exact4.path), {"k": D + 1}, ValueError, "^k:"),
        ((ds, exact4.path), {"column": 3}, TypeError, "^column"),
        ((ds, exact4.path), {"column": "h"}, ValueError, "^column"),
        ((ds, exact4.path), {"concurrency": 0}, ValueError, "^concurrency"),
        ((ds, exact4.path), {"concurrency": (2, 1)}, ValueError, "^concurrency"),
        ((ds, exact4.path), {"batch_size": 0}, ValueError, "^batch_size"),
        ((ds, exact4.path), {"num_cpus": -1}, ValueError, "^num_cpus"),
        ((ds, exact4.path), {"ray_options": {"compute": None}}, ValueError, "^ray_options"),
        ((ds, exact4.path), {"ray_options": []}, TypeError, "^ray_options"),
        ((ds, exact4.path), {"n_probe": 1}, TypeError, "n_probe"),
    ]
    for args, kwargs, error, name in map_cases:
        with pytest.raises(error, match=name):
            map_batches(*args, **kwargs)
