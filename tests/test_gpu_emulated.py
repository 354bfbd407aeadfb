"""The GPU engine's kernels and host code, run on the CPU: kernels.cu compiled by g++ against the emulator
in tests/cuda_emulator, NumPy standing in for CuPy. Checks selection, exact search (one and several class
blocks), the fused and tile candidate paths and each method's GPU search against the CPU engine; on a
machine with a GPU, tests/gpu runs the same code through CuPy."""
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

import cuda_emulator
import wolindex
from conftest import assert_topk_matches, random_layer, random_queries
from test_candidates import candidate_mask, random_buckets
from wolindex.data import synthetic
from wolindex.engine import PackedRows
from wolindex.gpu import engine, kernels, to_device
from wolindex.gpu.runtime import rows_to_storage, storage_to_float32

pytestmark = pytest.mark.skipif(cuda_emulator.compiler() is None, reason="needs g++ to build the CUDA emulator")


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
    """The real CUDA compiler (CuPy's, through NVRTC; no GPU needed) accepts kernels.cu for Hopper and
    exports every kernel the engine launches."""
    status, log, ptx = cuda_emulator.nvrtc_compile(cuda_emulator.nvrtc_library(), kernels.SOURCE.read_bytes(),
                                                   [b"--std=c++17", b"--gpu-architecture=compute_90"])
    assert status == 0 and "warning" not in log, log
    assert sorted(re.findall(r"\.entry (\w+)", ptx)) == sorted(kernels.KERNELS)


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
    Hs = storage_to_float32(np, rows_to_storage(H, dtype), dtype)     # the GEMM rounds queries too
    scores, labels = engine.exact_topk(rt, Ws, b, H, 10, dtype)
    logits = Hs.astype(np.float64) @ storage_to_float32(np, Ws, dtype).T.astype(np.float64) + b
    assert_topk_matches(scores, labels, logits, 10)


@pytest.mark.parametrize("path", ["fused", "grouped"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
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
    W_read = storage_to_float32(np, rows_to_storage(W, dtype), dtype)
    logits = H.astype(np.float64) @ W_read.T.astype(np.float64) + b
    assert_topk_matches(scores, labels, logits, 6, cand_mask=candidate_mask(buckets, probes, 400))
    sizes = buckets.sizes()
    np.testing.assert_array_equal(n_scored, np.where(probes >= 0, sizes[np.maximum(probes, 0)], 0).sum(axis=1))


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
    with pytest.raises(ValueError, match="searches on the CPU only"):
        to_device(flat, runtime=rt)
    with pytest.raises(ValueError, match="device: expected"):
        index.to("gpu")
    with pytest.raises(ValueError, match="backend"):
        wolindex.build(DATA.W, DATA.b, backend="tpu", verbose=False)
    with pytest.raises(ValueError, match="float16's range"):
        rows_to_storage(np.full((2, 2), 1e6, np.float32), "float16")


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
