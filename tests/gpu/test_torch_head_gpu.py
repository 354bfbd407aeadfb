"""IndexedHead on CUDA tensors through the GPU engine (skipped without an NVIDIA GPU, CuPy and CUDA torch): the
same classes as on the CPU, results on the input's device, dense logits, inference_mode, a GpuIndex given
directly, and k above the GPU engine's limit named."""
import numpy as np
import pytest

import wolindex
from helpers import random_layer, random_queries

torch = pytest.importorskip("torch")
cupy = pytest.importorskip("cupy")
try:
    HAS_GPU = cupy.cuda.runtime.getDeviceCount() > 0 and torch.cuda.is_available()
except cupy.cuda.runtime.CUDARuntimeError:
    HAS_GPU = False
pytestmark = pytest.mark.skipif(not HAS_GPU, reason="needs an NVIDIA GPU with CuPy and CUDA torch")

from wolindex.torch import IndexedHead  # noqa: E402

D, d = 5000, 64
W, b = random_layer(D, d, seed=21)


@pytest.fixture(scope="module")
def exact():
    return wolindex.build(W, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_tensors_give_the_cpu_classes_on_their_device(exact, dtype):
    hidden = torch.from_numpy(random_queries(24, d, seed=22)).reshape(2, 12, d).to(dtype)
    want_values, want_ids = IndexedHead(exact, k=8)(hidden)
    with torch.inference_mode():
        values, ids = IndexedHead(exact, k=8)(hidden.cuda())
    assert values.device.type == "cuda" and ids.device.type == "cuda" and ids.shape == (2, 12, 8)
    agree = (ids.cpu() == want_ids).float().mean().item()
    assert agree >= 0.999
    torch.testing.assert_close(values.cpu(), want_values, rtol=1e-4, atol=1e-3)


def test_dense_on_cuda_and_a_gpu_index_given_directly(exact):
    hidden = torch.from_numpy(random_queries(6, d, seed=23)).cuda()
    head = IndexedHead(exact.to("cuda"), k=5, dense=True)
    dense = head(hidden)
    values, ids = IndexedHead(exact, k=5)(hidden)
    assert dense.device.type == "cuda" and dense.shape == (6, D)
    assert torch.equal(torch.isfinite(dense).sum(1).cpu(), torch.full((6,), 5))
    assert torch.equal(dense.gather(1, ids), values)
    cpu_values, cpu_ids = head(hidden.cpu()).topk(5)                # CPU tensors: the GpuIndex's host index
    assert torch.equal(cpu_ids, ids.cpu())


def test_k_above_the_gpu_limit_is_named(exact):
    with pytest.raises(ValueError, match="k"):
        IndexedHead(exact, k=33)(torch.zeros(1, d, device="cuda"))
    assert np.isfinite(IndexedHead(exact, k=33)(torch.zeros(1, d))[0].numpy()).all()
