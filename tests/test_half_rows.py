"""Rows stored in float16 / bfloat16 (build(..., dtype=)): every engine scores the stored values exactly in
float32, so an index over half rows returns the exact top-k of the layer rounded to that dtype."""
import numpy as np
import pytest

import wolindex
import wolindex.gpu as wolindex_gpu
from wolindex import rows
from wolindex.engine import cpu, screen_cpu
from wolindex.engine.dispatch import candidate_topk, exact_topk, query_products
from wolindex.engine.buckets import Buckets
from wolindex.layer import OutputLayer
from wolindex.rows import as_float32_rows, kernel_rows, rows_to_storage, storage_to_float32

from helpers import assert_topk_matches, random_layer, random_queries

D, DIM = 3000, 64
W, B = random_layer(D, DIM, seed=71)
H_TRAIN = random_queries(1500, DIM, seed=72)
H = random_queries(40, DIM, seed=73)
HALF = ("float16", "bfloat16")
BUILDS = {
    "exact": {},
    "screen": dict(rank=None),
    "adaptive": dict(cutoffs=[300, 1200], screen=True),
    "lss": dict(n_buckets=30, n_tables=2, rounds=1),
}
SETTINGS = {"exact": [{}], "screen": [{"n_candidates": 32}, {"n_candidates": D}, {"mode": "certified"}],
            "adaptive": [{"margin": 1.0}, {"mode": "certified"}, {"margin": 2.0, "screen": 32}],
            "lss": [{"n_probe": 10}, {"n_probe": 10, "path": "grouped"}, {"n_probe": 10, "engine": "numpy"}]}


def rounded(dtype, A=W):
    return storage_to_float32(np, rows_to_storage(A, dtype), dtype)


@pytest.mark.parametrize("dtype", HALF)
def test_kernels_read_every_finite_pattern_exactly(dtype):
    """All 65,536 bit patterns: the Numba conversion of every finite one equals NumPy's float32 value."""
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    rows = bits.view(np.float16) if dtype == "float16" else bits
    values = storage_to_float32(np, rows, dtype)
    finite = np.isfinite(values)
    V = np.ascontiguousarray(rows[finite][:, None])
    got = query_products(np.ones((1, 1), np.float32), V)[0]
    np.testing.assert_array_equal(got, values[finite])       # (-0.0 comes back +0.0: a sum starting at 0)


@pytest.mark.parametrize("f16c", [True, False])
def test_both_float16_conversions_read_every_finite_pattern_exactly(monkeypatch, f16c):
    """The F16C instruction and the integer fallback (CPUs without F16C) give NumPy's float32 value."""
    from numba import njit

    monkeypatch.setattr(cpu, "HALF_BY_F16C", f16c)

    @njit
    def convert(bits, out):
        for i in range(bits.shape[0]):
            out[i] = cpu.widen(bits[i])

    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    values = bits.view(np.float16).astype(np.float32)
    out = np.empty(bits.size, np.float32)
    convert(bits.view(np.int16), out)
    finite = np.isfinite(values)
    np.testing.assert_array_equal(out.view(np.uint32)[finite], values.view(np.uint32)[finite])
    assert np.isnan(out[np.isnan(values)]).all() and (out[np.isinf(values)] == values[np.isinf(values)]).all()


@pytest.mark.parametrize("dtype", HALF)
def test_exact_kernel_scores_the_stored_rows(dtype):
    logits = H.astype(np.float64) @ rounded(dtype).T.astype(np.float64) + B
    for engine in ("numba", "numpy"):
        s, lab = exact_topk(rows_to_storage(W, dtype), B, H, 10, engine=engine)
        assert_topk_matches(s, lab, logits, 10)


def test_candidate_kernels_score_the_stored_rows():
    """One half dtype here and in the builds below (float16): the conversion itself is tested for both
    above, and every kernel reads rows through it; each further dtype compiles every kernel again."""
    Ws = rows_to_storage(W, "float16")
    logits = H.astype(np.float64) @ rounded("float16").T.astype(np.float64) + B
    buckets = Buckets(np.array([0, 1000, 2500, D], np.int64), np.random.default_rng(0).permutation(D).astype(np.int32))
    probes = np.tile(np.array([[0, 2]], np.int32), (H.shape[0], 1))
    mask = np.zeros((H.shape[0], D), bool)
    mask[:, buckets.indices[:1000]] = True
    mask[:, buckets.indices[2500:]] = True
    for engine, path in (("numba", "fused"), ("numba", "grouped"), ("numpy", "auto")):
        s, lab, n = candidate_topk(Ws, B, H, 10, buckets, probes, engine=engine, path=path)
        assert_topk_matches(s, lab, logits, 10, cand_mask=mask)
        assert (n == mask.sum(axis=1)).all()


@pytest.fixture(scope="module", params=[(m, "bfloat16" if m == "exact" else "float16") for m in sorted(BUILDS)],
                ids=lambda p: "-".join(p))
def built(request):
    method, dtype = request.param
    return method, dtype, wolindex.build(W, B, method=method, train=H_TRAIN, dtype=dtype, verbose=False,
                                         **BUILDS[method])


def compiled_variants() -> int:
    return sum(len(f.signatures) for m in (cpu, screen_cpu) for f in vars(m).values() if hasattr(f, "signatures"))


def test_half_index_is_exact_over_the_rounded_layer(built, tmp_path):
    """Rows stored in the dtype (about half W's bytes); certified and all-candidate searches equal exact search
    of the rounded layer; routed searches keep exact scores of what they return; save / load (mmap, and
    without the layer) keep it all, and the mapped rows run the kernels compiled for the in-memory ones."""
    method, dtype, index = built
    assert index.layer.row_dtype == dtype and index.layer.W.itemsize == 2
    stats = index.stats()
    assert stats["row_dtype"] == dtype and stats["index_bytes_over_W_bytes"] == index.nbytes() / W.nbytes
    logits = H.astype(np.float64) @ rounded(dtype).T.astype(np.float64) + B
    index.save(tmp_path / "half.wol")
    loaded = wolindex.load(tmp_path / "half.wol", mmap=True)
    assert loaded.layer.W.dtype == index.layer.W.dtype
    index.save(tmp_path / "external", with_layer=False)
    external = wolindex.load(tmp_path / "external", layer=OutputLayer.from_arrays(W, B))
    assert external.layer.W.dtype == index.layer.W.dtype
    rows = np.arange(H.shape[0])[:, None]
    for settings in SETTINGS[method]:
        s, lab = index.search(H, 10, **settings)
        variants = compiled_variants()
        if method == "exact" or settings.get("mode") == "certified" or settings.get("n_candidates") == D:
            assert_topk_matches(s, lab, logits, 10)
        else:                                      # routed: exact scores of what it returns, most top-1s found
            np.testing.assert_allclose(s, logits[rows, lab], rtol=1e-5, atol=1e-4)
            assert (lab[:, 0] == logits.argmax(axis=1)).mean() >= 0.5
        for other in (loaded, external):
            s2, lab2 = other.search(H, 10, **settings)
            np.testing.assert_array_equal(lab2, lab)
            np.testing.assert_array_equal(s2, s)
        assert compiled_variants() == variants
    es, el = index.search_exact(H, 10)
    assert_topk_matches(es, el, logits, 10)


def test_half_rows_keep_most_of_the_float32_top_1():
    """Rounding W changes the ranking only where logits nearly tie: the top-1 of float32 search is kept."""
    ref = exact_topk(W, B, H, 1)[1]
    for dtype in HALF:
        got = wolindex.build(W, B, dtype=dtype, verbose=False).search(H, 1)[1]
        assert (got == ref).mean() >= 0.9


def test_logprobs_and_gpu_dtype_follow_the_stored_rows(monkeypatch):
    index = wolindex.build(W, B, dtype="bfloat16", verbose=False)
    s, lab, lp = index.search(H, 5, return_logprobs="exact")
    logits = H.astype(np.float64) @ rounded("bfloat16").T.astype(np.float64) + B
    lse = np.log(np.exp(logits - logits.max(axis=1, keepdims=True)).sum(axis=1)) + logits.max(axis=1)
    np.testing.assert_allclose(lp, np.take_along_axis(logits, lab, axis=1) - lse[:, None], atol=1e-4)
    asked = []
    monkeypatch.setattr(wolindex_gpu, "to_device", lambda index, device, dtype: asked.append(dtype))
    index.to("cuda")
    index.to("cuda", "float32")
    assert asked == ["bfloat16", "float32"]


def test_spherical_layers_rank_the_rounded_rows_by_their_square():
    sph = wolindex.build(W, B, scoring="spherical", epsilon=1e-3, dtype="float16", verbose=False)
    s, lab, probs = sph.search(H, 5, return_probs=True)
    o = H.astype(np.float64) @ rounded("float16").T.astype(np.float64) + B
    assert_topk_matches(s, lab, o * o, 5, rtol=1e-4)
    total = (o * o).sum(axis=1) + D * 1e-3
    np.testing.assert_allclose(probs, (np.take_along_axis(o * o, lab, axis=1) + 1e-3) / total[:, None], rtol=1e-4)


@pytest.mark.parametrize("method,build,search", [
    ("faiss-ivf", {"nlist": 30}, {"n_probe": 30}),
    ("scann", {"num_leaves": 20}, {"leaves_to_search": 20, "reorder": 200}),
])
def test_peers_index_the_rounded_rows(method, build, search, tmp_path):
    """A peer's own index is built on the rounded rows' values (never their bits), and so is the loaded one's:
    searching every list / leaf then finds the exact top-1 of the rounded layer."""
    pytest.importorskip({"faiss-ivf": "faiss", "scann": "scann"}[method])
    index = wolindex.build(W, B, method=method, dtype="bfloat16", verbose=False, **build)
    ref = exact_topk(rows_to_storage(W, "bfloat16"), B, H, 1)[1][:, 0]
    assert (index.search(H, 1, **search)[1][:, 0] == ref).mean() >= 0.95
    index.save(tmp_path / "peer")
    assert (wolindex.load(tmp_path / "peer").search(H, 1, **search)[1][:, 0] == ref).mean() >= 0.95


def test_layer_conversions(monkeypatch):
    layer = OutputLayer.from_arrays(W, B)
    monkeypatch.setattr(rows, "BLOCK_BYTES", 3 * W.shape[1] * 4)   # blocks of 3 rows: several, one short
    order = np.random.default_rng(1).permutation(D)
    for dtype in ("float16", "bfloat16"):
        permuted = layer.permuted(order, dtype)         # as build stores a 16-bit index
        np.testing.assert_array_equal(permuted.W, layer.stored_as(dtype).W[order])
        np.testing.assert_array_equal(permuted.b, B[order])
        np.testing.assert_array_equal(permuted.row_class, order)
        # what a 16-bit build fits: a float32 copy where rounding changes a value, else the layer itself
        fitted = layer.rounded_rows(dtype)
        np.testing.assert_array_equal(fitted.W, rounded(dtype))
        assert fitted.rounded_rows(dtype) is fitted and fitted.W.dtype == np.float32
    half = layer.stored_as("float16")
    assert half.W.dtype == np.float16 and half.stored_as("float16") is half
    np.testing.assert_array_equal(half.as_float32().W, rounded("float16"))
    assert layer.as_float32() is layer and layer.stored_as("float32") is layer
    np.testing.assert_array_equal(kernel_rows(half.W), half.W.view(np.int16))
    np.testing.assert_array_equal(as_float32_rows(half.W), rounded("float16"))
    bf = half.stored_as("bfloat16")     # float16 values, rounded again to bfloat16
    np.testing.assert_array_equal(as_float32_rows(bf.W), rounded("bfloat16", rounded("float16")))


def test_bad_dtypes_and_ranges_are_refused(tmp_path):
    with pytest.raises(ValueError, match="dtype: expected one of"):
        wolindex.build(W, B, dtype="int8", verbose=False)
    with pytest.raises(ValueError, match="dtype: W has values beyond float16's range"):
        wolindex.build(W * 1e5, B, dtype="float16", verbose=False)
    with pytest.raises(ValueError, match="dtype: W has values that round beyond bfloat16's range"):
        wolindex.build(np.float32([[3.4e38, 1.0]]), dtype="bfloat16", verbose=False)
    with pytest.raises(ValueError, match="W: contains NaN or Inf"):
        rows_to_storage(np.float32([[np.nan, 1.0]]), "bfloat16")
    with pytest.raises(TypeError, match="W: expected rows stored as"):
        exact_topk(W.astype(np.float64), B, H, 3)
    index = wolindex.build(W, B, dtype="bfloat16", verbose=False)
    index.save(tmp_path / "ix")
    arrays = np.load(tmp_path / "ix" / "layer.W.npy", mmap_mode="r+")
    arrays[3, 5] = 0x7FC0                          # a bfloat16 NaN
    arrays.flush()
    del arrays
    with pytest.raises(ValueError, match="NaN or Inf"):
        wolindex.load(tmp_path / "ix", verify=False)
