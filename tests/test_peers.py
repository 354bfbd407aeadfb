"""The peers' baselines (faiss-refine, hnswlib, scann) and whitening of every baseline: accuracy at the largest
settings, exact scores, save / load, missing extras, bad settings and damaged files."""
import sys
from pathlib import Path

import numpy as np
import pytest

import wolindex
from wolindex._numeric import inverse_transpose, transform_columns, whitening, with_bias_column, with_one_column
from wolindex.contrib.datasets import synthetic
from wolindex.metrics import p_at_k
from helpers import numba_threads, random_layer, random_queries

pytest.importorskip("faiss")

DS = synthetic(n_classes=1500, dim=16, n_train=1500, n_test=300, seed=4)
D = len(DS.b)
EXACT_L = wolindex.build(DS.W, DS.b).search(DS.H_test, 10)[1]
LOGITS = DS.H_test.astype(np.float64) @ DS.W.T.astype(np.float64) + DS.b
MAX_P1 = 0.99   # every (method, whiten) below at its largest settings observes P@1 = 1.0 on this data

# method -> (the extra it needs, build settings, its largest search settings)
PEERS = {
    "faiss-flat": ("faiss", {}, {}),
    "faiss-ivf": ("faiss", {"nlist": 20}, {"n_probe": 20}),
    "faiss-hnsw": ("faiss", {"m": 16}, {"ef_search": D}),
    "faiss-ivfpq": ("faiss", {"nlist": 20}, {"n_probe": 20, "k_factor": D // 10}),
    "faiss-refine": ("faiss", {}, {"k_factor": D // 10}),
    "faiss-refine sq8": ("faiss", {"quantizer": "sq8"}, {"k_factor": 10}),
    "hnswlib": ("hnswlib", {"m": 12, "ef_construction": 100}, {"ef": D}),
    "scann": ("scann", {"num_leaves": 20}, {"leaves_to_search": 20, "reorder": D}),
}


def method_of(peer):
    return peer.split()[0]


@pytest.fixture(scope="module")
def built():
    """(peer, whiten) -> its index over DS, built once on first use."""
    cache = {}

    def get(peer, whiten=False):
        if (peer, whiten) not in cache:
            extra, build, _ = PEERS[peer]
            if extra != "faiss":
                pytest.importorskip(extra)
            with numba_threads(1):   # hnswlib inserts in the engine's threads: in one, its seeded graph repeats
                cache[peer, whiten] = wolindex.build(DS.W, DS.b, method=method_of(peer), train=DS.H_train,
                                                     whiten=whiten, verbose=False, **build)
        return cache[peer, whiten]
    return get


@pytest.mark.parametrize("whiten", [False, True])
@pytest.mark.parametrize("peer", list(PEERS))
def test_largest_settings_find_the_top_1_with_exact_scores(built, peer, whiten):
    index = built(peer, whiten)
    assert ("whiten" in index.method.arrays) == whiten
    scores, labels = index.search(DS.H_test, 10, **PEERS[peer][2])
    assert p_at_k(labels, EXACT_L, 1) >= MAX_P1
    assert np.all(labels >= 0) and np.all(np.diff(scores, axis=1) <= 0)
    np.testing.assert_allclose(scores, LOGITS[np.arange(len(labels))[:, None], labels], rtol=1e-5, atol=1e-4)


def test_whitening_keeps_every_inner_product():
    rng = np.random.default_rng(0)
    H = (rng.standard_normal((500, 6)) * [10, 1, 1, 0.1, 3, 1] + 2).astype(np.float32)
    W, b = random_layer(40, 6, seed=1)
    T = whitening(H)
    np.testing.assert_allclose(T, T.T, rtol=1e-6)
    X = transform_columns(with_bias_column(W, b), T)
    Q = transform_columns(with_one_column(H), inverse_transpose(T))
    np.testing.assert_allclose(Q @ X.T, H @ W.T + b, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.cov(Q.T, bias=True) + np.outer(Q.mean(0), Q.mean(0)), np.eye(7), atol=1e-3)
    with pytest.raises(ValueError, match="whiten: the 7 x 7 transform is singular"):
        inverse_transpose(np.zeros((7, 7), np.float32))


def test_whitening_a_rank_deficient_sample_stays_invertible():
    H = np.repeat(random_queries(2, 5, seed=2), 50, axis=0)     # rank 2 of 6
    T = whitening(H)
    assert np.isfinite(inverse_transpose(T)).all()


@pytest.mark.parametrize("peer", [p for p in PEERS if p != "faiss-refine sq8"])
def test_whiten_needs_training_queries_and_a_bool(peer):
    extra, build, _ = PEERS[peer]
    if extra != "faiss":
        pytest.importorskip(extra)
    with pytest.raises(ValueError, match="whiten: needs training queries"):
        wolindex.build(DS.W, DS.b, method=peer, whiten=True, verbose=False, **build)
    with pytest.raises(TypeError, match="whiten: expected a bool"):
        wolindex.build(DS.W, DS.b, method=peer, train=DS.H_train, whiten=1, verbose=False, **build)


def _hide(monkeypatch, package):
    """Make `import package` (and its submodules) fail as if it were not installed."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")] + [package]:
        monkeypatch.setitem(sys.modules, name, None)


@pytest.mark.parametrize("method,package,extra", [("hnswlib", "hnswlib", "hnswlib"), ("scann", "scann", "scann"),
                                                  ("faiss-refine", "faiss", "faiss")])
def test_a_missing_extra_names_it(monkeypatch, method, package, extra):
    _hide(monkeypatch, package)
    with pytest.raises(ImportError, match=rf"the {method.split('-')[0]}\S* method.* pip install 'wolindex\[{extra}\]'"):
        wolindex.build(DS.W, DS.b, method=method, verbose=False)


@pytest.mark.parametrize("peer,package", [("hnswlib", "hnswlib"), ("scann", "scann")])
def test_loading_without_the_extra_names_it(built, monkeypatch, tmp_path, peer, package):
    built(peer).save(tmp_path / "i.wol")
    _hide(monkeypatch, package)
    with pytest.raises(ImportError, match=rf"pip install 'wolindex\[{package}\]'"):
        wolindex.load(tmp_path / "i.wol")


@pytest.mark.parametrize("peer,whiten", [("faiss-refine", False), ("faiss-refine sq8", True), ("hnswlib", False),
                                         ("hnswlib", True), ("scann", False), ("scann", True), ("faiss-ivf", True)])
def test_save_load_gives_identical_results(built, tmp_path, peer, whiten):
    index = built(peer, whiten)
    index.save(tmp_path / "i.wol")
    loaded = wolindex.load(tmp_path / "i.wol")
    settings = {"hnswlib": {"ef": 40}, "scann": {"leaves_to_search": 3}, "faiss-ivf": {"n_probe": 3}}.get(peer, {})
    for a, c in zip(index.search(DS.H_test, 5, return_n_scored=True, **settings),
                    loaded.search(DS.H_test, 5, return_n_scored=True, **settings)):
        np.testing.assert_array_equal(a, c)


def test_scann_searches_as_scann_built_it(built):
    """The searcher wolindex writes anew from its arrays answers exactly as the one ScaNN built."""
    pytest.importorskip("scann")
    from wolindex.methods.scann_baseline import _config, _scann

    method = built("scann").method
    sc = _scann()
    X = method.indexed_rows(built("scann").layer, method.width, None)
    original = sc.ops.create_searcher(X, sc.text_format.MessageToString(_config(sc, method.state)), 1)
    Q = method.queries(DS.H_test)
    for leaves in (1, 4, 20):
        ids, dist = original.search_batched(Q, 30, 60, leaves)
        params = method.Search.from_dict(leaves_to_search=leaves, reorder=60)
        expected = np.where(np.isnan(dist), -1, ids.astype(np.int64))       # ScaNN pads with id 0, distance NaN
        np.testing.assert_array_equal(method.candidates(Q, 30, params), expected)


def test_scann_builds_are_seeded():
    pytest.importorskip("scann")
    a, b, c = (wolindex.build(DS.W, DS.b, method="scann", num_leaves=10, seed=s, verbose=False) for s in (1, 1, 2))
    assert all(np.array_equal(a.method.arrays[k], b.method.arrays[k]) for k in a.method.arrays)
    assert not np.array_equal(a.method.arrays["centroids"], c.method.arrays["centroids"])


def test_concurrent_hnswlib_searches_keep_their_own_ef(built):
    from concurrent.futures import ThreadPoolExecutor

    index = built("hnswlib")
    jobs = [(ef, lo) for ef in (10, 50, 400) for lo in (0, 100, 200)]

    def run(job):
        return index.search(DS.H_test[job[1]:job[1] + 100], 5, ef=job[0])

    expected = [run(job) for job in jobs]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(run, jobs * 3))
    for g, e in zip(got, expected * 3):
        np.testing.assert_array_equal(g[1], e[1])


@pytest.mark.parametrize("peer,settings,error,match", [
    ("hnswlib", {"m": 1}, ValueError, "^m: "),
    ("hnswlib", {"M": 10001}, ValueError, "^m: "),
    ("hnswlib", {"m": 1501}, ValueError, r"m: at most 1500 \(D"),
    ("hnswlib", {"ef_construction": 0}, ValueError, "^ef_construction: "),
    ("hnswlib", {"seed": -1}, ValueError, "^seed: "),
    ("hnswlib", {"m": 8.0}, TypeError, "^m: "),
    ("scann", {"num_leaves": D + 1}, ValueError, "num_leaves: at most 1500"),
    ("scann", {"training_sample_size": D + 1}, ValueError, "training_sample_size: at most 1500"),
    ("scann", {"dims_per_block": 0}, ValueError, "^dims_per_block: "),
    ("scann", {"dims_per_block": 18}, ValueError, r"dims_per_block: at most 17 \(d \+ 1"),
    ("scann", {"anisotropic_quantization_threshold": 1.0}, ValueError, r"^anisotropic_quantization_thr.*\[0, 1\)"),
    ("scann", {"anisotropic_quantization_threshold": -0.1}, ValueError, "^anisotropic_quantization_threshold: "),
    ("scann", {"anisotropic_quantization_threshold": float("nan")}, ValueError, "^anisotropic_quantization_thr"),
    ("scann", {"leaves": 4}, TypeError, "unknown setting"),
    ("faiss-refine", {"quantizer": "pq8"}, ValueError, "^quantizer: expected one of"),
    ("faiss-refine", {"quantizer": None}, ValueError, "^quantizer: "),
    ("faiss-refine", {"m": 18}, ValueError, r"m: at most 17 \(d \+ 1"),
    ("faiss-refine", {"seed": 2**31}, ValueError, "^seed: "),
])
def test_bad_build_settings_name_the_setting(peer, settings, error, match):
    if PEERS[peer][0] != "faiss":
        pytest.importorskip(PEERS[peer][0])
    with pytest.raises(error, match=match):
        wolindex.build(DS.W, DS.b, method=peer, verbose=False, **settings)


@pytest.mark.parametrize("peer,settings,error,match", [
    ("hnswlib", {"ef": 0}, ValueError, "^ef: "),
    ("hnswlib", {"ef_search": D + 1}, ValueError, "ef: at most 1500"),
    ("hnswlib", {"k_factor": D + 1}, ValueError, "k_factor: at most 1500"),
    ("hnswlib", {"n_probe": 3}, TypeError, "unknown setting"),
    ("scann", {"leaves_to_search": 21}, ValueError, r"leaves_to_search: at most 20 \(the index's num_leaves"),
    ("scann", {"reorder": 0}, ValueError, "^reorder: "),
    ("scann", {"pre_reorder_num_neighbors": D + 1}, ValueError, "reorder: at most 1500"),
    ("scann", {"k_factor": 1.5}, TypeError, "^k_factor: "),
    ("faiss-refine", {"k_factor": D + 1}, ValueError, "k_factor: at most 1500"),
    ("faiss-refine", {"k_factor": 0}, ValueError, "^k_factor: "),
])
def test_bad_search_settings_name_the_setting(built, peer, settings, error, match):
    with pytest.raises(error, match=match):
        built(peer).search(DS.H_test[:3], 3, **settings)


def test_small_layers_get_defaults_they_can_hold():
    W, b = random_layer(30, 6, seed=3)
    H = random_queries(4, 6, seed=4)
    exact = wolindex.build(W, b).search(H, 3)[1]
    for method, extra in (("faiss-refine", "faiss"), ("hnswlib", "hnswlib"), ("scann", "scann")):
        pytest.importorskip(extra)
        index = wolindex.build(W, b, method=method, verbose=False)
        np.testing.assert_array_equal(index.search(H, 3, k_factor=10)[1], exact)


def test_spherical_layers_search_both_ends():
    pytest.importorskip("hnswlib")
    W, b = random_layer(400, 8, seed=5)
    H = random_queries(20, 8, seed=6)
    exact = wolindex.build(W, b, scoring="spherical").search(H, 5)
    for method, settings in (("hnswlib", {"ef": 400}), ("faiss-refine", {"k_factor": 20})):
        got = wolindex.build(W, b, method=method, scoring="spherical", verbose=False).search(H, 5, **settings)
        np.testing.assert_array_equal(got[1], exact[1])


# ---- damaged or crafted files: refused when loaded, before the peer's code reads them ----------------------

def _restore(index, arrays=None, state=None):
    method = index.method
    return type(method).restore(index.layer, {**method.arrays, **(arrays or {})}, {**method.state, **(state or {})})


def _level0_with(index, edit):
    """A copy of hnswlib's level-0 block after edit(links (D, 2m + 1) uint32 view, labels (D,) uint64 view)."""
    level0 = index.method.arrays["level0"].copy()
    m = index.method.state["m"]
    links = level0[:, :4 * (2 * m + 1)].view(np.uint32)
    label_at = level0.shape[1] - 8
    edit(links, level0[:, label_at:].view(np.uint64)[:, 0])
    return level0


def _upper_link_to_a_lower_class(index):
    """hnswlib's upper-level lists with their first link pointing at a class of level 0."""
    method = index.method
    links = method.arrays["links"].copy()
    lists = links.view(np.uint32)
    lists[0, 0] = max(lists[0, 0], 1)
    lists[0, 1] = int(np.flatnonzero(method.arrays["levels"] == 0)[0])
    return links


def _links_edit(edit):
    return lambda i: ({"level0": _level0_with(i, edit)}, {})


@pytest.mark.parametrize("change,match", [
    (_links_edit(lambda links, labels: links.__setitem__((0, 1), D)), "level0 links to class 1500"),
    (_links_edit(lambda links, labels: links.__setitem__((3, 0), 25)), "link count of 25, above the 24 slots"),
    (_links_edit(lambda links, labels: links.__setitem__((3, 0), 1 << 16)), "link count"),  # hnswlib's deletion mark
    (_links_edit(lambda links, labels: labels.__setitem__(5, labels[6])), "labels must hold each class id"),
    (_links_edit(lambda links, labels: labels.__setitem__(5, 2**63)), "labels must hold each class id"),
    (lambda i: ({"level0": i.method.arrays["level0"][:, :-4]}, {}), "level0 must have shape"),
    (lambda i: ({"level0": i.method.arrays["level0"][:-1]}, {}), "level0 must have shape"),
    (lambda i: ({"links": i.method.arrays["links"][:-1]}, {}), "links must have shape"),
    (lambda i: ({"links": _upper_link_to_a_lower_class(i)}, {}), "above that class's own"),
    (lambda i: ({"levels": np.full(D, -1, np.int32)}, {}), "levels must lie in"),
    (lambda i: ({"levels": i.method.arrays["levels"].astype(np.int64)}, {}), "levels must be int32"),
    (lambda i: ({}, {"entry_point": int(np.argmin(i.method.arrays["levels"]))}), "not the top one"),
    (lambda i: ({}, {"entry_point": D}), "state: entry_point"),
    (lambda i: ({}, {"m": 13}), "level0 must have shape"),
    (lambda i: ({}, {"m": 10**6}), "state: m"),
    (lambda i: ({}, {"width": 18}), "state: width must be 17"),
])
def test_hnswlib_refuses_damaged_graphs(built, change, match):
    pytest.importorskip("hnswlib")
    index = built("hnswlib")
    with pytest.raises(ValueError, match=match):
        _restore(index, *change(index))


def test_hnswlib_refuses_a_row_that_is_not_finite(built):
    index = built("hnswlib")
    level0 = index.method.arrays["level0"].copy()
    level0[7, 4 * 25:4 * 26] = np.array([np.nan], np.float32).view(np.uint8)
    with pytest.raises(ValueError, match="level0 holds NaN"):
        _restore(index, {"level0": level0})


@pytest.mark.parametrize("arrays,state,match", [
    (lambda a: {"tokens": np.where(np.arange(D) == 9, 20, a["tokens"]).astype(np.int32)}, {},
     r"tokens must lie in \[0, 20\)"),
    (lambda a: {"tokens": np.full(D, -1, np.int32)}, {}, "tokens must lie in"),
    (lambda a: {"codes": np.full_like(a["codes"], 16)}, {}, r"codes must lie in \[0, 16\)"),
    (lambda a: {"codebook": np.full_like(a["codebook"], np.nan)}, {}, "codebook holds NaN"),
    (lambda a: {"codebook": a["codebook"][:, :8]}, {}, "codebook must have shape"),
    (lambda a: {"centroids": a["centroids"][:-1]}, {}, "centroids must have shape"),
    (lambda a: {"centroids": a["centroids"].astype(np.float32)}, {}, "centroids must be float64"),
    (lambda a: {"codes": a["codes"][:-1]}, {}, "codes must have shape"),
    (lambda a: {}, {"num_leaves": 19}, "centroids must have shape"),
    (lambda a: {}, {"num_leaves": D + 1}, "state: num_leaves"),
    (lambda a: {}, {"dims_per_block": 4}, "state: width must be 20"),
    (lambda a: {}, {"anisotropic_quantization_threshold": 2.0}, "state: anisotropic_quantization_threshold"),
    (lambda a: {}, {"seed": "0"}, "state: seed"),
])
def test_scann_refuses_damaged_arrays(built, arrays, state, match):
    pytest.importorskip("scann")
    index = built("scann")
    with pytest.raises((ValueError, TypeError), match=match):
        _restore(index, arrays(index.method.arrays), state)


def _pq_blob(m):
    return wolindex.build(DS.W, DS.b, method="faiss-refine", m=m, verbose=False).method.arrays["faiss_index"]


@pytest.mark.parametrize("peer,arrays,state,match", [
    ("faiss-refine", lambda b: {"faiss_index": b("faiss-refine sq8")}, {}, "is a IndexScalarQuantizer"),
    ("faiss-refine sq8", lambda b: {"faiss_index": b("faiss-refine")}, {}, "is a IndexPQFastScan"),
    ("faiss-refine", lambda b: {"faiss_index": b("faiss-refine")[:-50]}, {}, "not a readable FAISS index"),
    ("faiss-refine", lambda b: {"faiss_index": _pq_blob(17)}, {}, "faiss_index holds 1500 vectors of width 17"),
    ("faiss-refine", lambda b: {"faiss_index": _pq_blob(3)}, {}, "3 sub-quantisers of 4 bits"),  # width 18 too
    ("faiss-refine", lambda b: {}, {"quantizer": "pq8"}, "state: quantizer must be one of"),
    ("faiss-refine", lambda b: {}, {"m": 16}, "state: width must be 32"),
    ("faiss-refine sq8", lambda b: {}, {"width": 17}, r"state: width must be 32 \(the layer's d \+ 1 padded"),
])
def test_faiss_refine_refuses_foreign_or_damaged_members(built, peer, arrays, state, match):
    with pytest.raises(ValueError, match=match):
        _restore(built(peer), arrays(lambda p: built(p).method.arrays["faiss_index"]), state)


@pytest.mark.parametrize("peer", ["faiss-ivf", "faiss-refine", "hnswlib", "scann"])
@pytest.mark.parametrize("arrays,state,error,match", [
    (lambda T: {"whiten": np.zeros_like(T)}, {}, ValueError, "whiten: the 17 x 17 transform is singular"),
    (lambda T: {"whiten": T[:-1]}, {}, ValueError, "whiten must have shape"),
    (lambda T: {"whiten": np.where(np.eye(17) > 0, np.inf, T).astype(np.float32)}, {}, ValueError, "whiten holds NaN"),
    (lambda T: {"whiten": T.astype(np.float64)}, {}, ValueError, "whiten must be float32"),
    (lambda T: {}, {"whiten": False}, ValueError, "whiten must be there exactly when"),
    (lambda T: {}, {"whiten": 1}, TypeError, "state: whiten: expected a bool"),
])
def test_whitened_indexes_refuse_a_damaged_transform(built, peer, arrays, state, error, match):
    if PEERS[peer][0] != "faiss":
        pytest.importorskip(PEERS[peer][0])
    index = built(peer, True)
    with pytest.raises(error, match=match):
        _restore(index, arrays(index.method.arrays["whiten"]), state)


def test_a_transform_missing_from_a_whitened_index_is_refused(built):
    index = built("faiss-ivf", True)
    arrays = {k: v for k, v in index.method.arrays.items() if k != "whiten"}
    with pytest.raises(ValueError, match="whiten must be there exactly when state says whiten=true"):
        type(index.method).restore(index.layer, arrays, index.method.state)


def _level0_with_first_link(level0, target):
    """hnswlib's level-0 block with class 0's first link pointing at `target`."""
    level0 = level0.copy()
    level0[0, 4:8] = np.array([target], np.uint32).view(np.uint8)
    level0[0, :4] = np.array([max(1, int(level0[0, :4].view(np.uint32)[0]))], np.uint32).view(np.uint8)
    return level0


@pytest.mark.parametrize("peer,name,tamper,match", [
    ("hnswlib", "level0", lambda a: _level0_with_first_link(a, D), "level0 links to class 1500"),
    ("scann", "tokens", lambda a: np.full_like(a, 99), "tokens must lie in"),
    ("faiss-refine", "faiss_index", lambda a: a[::-1].copy(), "not a readable FAISS index"),
    ("faiss-ivf", "whiten", lambda a: np.zeros_like(a), "transform is singular"),
])
def test_a_tampered_saved_file_is_refused_at_load(built, tmp_path, peer, name, tamper, match):
    """A crafted file whose checksums match (verify=False stands for that): the method's own checks refuse it."""
    if PEERS[peer][0] != "faiss":
        pytest.importorskip(PEERS[peer][0])
    index = built(peer, name == "whiten")
    index.save(tmp_path / "i")
    path = Path(tmp_path / "i" / f"method.{name}.npy")
    np.save(path, tamper(np.load(path)))
    with pytest.raises(ValueError, match=match):
        wolindex.load(tmp_path / "i", verify=False)
