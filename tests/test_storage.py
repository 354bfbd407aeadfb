"""One copy of the rows: bucket methods store the layer in bucket order (OutputLayer.row_class) instead of
a packed copy beside it; saved indexes hold the permuted rows, and load(mmap=True) maps them."""
import gc
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import wolindex
from wolindex.layer import OutputLayer
from wolindex.metrics import p_at_k

from helpers import random_layer, random_queries

D, DIM = 6000, 256
W, B = random_layer(D, DIM, seed=31)
H_TRAIN = random_queries(3000, DIM, seed=32)
H = random_queries(50, DIM, seed=33)
BUILD_TO_FILE_PEAK = 0.6   # x W: what a build straight to a file may allocate (builders' blocks, codes, routing)
BUILDS = {
    "adaptive": dict(cutoffs=[400, 2000]),
    "lss": dict(n_buckets=40, n_tables=2, rounds=1),
    "ds": dict(n_experts=8, start_experts=2, epochs_per_stage=0.2, final_epochs=0.2),
}
SETTINGS = {"adaptive": [{"margin": 1.0}, {"mode": "certified"}],
            "lss": [{"n_probe": 3}, {"n_probe": 3, "path": "grouped"}],
            "ds": [{"n_probe": 2}]}


@pytest.fixture(scope="module", params=sorted(BUILDS))
def built(request):
    method = request.param
    return method, wolindex.build(W, B, method=method, train=H_TRAIN, verbose=False, **BUILDS[method])


def unpermuted(index):
    """The same built method over the layer in class order (what indexes held before permuted storage)."""
    layer = index.layer.in_class_order()
    method = type(index.method).restore(layer, dict(index.method.arrays), dict(index.method.state))
    return wolindex.Index(layer, method, index.build_params, index.default_search)


def test_bucket_methods_store_one_permuted_copy(built):
    method, index = built
    layer = index.layer
    assert layer.row_class is not None and np.array_equal(np.sort(layer.row_class), np.arange(D))
    np.testing.assert_array_equal(layer.W, W[layer.row_class])
    np.testing.assert_array_equal(layer.class_b(), B)
    assert index.method.packed.W is layer.W, "the buckets read the layer's rows, not a copy"
    assert index.nbytes() <= 1.2 * W.nbytes, index.nbytes() / W.nbytes


def test_permuted_storage_searches_like_class_order(built):
    method, index = built
    plain = unpermuted(index)
    for settings in SETTINGS[method]:
        got, ref = index.search(H, 7, return_n_scored=True, **settings), plain.search(H, 7, return_n_scored=True,
                                                                                        **settings)
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[2], ref[2])
    exact = wolindex.build(W, B, verbose=False).search(H, 7)
    np.testing.assert_array_equal(index.search_exact(H, 7)[1], exact[1])


def test_adaptive_partition_is_stored_in_bucket_order():
    index = wolindex.build(W, B, method="adaptive", train=H_TRAIN, verbose=False, **BUILDS["adaptive"])
    np.testing.assert_array_equal(index.method.packed.row_of, np.arange(D))   # every bucket contiguous
    assert index.method.duplication() == 1.0


def test_ties_break_by_class_id_on_permuted_rows():
    """Classes with equal scores come smallest id first whatever order their rows are stored in."""
    Wi, bi = random_layer(400, 8, seed=5, integer=True)
    Wi[200:] = Wi[:200]
    bi[200:] = bi[:200]
    Hi = random_queries(30, 8, seed=6, integer=True)
    index = wolindex.build(Wi, bi, method="adaptive", train=random_queries(500, 8, seed=7, integer=True),
                           cutoffs=[40, 150], verbose=False)
    assert not np.array_equal(index.layer.row_class, np.arange(400))
    ref = wolindex.build(Wi, bi, verbose=False).search(Hi, 12)
    for got in (index.search_exact(Hi, 12), index.search(Hi, 12, mode="certified")):
        np.testing.assert_array_equal(got[1], ref[1])
        np.testing.assert_array_equal(got[0], ref[0])


@pytest.mark.parametrize("with_layer", [True, False])
def test_saved_index_holds_the_permuted_rows(tmp_path, built, with_layer):
    method, index = built
    index.save(tmp_path / "i", with_layer=with_layer)
    layer = None if with_layer else OutputLayer.from_arrays(W, B)
    loaded = wolindex.load(tmp_path / "i", mmap=True, layer=layer)
    np.testing.assert_array_equal(loaded.layer.row_class, index.layer.row_class)
    for a, c in zip(index.search(H, 5, return_n_scored=True), loaded.search(H, 5, return_n_scored=True)):
        np.testing.assert_array_equal(a, c)
    if with_layer:
        assert loaded.mapped_nbytes() >= W.nbytes
        stats = loaded.stats()
        assert stats["mapped_bytes"] + stats["resident_bytes"] == stats["index_bytes"]


MMAP_CASES = [("adaptive", dict(cutoffs=[400, 4000])), ("lss", dict(n_buckets=64, n_tables=2, rounds=1)),
              ("lss", dict(n_buckets=64, n_tables=2, rounds=1, screen=True)), ("screen", {}),
              ("ds", dict(n_experts=8, epochs_per_stage=0.2, final_epochs=0.2, distill_k=4, complete_k=1))]


@pytest.fixture(scope="module", params=MMAP_CASES, ids=["adaptive", "lss", "lss+screen", "screen", "ds"])
def saved(request, tmp_path_factory):
    """(path of a saved index of a 40,000 x 256 layer, W's bytes), per case of MMAP_CASES."""
    method, build = request.param
    Wm, bm = random_layer(40000, 256, seed=45)
    path = tmp_path_factory.mktemp("mmap") / "i.wol"
    wolindex.build(Wm, bm, method=method, train=H_TRAIN, verbose=False, **build).save(path)
    return path.resolve(), Wm.nbytes


def test_mmap_load_allocates_nothing_of_the_size_of_w(saved):
    """load(mmap=True) of a bucket index allocates under 0.1x W, checksums verified (no D x d array: the rows
    stay mapped, their SHA-256 and finiteness are read from the file in fixed-size pieces; what remains is
    a few bytes per class, which d = 256 makes small beside a row)."""
    path, W_bytes = saved
    wolindex.load(path, mmap=True)                           # imports and compiled kernels: not the load's memory
    tracemalloc.start()
    try:
        loaded = wolindex.load(path, mmap=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.1 * W_bytes, peak / W_bytes
    assert loaded.mapped_nbytes() >= W_bytes and isinstance(loaded.layer.W, np.memmap)


def resident_bytes_of(path) -> int:
    """Resident bytes of this process's mappings of the file at path (/proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:             # a mapping's header line
                inside = len(fields) >= 6 and fields[5] == str(path)
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs /proc/self/smaps")
def test_mmap_load_reads_no_mapped_page(saved):
    """Loading reads the mapped arrays (rows, screening codes) through the file, never through the map: under
    0.1x W of the file's pages are resident in the process before the first search (the maps of earlier
    loads of the file are gone with their indexes)."""
    path, W_bytes = saved
    gc.collect()
    loaded = wolindex.load(path, mmap=True)
    assert resident_bytes_of(path) < 0.1 * W_bytes, resident_bytes_of(path) / W_bytes
    loaded.search(H_TRAIN[:2], 5)
    assert resident_bytes_of(path) > 0                           # the search did read through the map


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_build_save_to_writes_the_index_build_then_save_would(tmp_path, built, dtype):
    """build(save_to=path) writes the rows into the file a block at a time and returns the index loaded from it
    (mapped): the same arrays as build(...).save(path) and the same search results."""
    method, _ = built
    ref = wolindex.build(W, B, method=method, train=H_TRAIN, verbose=False, dtype=dtype, **BUILDS[method])
    ref.save(tmp_path / "ref.wol")
    got = wolindex.build(W, B, method=method, train=H_TRAIN, verbose=False, dtype=dtype, save_to=tmp_path / "i.wol",
                         **BUILDS[method])
    assert isinstance(got.layer.W, np.memmap) and got.layer.row_dtype == dtype
    again = wolindex.load(tmp_path / "i.wol")                    # the file's checksums hold
    saved = wolindex.load(tmp_path / "ref.wol")
    for index in (got, again):
        np.testing.assert_array_equal(index.layer.W, saved.layer.W)
        np.testing.assert_array_equal(index.layer.row_class, saved.layer.row_class)
        np.testing.assert_array_equal(index.layer.b, saved.layer.b)
        assert index.method.arrays.keys() == saved.method.arrays.keys()
        for name, a in saved.method.arrays.items():
            np.testing.assert_array_equal(index.method.arrays[name], a)
        assert index.method.state.keys() == saved.method.state.keys()         # (DS's hold build timings)
        assert index.default_search == saved.default_search
    for settings in SETTINGS[method]:
        for x, y in zip(got.search(H, 7, **settings), ref.search(H, 7, **settings)):
            np.testing.assert_array_equal(x, y)


def test_build_save_to_refuses_a_path_it_may_not_replace_before_building(tmp_path, monkeypatch):
    (tmp_path / "notes.wol").write_text("not an index")
    monkeypatch.setattr(wolindex.methods.get_method("adaptive"), "build", None)    # never reached
    with pytest.raises(ValueError, match="not a wolindex index; refusing"):
        wolindex.build(W, B, method="adaptive", train=H_TRAIN, save_to=tmp_path / "notes.wol")
    assert (tmp_path / "notes.wol").read_text() == "not an index"


def test_a_damaged_row_order_is_refused(tmp_path, built):
    method, index = built
    index.save(tmp_path / "i")
    path = tmp_path / "i" / "layer.row_class.npy"
    order = np.load(path)
    order[1] = order[0]
    np.save(path, order)
    with pytest.raises(ValueError, match="layer.row_class must be an int32 permutation"):
        wolindex.load(tmp_path / "i", verify=False)


def test_building_on_an_index_layer_builds_on_the_class_order(built):
    method, index = built
    again = wolindex.build(index.layer, method="exact", verbose=False)
    assert again.layer.row_class is None
    np.testing.assert_array_equal(again.layer.W, W)
    lab = again.search(H, 3)[1]
    assert p_at_k(lab, wolindex.build(W, B, verbose=False).search(H, 3)[1], 3) == 1.0


def build_peak(method, W_, H_, **build):
    """tracemalloc's peak of NumPy's allocations during wolindex.build (the inputs already allocated)."""
    tracemalloc.start()
    try:
        index = wolindex.build(W_, np.zeros(W_.shape[0], np.float32), method=method, train=H_, verbose=False, **build)
        return index, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("method,build", [
    ("adaptive", dict(cost_queries=256)),
    ("lss", dict(n_buckets=64, n_tables=2, rounds=1)),
])
def test_builds_hold_little_beyond_the_permuted_copy(tmp_path, monkeypatch, method, build):
    """Builders work on blocks of classes and queries: on a layer whose k-means samples and score blocks are
    smaller than it (limits lowered so a small layer shows it), a build allocates at most the permuted copy
    of W the index keeps plus 0.5x W; built straight to a file (save_to), under BUILD_TO_FILE_PEAK x W."""
    from wolindex import rows
    from wolindex.methods.adaptive import bounds, gates
    from wolindex.methods.lss import hashing

    monkeypatch.setattr(hashing, "KMEANS_FIT_ROWS", 4000)
    monkeypatch.setattr(hashing, "ASSIGN_ROWS", 2000)
    monkeypatch.setattr(bounds, "FIT_CELLS", 2000 * 64)
    monkeypatch.setattr(bounds, "ASSIGN_CELLS", 2000 * 64)
    monkeypatch.setattr(gates, "SCORE_CELLS", 1 << 18)
    monkeypatch.setattr(gates, "W_SHARE", 1 << 30)
    monkeypatch.setattr(rows, "BLOCK_BYTES", 1 << 18)
    Wl = random_layer(40000, 64, seed=41)[0]
    Hl = random_queries(2000, 64, seed=42)
    build_peak(method, Wl[:3000], Hl, **build)             # imports and compiled kernels: not the build's memory
    index, peak = build_peak(method, Wl, Hl, **build)
    assert peak <= 1.5 * Wl.nbytes, peak / Wl.nbytes
    assert index.nbytes() <= 1.2 * Wl.nbytes
    index, peak = build_peak(method, Wl, Hl, save_to=tmp_path / "i.wol", **build)
    assert peak <= BUILD_TO_FILE_PEAK * Wl.nbytes, peak / Wl.nbytes          # no copy of W: the rows go to the file
    assert index.mapped_nbytes() >= Wl.nbytes


def test_lss_kmeans_on_a_sample_assigns_every_row_to_its_nearest_centroid(monkeypatch):
    from wolindex.methods.lss import hashing

    monkeypatch.setattr(hashing, "KMEANS_FIT_ROWS", 500)
    monkeypatch.setattr(hashing, "ASSIGN_ROWS", 700)
    Wk = random_layer(3000, 16, seed=43)[0]
    labels, centroids = hashing.kmeans_buckets(Wk, 12, seed=0)
    X = Wk / np.linalg.norm(Wk, axis=1, keepdims=True)
    dist = ((X[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    picked = dist[np.arange(3000), labels]
    assert labels.shape == (3000,) and np.all(picked <= dist.min(axis=1) + 1e-5)


def test_adaptive_blocks_fitted_on_a_sample_partition_each_cluster(monkeypatch):
    from wolindex.methods.adaptive import bounds

    monkeypatch.setattr(bounds, "FIT_CELLS", 300 * 8)
    monkeypatch.setattr(bounds, "ASSIGN_CELLS", 500 * 8)
    Wb = random_layer(2000, 8, seed=44)[0]
    clusters = [np.arange(0, 100), np.arange(100, 2000)]
    blocks, ptr = bounds.bounding_blocks(clusters, Wb, 64, seed=0)
    assert ptr[0] == 0 and ptr[-1] == len(blocks)
    for j, rows in enumerate(clusters):
        mine = np.concatenate(blocks[ptr[j]:ptr[j + 1]])
        np.testing.assert_array_equal(np.sort(mine), rows)
    assert ptr[2] - ptr[1] >= 20 and all(len(x) for x in blocks)
