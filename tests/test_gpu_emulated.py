"""The GPU engine's kernels and host code, run on the CPU: kernels.cu compiled by g++ against the emulator
in tests/cuda_emulator, NumPy standing in for CuPy. Checks selection, exact search (one and several class
blocks), the fused and tile candidate paths and each method's GPU search against the CPU engine; on a
machine with a GPU, tests/gpu runs the same code through CuPy."""
import functools
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import cuda_emulator
import ml_dtypes          # the independent bfloat16 reference (a test dependency: pip install 'wolindex[test]')
import wolindex
from helpers import assert_topk_matches, random_layer, random_queries
from test_candidates import candidate_mask, random_buckets
from wolindex.contrib.datasets import synthetic
from wolindex.engine import PackedRows
from wolindex.gpu import engine, kernels, to_device
from wolindex.gpu.runtime import queries_to_storage
from wolindex.rows import float32_to_bfloat16_bits, rows_to_storage, storage_to_float32

pytestmark = pytest.mark.skipif(cuda_emulator.compiler() is None, reason="needs g++ to build the CUDA emulator")


def rounded(A, dtype: str) -> np.ndarray:
    """A (float32) as the device should read it after storing it in dtype, in float64, rounded
    independently of wolindex: NumPy's float16, ml_dtypes' bfloat16 (both round to nearest even)."""
    A = np.asarray(A, np.float32)
    if dtype == "float16":
        return A.astype(np.float16).astype(np.float64)
    if dtype == "bfloat16":
        return A.astype(ml_dtypes.bfloat16).astype(np.float64)
    return A.astype(np.float64)


def stored_bits(A, dtype: str) -> np.ndarray:
    """The independent reference of rows_to_storage(A, dtype): float32 values, float16 values or bfloat16
    bit patterns (uint16)."""
    A = np.asarray(A, np.float32)
    if dtype == "bfloat16":
        return A.astype(ml_dtypes.bfloat16).view(np.uint16)
    return A.astype(np.float16) if dtype == "float16" else A


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    return cuda_emulator.EmulatedRuntime(cuda_emulator.build(tmp_path_factory.mktemp("emulator")))


@pytest.fixture
def small_blocks(monkeypatch):
    """Slices small enough that every row is split over several blocks (the merge-when-last path)."""
    monkeypatch.setattr(engine, "SELECT_SLICE", 96)
    monkeypatch.setattr(engine, "FUSED_SLICE", 48)


@pytest.mark.skipif(cuda_emulator.nvrtc_library() is None, reason="needs the nvidia-cuda-nvrtc-cu12 wheel")
def test_kernels_compile_with_nvrtc_without_warnings():
    """The real CUDA compiler (CuPy's, through NVRTC; no GPU needed) accepts kernels.cu for Hopper with the
    constants of kernels.py as -D options (as CupyRuntime passes them) and exports every kernel the engine
    launches; without those options it refuses (the constants have one source, kernels.py)."""
    lib, source = cuda_emulator.nvrtc_library(), kernels.SOURCE.read_bytes()
    base = [b"--std=c++17", b"--gpu-architecture=compute_90"]
    status, log, ptx = cuda_emulator.nvrtc_compile(lib, source, base + [o.encode() for o in kernels.options()])
    assert status == 0 and "warning" not in log, log
    assert sorted(re.findall(r"\.entry (\w+)", ptx)) == sorted(kernels.KERNELS)
    status, log, _ = cuda_emulator.nvrtc_compile(lib, source, base)
    assert status != 0 and "kernels.options()" in log, log


def test_kernel_constants_have_one_source():
    """kernels.cu defines none of the constants kernels.py passes as -D options; unknown overrides are refused."""
    source = kernels.SOURCE.read_text()
    for name in kernels.defines():
        assert not re.search(rf"#\s*define\s+{name}\b", source), name
    assert kernels.options()[1] == f"-DWOL_KMAX={kernels.KMAX}"
    with pytest.raises(ValueError, match="WOL_KMAXX"):
        kernels.options(WOL_KMAXX=4)


def test_select_dense_with_bias_and_ties(rt, small_blocks):
    rng = np.random.default_rng(0)
    S = rng.integers(-3, 4, (3, 500)).astype(np.float32)          # many ties: ids must break them
    bias = rng.integers(-1, 2, 500).astype(np.float32)
    scores, labels = engine.select_topk(rt, S, 7, n_rows=3, n_cols=500, bias=bias, id_offset=1000)
    ref = S.astype(np.float64) + bias
    order = np.lexsort((np.arange(500)[None].repeat(3, 0), -ref), axis=1)[:, :7]
    np.testing.assert_array_equal(labels, order + 1000)
    np.testing.assert_array_equal(scores, np.take_along_axis(ref, order, 1))


def test_select_ragged_with_ids_repeats_and_padding(rt, small_blocks):
    """Ragged rows over a flat array; a class met twice is kept once; skipped ids (-1); a short and an
    empty row are padded."""
    values = np.array([5, 1, 5, 3, -1, 9, 2, 9, 4, 0], np.float32)
    ids = np.array([7, 2, 7, 3, -1, 4, 8, 4, 1, 6], np.int32)
    row_ptr = np.array([0, 5, 10, 10], np.int64)
    scores, labels = engine.select_topk(rt, values, 4, n_rows=3, ids=ids, row_ptr=row_ptr, mean_len=3)
    assert labels.tolist() == [[7, 3, 2, -1], [4, 1, 8, 6], [-1, -1, -1, -1]]
    assert scores[0, :3].tolist() == [5, 3, 1] and np.isneginf(scores[0, 3]) and np.isneginf(scores[2]).all()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("budget", [None, 700])
def test_exact_matches_numpy(rt, monkeypatch, dtype, budget):
    """One GEMM + selection, or (a small score budget) several class and query blocks merged."""
    if budget:
        monkeypatch.setattr(engine, "SCORE_BUDGET", budget)
        monkeypatch.setattr(engine, "QUERY_BLOCK", 2)
    W, b = random_layer(900, 24, seed=2)
    H = random_queries(5, 24)
    Ws = rows_to_storage(W, dtype)
    np.testing.assert_array_equal(Ws, stored_bits(W, dtype))
    scores, labels = engine.exact_topk(rt, Ws, b, H, 10, dtype)
    logits = rounded(H, dtype) @ rounded(W, dtype).T + b             # the GEMM rounds queries too
    assert_topk_matches(scores, labels, logits, 10)


@pytest.mark.parametrize("path", ["fused", "grouped"])
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_candidates_match_cpu(rt, small_blocks, path, dtype):
    """Overlapping buckets (a class in two probed buckets scored twice, kept once), repeated and -1 probes,
    empty buckets; against the full logits restricted to each query's candidates."""
    rng = np.random.default_rng(7)
    W, b = random_layer(400, 16, seed=3)
    H = random_queries(5, 16, seed=4)
    buckets = random_buckets(400, 20, rng, max_size=40)
    probes = rng.integers(-1, 20, (5, 4)).astype(np.int32)
    probes[0] = probes[0, 0]
    packed = PackedRows.of(buckets, W, b)
    rows = engine.DeviceBuckets.upload(rt, buckets, packed, dtype)
    scores, labels, n_scored = engine.candidate_topk(rt, rows, H, probes, 6, path)
    logits = H.astype(np.float64) @ rounded(W, dtype).T + b       # rows rounded, queries not
    assert_topk_matches(scores, labels, logits, 6, cand_mask=candidate_mask(buckets, probes, 400))
    sizes = buckets.sizes()
    np.testing.assert_array_equal(n_scored, np.where(probes >= 0, sizes[np.maximum(probes, 0)], 0).sum(axis=1))


# float32 bit pattern -> bfloat16 bit pattern under round-to-nearest-even (worked by hand)
BF16_CASES = [
    (0x3F800000, 0x3F80),    # 1.0: exact
    (0x3F808000, 0x3F80),    # halfway, even neighbour below: down
    (0x3F818000, 0x3F82),    # halfway, odd below: up to even
    (0x3F808001, 0x3F81),    # just above halfway: up
    (0x3F807FFF, 0x3F80),    # just below halfway: down
    (0x3F80FFFF, 0x3F81),
    (0xBF808000, 0xBF80),    # negative halfway cases: the magnitude rounds the same way
    (0xBF818000, 0xBF82),
    (0xBFFFFFFF, 0xC000),    # carry into the exponent (-1.99999 -> -2)
    (0x80000000, 0x8000),    # -0.0 keeps its sign
    (0x00000000, 0x0000),
    (0x00000001, 0x0000),    # the smallest subnormal rounds to zero
    (0x00008000, 0x0000),    # subnormal halfway, even: down
    (0x00018000, 0x0002),    # subnormal halfway, odd: up
    (0x0000C000, 0x0001),
    (0x80018001, 0x8002),    # negative subnormal
    (0x007F8000, 0x0080),    # largest subnormals round up into the normal range
    (0x807FFFFF, 0x8080),
    (0x7F7F7FFF, 0x7F7F),    # the largest finite bfloat16 (3.39e38), from just below halfway
    (0x7F7EC000, 0x7F7F),
    (0xFF7E8000, 0xFF7E),    # -3.38e38 halfway, even: down
    (0x7F000001, 0x7F00),    # 1.7e38
    (0x5F5E1234, 0x5F5E),    # 1.6e19
]

# float32 value -> float16 bit pattern under round-to-nearest-even (worked by hand)
F16_CASES = [
    (1.0, 0x3C00), (1 + 2.0 ** -11, 0x3C00), (1 + 3 * 2.0 ** -11, 0x3C02), (1 + 2.0 ** -11 + 2.0 ** -20, 0x3C01),
    (-(1 + 3 * 2.0 ** -11), 0xBC02), (-0.0, 0x8000), (2.0 ** -25, 0x0000), (3 * 2.0 ** -25, 0x0002),
    (2.0 ** -24, 0x0001), (1.5 * 2.0 ** -24, 0x0002), (65504.0, 0x7BFF), (65519.0, 0x7BFF), (-65504.0, 0xFBFF),
    (2.0 ** -14 - 2.0 ** -25, 0x0400),   # the largest subnormal's halfway to the smallest normal: up, to even
]


def finite_bits(rng, n, halfway=False):
    """n random float32 values over all exponents (as bit patterns), finite and below the value that
    rounds to bfloat16 infinity; halfway=True forces the 16 dropped bits to exactly 0x8000."""
    bits = rng.integers(0, 2 ** 32, n, dtype=np.uint64).astype(np.uint32)
    if halfway:
        bits = (bits & np.uint32(0xFFFF0000)) | np.uint32(0x8000)
    keep = (bits & np.uint32(0x7FFFFFFF)) < np.uint32(0x7F7F8000)
    return bits[keep]


def test_bfloat16_conversion_rounds_to_nearest_even():
    """Every path that stores float32 as bfloat16 (rows, queries) gives the hand-worked patterns and
    ml_dtypes' on random and forced-halfway values; storage_to_float32 reads them back exactly."""
    src = np.array([c[0] for c in BF16_CASES], np.uint32)
    want = np.array([c[1] for c in BF16_CASES], np.uint16)
    assert np.array_equal(src.view(np.float32).astype(ml_dtypes.bfloat16).view(np.uint16), want)  # the reference
    rng = np.random.default_rng(0)
    bits = np.concatenate([src, finite_bits(rng, 20000), finite_bits(rng, 20000, halfway=True)])
    bits = bits[:len(bits) // 8 * 8]
    A = bits.view(np.float32).reshape(-1, 8)
    ref = A.astype(ml_dtypes.bfloat16).view(np.uint16)
    for name, got in (("rows_to_storage", rows_to_storage(A, "bfloat16")),
                      ("float32_to_bfloat16_bits", float32_to_bfloat16_bits(np, A)),
                      ("queries_to_storage", queries_to_storage(np, A, "bfloat16"))):
        assert got.dtype == np.uint16 and got.shape == A.shape, name
        np.testing.assert_array_equal(got.ravel()[:len(want)], want, err_msg=name)
        bad = np.flatnonzero(got.ravel() != ref.ravel())
        assert bad.size == 0, f"{name}: {bad.size} values differ, e.g. float32 bits {bits[bad[:3]]}"
    # strided / non-contiguous input is converted the same way
    np.testing.assert_array_equal(rows_to_storage(A[:, ::2], "bfloat16"), ref[:, ::2])
    # read back: exact, sign of zero included
    back = storage_to_float32(np, ref, "bfloat16")
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back.view(np.uint32), ref.view(ml_dtypes.bfloat16).astype(np.float32).view(np.uint32))


def test_float16_conversion_rounds_to_nearest_even():
    A = np.array([c[0] for c in F16_CASES], np.float32)[None]
    want = np.array([c[1] for c in F16_CASES], np.uint16)[None]
    for got in (rows_to_storage(A, "float16"), queries_to_storage(np, A, "float16")):
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got.view(np.uint16), want)
    rng = np.random.default_rng(1)
    R = (rng.standard_normal((300, 16)) * np.exp2(rng.integers(-30, 15, (300, 16)))).astype(np.float32)
    np.testing.assert_array_equal(rows_to_storage(R, "float16").view(np.uint16), R.astype(np.float16).view(np.uint16))
    np.testing.assert_array_equal(storage_to_float32(np, rows_to_storage(R, "float16"), "float16"),
                                  R.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(rows_to_storage(R, "float32"), R)


def rounding_layer(n_classes=320, dim=16, seed=4):
    """A layer whose rows need rounding in both 16-bit formats: mantissas with many bits, exact
    bfloat16 halfway values, float16 subnormals and values beyond float16's precision."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((n_classes, dim)).astype(np.float32)
    bits = W.view(np.uint32)
    bits[::3, ::2] = (bits[::3, ::2] & np.uint32(0xFFFF0000)) | np.uint32(0x8000)   # bfloat16 halfway cases
    W[1::7, 3] *= np.float32(1e-5)                                                    # float16 subnormals
    W[2::11, 5] *= np.float32(300.0)
    b = rng.standard_normal(n_classes).astype(np.float32)
    return W, b


@functools.lru_cache(maxsize=None)
def low_precision_index(method):
    W, b = rounding_layer()
    build = {"exact": {}, "lss": dict(n_buckets=12, n_tables=1, rounds=0),
             "adaptive": dict(cutoffs=[60, 160], bound_block=64, cost_queries=64)}[method]
    train = random_queries(200, 16, seed=8)
    return wolindex.build(W, b, method=method, train=train, verbose=False, **build)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("method", ["exact", "lss", "adaptive"])
def test_device_rows_are_rounded_to_nearest_even(rt, method, dtype):
    """The rows each GPU search holds are the layer's rows (packed bucket by bucket for bucket methods)
    rounded by ml_dtypes / NumPy, bit for bit."""
    index = low_precision_index(method)
    gpu = to_device(index, dtype=dtype, runtime=rt)
    if method == "exact":
        stored, rows = gpu.ops.W, index.layer.W
    else:
        stored, rows = gpu.ops.rows.W, index.method.packed.entry_rows()[0]
    np.testing.assert_array_equal(np.asarray(stored).view(np.uint16), stored_bits(rows, dtype).view(np.uint16))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("method,settings", [
    ("exact", {}),
    ("lss", {"n_probe": 12, "path": "fused"}),               # every bucket probed: the whole layer
    ("lss", {"n_probe": 12, "path": "grouped"}),
    ("adaptive", {"margin": 1e6, "path": "fused"}),          # every cluster opened
    ("adaptive", {"margin": 1e6, "path": "grouped"}),
])
def test_low_precision_search_matches_independent_rounding(rt, small_blocks, method, settings, dtype):
    """GPU search over 16-bit rows returns the exact top-k of the independently rounded layer (float64
    reference, tie-aware): exact search's GEMM rounds the queries too, candidate kernels read them as float32."""
    index = low_precision_index(method)
    layer = index.layer.in_class_order()
    W, b = layer.W, layer.b
    H = random_queries(3, 16, seed=21)
    scores, labels = to_device(index, dtype=dtype, runtime=rt).search(H, 8, **settings)
    Hr = rounded(H, dtype) if method == "exact" else H.astype(np.float64)
    logits = Hr @ rounded(W, dtype).T + b
    assert_topk_matches(scores, labels, logits, 8)
    exact32 = H.astype(np.float64) @ W.T.astype(np.float64) + b
    assert np.abs(logits - exact32).max() > 1e-3            # the rounding is visible at this tolerance


DATA = synthetic(n_classes=1500, dim=16, n_train=4000, n_test=6, seed=9)


@pytest.mark.parametrize("method,build,settings", [
    ("exact", {}, [{}]),
    ("lss", dict(n_buckets=32, n_tables=2, rounds=1), [{"n_probe": 3}, {"n_probe": 3, "path": "grouped"}]),
    ("ds", dict(n_experts=8, start_experts=2, epochs_per_stage=0.2, final_epochs=0.2), [{"n_probe": 2}]),
    ("adaptive", dict(cutoffs=[200, 700]), [{"margin": 1.0}, {"mode": "certified"}]),
])
def test_methods_search_like_the_cpu(rt, small_blocks, method, build, settings):
    index = wolindex.build(DATA.W, DATA.b, method=method, train=DATA.H_train, labels=DATA.y_train,
                           verbose=False, **build)
    gpu = to_device(index, runtime=rt)
    for setting in settings:
        cpu_s, cpu_l = index.search(DATA.H_test, 5, **setting)
        gpu_s, gpu_l, n_scored = gpu.search(DATA.H_test, 5, return_n_scored=True, **setting)
        np.testing.assert_array_equal(gpu_l, cpu_l)
        np.testing.assert_allclose(gpu_s, cpu_s, rtol=1e-5, atol=1e-5)
        assert n_scored.shape == (len(DATA.H_test),) and np.all(n_scored > 0)


def test_gpu_index_refuses_what_it_cannot_do(rt):
    index = wolindex.build(DATA.W, DATA.b, verbose=False)
    with pytest.raises(ValueError, match="dtype"):
        to_device(index, dtype="int8", runtime=rt)
    with pytest.raises(ValueError, match="k: the GPU engine returns at most 32"):
        to_device(index, runtime=rt).search(DATA.H_test, 33)
    with pytest.raises(ValueError, match="H: expected shape"):
        to_device(index, runtime=rt).search(DATA.H_test[:, :5], 3)
    flat = wolindex.build(DATA.W, DATA.b, method="faiss-flat", verbose=False)
    with pytest.raises(ValueError, match=r"searches on the CPU only; these search on the GPU: "
                                         r"\['adaptive', 'ds', 'exact', 'lss'\]"):
        to_device(flat, runtime=rt)
    with pytest.raises(ValueError, match="device: expected"):
        index.to("gpu")
    with pytest.raises(ValueError, match="device"):
        wolindex.build(DATA.W, DATA.b, device="tpu", verbose=False)
    with pytest.raises(ValueError, match="float16's range"):
        rows_to_storage(np.full((2, 2), 1e6, np.float32), "float16")


def test_gpu_search_is_the_method_class_s(rt, monkeypatch):
    """The GPU engine finds a method's search through the method class (its search_with), not a table of
    its own: a registered method without one is CPU-only, and with one it searches on the GPU."""
    from wolindex.methods import METHODS
    from wolindex.methods.lss import LSS

    class CpuOnly(LSS):
        name = "lss-cpu-only"
        search_with = None

    class Again(LSS):
        name = "lss-again"

    monkeypatch.setitem(METHODS, CpuOnly.name, CpuOnly)
    monkeypatch.setitem(METHODS, Again.name, Again)
    build = dict(train=DATA.H_train, labels=DATA.y_train, n_buckets=16, n_tables=1, rounds=0, verbose=False)
    with pytest.raises(ValueError, match="'lss-cpu-only' searches on the CPU only"):
        to_device(wolindex.build(DATA.W, DATA.b, method=CpuOnly.name, **build), runtime=rt)
    index = wolindex.build(DATA.W, DATA.b, method=Again.name, **build)
    np.testing.assert_array_equal(to_device(index, runtime=rt).search(DATA.H_test, 5, n_probe=2)[1],
                                  index.search(DATA.H_test, 5, n_probe=2)[1])


def test_adaptive_searches_in_steps_on_the_gpu(rt, small_blocks, monkeypatch):
    """The GPU search goes through the batch in the CPU search's steps (SEARCH_BLOCK queries), so its routing
    state is bounded for any N; the results equal one pass and the CPU's."""
    from wolindex.methods import adaptive

    index = wolindex.build(DATA.W, DATA.b, method="adaptive", train=DATA.H_train, labels=DATA.y_train,
                           cutoffs=[200, 700], verbose=False)
    gpu = to_device(index, runtime=rt)
    whole = gpu.search(DATA.H_test, 5, return_n_scored=True)
    steps = []
    step_search = adaptive.AdaptiveSoftmax._search_step

    def counted(self, ops, H, k, params):
        steps.append(H.shape[0])
        return step_search(self, ops, H, k, params)

    monkeypatch.setattr(adaptive, "SEARCH_BLOCK", 4)
    monkeypatch.setattr(adaptive.AdaptiveSoftmax, "_search_step", counted)
    stepped = gpu.search(DATA.H_test, 5, return_n_scored=True)
    assert steps == [4, 2]
    assert all(np.array_equal(a, b) for a, b in zip(whole, stepped))
    np.testing.assert_array_equal(stepped[1], index.search(DATA.H_test, 5)[1])


def test_ds_adapted_scoring_stays_on_the_cpu(rt):
    index = wolindex.build(DATA.W, DATA.b, method="ds", train=DATA.H_train, labels=DATA.y_train, n_experts=4,
                           start_experts=2, epochs_per_stage=0.1, final_epochs=0.1, keep_adapted=True, verbose=False)
    with pytest.raises(ValueError, match="rows: the GPU engine scores candidates with the layer's rows"):
        to_device(index, runtime=rt).search(DATA.H_test, 5, rows="adapted")


def test_gpu_benchmark_runs_end_to_end(tmp_path):
    """benchmarks/gpu.py on the emulator: a tiny bundle (as gpu_bundle.py writes it) and a tiny synthetic
    layer, both dtypes, one batch size; the result file has every row timed and exact agreeing with itself."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu as gpu_benchmark
    import gpu_bundle

    ds = synthetic(n_classes=700, dim=16, n_train=2000, n_test=8, seed=1)
    layer = wolindex.OutputLayer.from_arrays(ds.W, ds.b, ds.class_counts)
    lss = wolindex.build(layer, method="lss", train=ds.H_train, labels=ds.y_train, n_buckets=16, n_tables=1,
                         rounds=1, verbose=False)
    gpu_bundle.write_bundle(tmp_path / "bundle", ds.W, ds.b, ds.class_counts, {"lss": (lss, [{"n_probe": 2}])},
                            ds.H_test, ds.y_test, wolindex.build(layer, verbose=False).search(ds.H_test, 10)[1])
    path = gpu_benchmark.main(["--emulate", "--bundle", str(tmp_path / "bundle"), "--synthetic", "600", "16",
                               "--synthetic-train", "1500", "--queries", "8", "--batches", "4",
                               "--calls", "0.01", "--warmup", "0", "--synthetic-methods", "adaptive",
                               "--out", str(tmp_path)])
    rows = json.loads(path.read_text())["rows"]
    assert {(r["layer"], r["dtype"]) for r in rows} == {(layer, dtype) for layer in ("debian-lm-100k",
                                                                                     "synthetic-600x16")
                                                        for dtype in ("float32", "bfloat16")}
    for r in rows:
        assert r["ms_b4"] > 0 and 0 <= r["P@1"] <= 1
        if r["label"] == "exact" and r["dtype"] == "float32":
            assert r["P@1"] == 1.0 and r["speedup_b4"] == 1.0


def test_device_names():
    from wolindex.gpu import device_id

    assert (device_id("cuda"), device_id("cuda:0"), device_id("cuda:3")) == (0, 0, 3)
    for bad in ("gpu", "cuda:x", "cuda:-1", "cpu:0"):
        with pytest.raises(ValueError, match="device"):
            device_id(bad)


@pytest.mark.parametrize("dtype, value", [("float16", 70000.0), ("bfloat16", 3.4e38)])
def test_rows_beyond_the_storage_range_are_refused(dtype, value):
    """A finite float32 row value that rounds to infinity in the storage dtype is an error, never an inf."""
    W = np.ones((4, 3), np.float32)
    W[2, 1] = -value
    with pytest.raises(ValueError, match="dtype: W has values"):
        rows_to_storage(W, dtype)
    assert rows_to_storage(np.float32([[3.38e38, -1.0]]), "bfloat16").dtype == np.uint16
