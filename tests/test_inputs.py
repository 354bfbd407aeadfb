"""Input from any framework, and clear errors for bad input."""
import numpy as np
import pytest

import wolindex
from wolindex.arrays import as_float32, to_numpy
from helpers import random_layer, random_queries

W, b = random_layer(300, 16)
H = random_queries(5, 16)


@pytest.fixture(scope="module")
def index():
    return wolindex.build(W, b)


@pytest.fixture(scope="module")
def expected(index):
    return index.search(H, 7)


class OnlyArray:
    """A foreign array type exposing only __array__."""

    def __init__(self, a):
        self.a = a

    def __array__(self, dtype=None, copy=None):
        return self.a


class OnlyDlpack:
    """A foreign array type exposing only the DLPack protocol."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


@pytest.mark.parametrize("wrap", [OnlyArray, OnlyDlpack, lambda a: a.tolist(), lambda a: a.astype(np.float64),
                                  lambda a: np.asfortranarray(a), lambda a: np.repeat(a, 2, axis=0)[::2]])
def test_array_protocols(index, expected, wrap):
    scores, labels = index.search(wrap(H), 7)
    np.testing.assert_array_equal(labels, expected[1])


def test_float16_is_exact_in_float32():
    H16 = H.astype(np.float16)
    a = as_float32(H16, "H", 2)
    assert a.dtype == np.float32 and np.array_equal(a, H16.astype(np.float32))


def test_bfloat16_numpy_dtype():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    Hb = H.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(as_float32(Hb, "H", 2), Hb.astype(np.float32))


def test_torch_tensors(index, expected):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(H.copy()).requires_grad_(True)
    np.testing.assert_array_equal(index.search(t, 7)[1], expected[1])
    tb = torch.from_numpy(H.copy()).to(torch.bfloat16)
    np.testing.assert_array_equal(as_float32(tb, "H", 2), tb.float().numpy())
    th = torch.from_numpy(H.copy()).half()
    np.testing.assert_array_equal(as_float32(th, "H", 2), th.float().numpy())
    built = wolindex.build(torch.from_numpy(W), torch.from_numpy(b))
    np.testing.assert_array_equal(built.search(H, 7)[1], expected[1])


def test_jax_arrays(index, expected):
    jnp = pytest.importorskip("jax.numpy")
    np.testing.assert_array_equal(index.search(jnp.asarray(H), 7)[1], expected[1])
    hb = jnp.asarray(H).astype(jnp.bfloat16)
    np.testing.assert_array_equal(as_float32(hb, "H", 2), np.asarray(hb.astype(jnp.float32)))


def test_cuda_arrays_need_cupy_or_torch():
    class FakeCuda:
        __cuda_array_interface__ = {"shape": (1, 16), "typestr": "<f4", "data": (0, False), "version": 3}

    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(TypeError, match="H: a GPU array"):
            to_numpy(FakeCuda(), "H")


@pytest.mark.parametrize("bad,error,pattern", [
    (H[:, :15], ValueError, r"H: expected shape \(N, 16\)"),
    (H[0], ValueError, r"H: expected a 2-D array.*h\[None, :\]"),
    (H[None], ValueError, "H: expected a 2-D array"),
    (H[:0], ValueError, "H: is empty"),
    (H.astype(np.int32), TypeError, "H: expected a floating dtype"),
    (H.astype(np.complex64), TypeError, "H: expected a floating dtype"),
    (np.where(np.eye(5, 16, dtype=bool), np.nan, H), ValueError, "H: contains 5 NaN or Inf"),
    (np.full((1, 16), np.inf), ValueError, "H: contains 16 NaN or Inf"),
    (np.full((1, 16), 1e300), ValueError, "NaN or Inf value.*after conversion to float32"),
    ("not an array", TypeError, "H: expected an array"),
])
def test_bad_queries(index, bad, error, pattern):
    with pytest.raises(error, match=pattern):
        index.search(bad, 3)


@pytest.mark.parametrize("k,error,pattern", [
    (0, ValueError, "k: expected 1 <= k <= 300"), (301, ValueError, "k: expected 1 <= k <= 300"),
    (-1, ValueError, "k:"), (2.0, TypeError, "k: expected an int"), (True, TypeError, "k: expected an int"),
])
def test_bad_k(index, k, error, pattern):
    with pytest.raises(error, match=pattern):
        index.search(H, k)


def test_k_equal_to_d_and_numpy_int(index):
    scores, labels = index.search(H, np.int64(300))
    assert sorted(labels[0].tolist()) == list(range(300))


@pytest.mark.parametrize("args,error,pattern", [
    ((W, b[:-1]), ValueError, r"b: expected shape \(300,\)"),
    ((W, b[:, None]), ValueError, "b: expected a 1-D array"),
    ((W[0], b), ValueError, "W: expected a 2-D array"),
    ((W[:0], b[:0]), ValueError, "W: expected a non-empty"),
    ((np.where(np.eye(300, 16, dtype=bool), np.inf, W), b), ValueError, "W: contains"),
    ((W, np.where(np.arange(300) == 3, np.nan, b)), ValueError, "b: contains 1 NaN"),
    ((W.astype(np.int64), b), TypeError, "W: expected a floating dtype"),
])
def test_bad_layer(args, error, pattern):
    with pytest.raises(error, match=pattern):
        wolindex.build(*args)


def test_bad_build_arguments():
    with pytest.raises(ValueError, match="method: expected one of"):
        wolindex.build(W, b, method="nope")
    with pytest.raises(TypeError, match="unknown setting"):
        wolindex.build(W, b, n_experts=4)
    with pytest.raises(ValueError, match="class_counts: expected shape"):
        wolindex.build(W, b, class_counts=np.ones(3, int))
    with pytest.raises(ValueError, match="class_counts: counts must be >= 0"):
        wolindex.build(W, b, class_counts=-np.ones(300, int))
    with pytest.raises(ValueError, match="labels: given without train"):
        wolindex.build(W, b, labels=np.zeros(3, int))
    with pytest.raises(ValueError, match=r"labels: class ids must lie in \[0, 300\)"):
        wolindex.build(W, b, train=H, labels=np.array([0, 1, 2, 3, 300]))
    with pytest.raises(ValueError, match=r"labels: expected shape \(5,\)"):
        wolindex.build(W, b, train=H, labels=np.zeros(4, int))
    with pytest.raises(TypeError, match="labels: expected an integer dtype"):
        wolindex.build(W, b, train=H, labels=np.zeros(5))
    with pytest.raises(ValueError, match="train: expected shape"):
        wolindex.build(W, b, train=H[:, :3])


def test_bad_search_settings(index):
    with pytest.raises(TypeError, match="unknown setting"):
        index.search(H, 3, n_probe=2)
    with pytest.raises(ValueError, match="engine: expected one of"):
        index.search(H, 3, engine="cuda")


def test_integers_past_int64():
    """uint64 values past int64 are refused, never wrapped to negative numbers."""
    counts = np.ones(300, np.uint64)
    counts[7] = 2 ** 63 + 5
    with pytest.raises(ValueError, match="class_counts: counts must fit in int64, got 9223372036854775813"):
        wolindex.OutputLayer.from_arrays(W, b, counts)
    with pytest.raises(ValueError, match="class_counts: counts must fit in int64"):
        wolindex.build(W, b, class_counts=counts)
    counts[7] = 2 ** 63 - 1
    assert wolindex.OutputLayer.from_arrays(W, b, counts).class_counts[7] == 2 ** 63 - 1
    labels = np.array([0, 1, 2, 3, 2 ** 63 + 5], np.uint64)
    with pytest.raises(ValueError, match=r"labels: .* got range \[0, 9223372036854775813\]"):
        wolindex.build(W, b, train=H, labels=labels)
    labels[4] = 299
    wolindex.build(W, b, train=H, labels=labels)


def test_torch_bfloat16_is_exact():
    torch = pytest.importorskip("torch")
    values = torch.tensor([0.0, -0.0, 1e-40, -3.5, 3e38, float("inf"), float("nan")]).to(torch.bfloat16)
    got = to_numpy(values, "H")
    assert got.dtype.name == "bfloat16"
    np.testing.assert_array_equal(got.astype(np.float32).view(np.uint32), values.float().numpy().view(np.uint32))
