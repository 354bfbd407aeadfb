"""The GPU engine on a real GPU through CuPy (skipped without one): GEMMs, exact search in every dtype
(also over several class and query blocks), fused and tile candidate paths and each method's search
against the CPU, DLPack inputs from torch and CuPy with results left on the device."""
import numpy as np
import pytest

import wolindex
from helpers import assert_topk_matches, random_layer, random_queries
from wolindex.contrib.datasets import synthetic
from wolindex.gpu import engine
from wolindex.gpu.runtime import queries_to_storage
from wolindex.rows import rows_to_storage, storage_to_float32

cupy = pytest.importorskip("cupy")
try:
    HAS_GPU = cupy.cuda.runtime.getDeviceCount() > 0
except cupy.cuda.runtime.CUDARuntimeError:
    HAS_GPU = False
pytestmark = pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU")

DTYPES = ["float32", "float16", "bfloat16"]


@pytest.fixture(scope="module")
def rt():
    from wolindex.gpu.runtime import CupyRuntime

    return CupyRuntime(0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_matches_cupy_matmul(rt, dtype):
    A, B = random_queries(37, 96, seed=1), random_queries(250, 96, seed=2)
    As, Bs = cupy.asarray(rows_to_storage(A, dtype)), cupy.asarray(rows_to_storage(B, dtype))
    out = cupy.empty((37, 250), cupy.float32)
    rt.gemm_nt(As, Bs, out, dtype)
    ref = storage_to_float32(cupy, As, dtype) @ storage_to_float32(cupy, Bs, dtype).T
    cupy.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_queries,budget", [(64, None), (5000, 1 << 22)])
def test_exact_matches_float64(rt, monkeypatch, dtype, n_queries, budget):
    if budget:
        monkeypatch.setattr(engine, "SCORE_BUDGET", budget)
    W, b = random_layer(20000, 128, seed=3)
    H = random_queries(n_queries, 128, seed=4)
    Ws = rows_to_storage(W, dtype)
    scores, labels = engine.exact_topk(rt, cupy.asarray(Ws), cupy.asarray(b), cupy.asarray(H), 10, dtype)
    Hs = cupy.asnumpy(storage_to_float32(cupy, queries_to_storage(cupy, cupy.asarray(H), dtype), dtype))
    rows = np.random.default_rng(0).choice(n_queries, 64, replace=False)
    logits = Hs[rows].astype(np.float64) @ storage_to_float32(np, Ws, dtype).T.astype(np.float64) + b
    assert_topk_matches(cupy.asnumpy(scores)[rows], cupy.asnumpy(labels)[rows], logits, 10, rtol=1e-4, atol=1e-3)


DATA = synthetic(n_classes=20000, dim=64, n_train=10000, n_test=2048, seed=5)
BUILDS = {"lss": dict(n_buckets=256), "adaptive": {},
          "ds": dict(n_experts=16, start_experts=4, epochs_per_stage=0.25, final_epochs=0.25)}
SETTINGS = {"exact": [{}], "lss": [{"n_probe": 4}], "adaptive": [{"margin": 3.0}, {"mode": "certified"}],
            "ds": [{"n_probe": 2}]}


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def built(request):
    name = request.param
    return wolindex.build(DATA.W, DATA.b, method=name, train=DATA.H_train, labels=DATA.y_train, verbose=False,
                          **BUILDS.get(name, {}))


@pytest.mark.parametrize("batch", [1, 64, 2048])
@pytest.mark.parametrize("path", ["fused", "grouped"])
def test_methods_agree_with_the_cpu(built, batch, path):
    """float32 rows: the same classes as the CPU search (probes from gates and hashes evaluated on the GPU
    can differ in the last ulp, so agreement is 99.9 %, not bit-equality)."""
    gpu = built.to("cuda")
    H = DATA.H_test[:batch]
    for settings in SETTINGS[built.method_name]:
        cpu_s, cpu_l = built.search(H, 10, **settings)
        gpu_s, gpu_l = gpu.search(cupy.asarray(H), 10, path=path, **settings) if built.method_name != "exact" \
            else gpu.search(cupy.asarray(H), 10)
        assert isinstance(gpu_l, cupy.ndarray) and gpu_l.dtype == cupy.int64
        agree = np.mean(cupy.asnumpy(gpu_l) == cpu_l)
        assert agree >= 0.999, (settings, agree)
        np.testing.assert_allclose(cupy.asnumpy(gpu_s)[cpu_l >= 0], cpu_s[cpu_l >= 0], rtol=1e-4, atol=1e-3)


def test_torch_cuda_in_torch_cuda_out_without_copies():
    torch = pytest.importorskip("torch")
    index = wolindex.build(DATA.W, DATA.b, method="lss", train=DATA.H_train, labels=DATA.y_train, n_buckets=256,
                           verbose=False)
    gpu = index.to("cuda", dtype="bfloat16")
    H = torch.as_tensor(DATA.H_test[:32], device="cuda")
    assert cupy.from_dlpack(H).data.ptr == H.data_ptr()      # the view the engine reads: no copy
    scores, labels = gpu.search(H, 5, n_probe=8)
    assert isinstance(labels, torch.Tensor) and labels.device.type == "cuda" and labels.dtype == torch.int64
    ref = gpu.search(DATA.H_test[:32], 5, n_probe=8)[1]
    np.testing.assert_array_equal(labels.cpu().numpy(), cupy.asnumpy(ref))
    bf16 = gpu.search(H.to(torch.bfloat16), 5, n_probe=8)[1]
    assert bf16.shape == (32, 5)


def test_build_on_the_gpu_and_back():
    gpu = wolindex.build(DATA.W, DATA.b, device="cuda", verbose=False)
    assert gpu.to("cpu").method_name == "exact"
    with pytest.raises(ValueError, match="NaN or Inf"):
        gpu.search(cupy.full((2, 64), cupy.nan, cupy.float32), 3)
