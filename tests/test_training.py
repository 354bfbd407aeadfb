"""Sparse-target training (Vincent et al. 2015): the factored O(d^2) layer against the naive O(D d) one."""
import numpy as np
import pytest

import wolindex
from wolindex.training import FactoredLayer, NaiveLayer, sparse_targets

D, DIM = 400, 12


def problem(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return (0.3 * rng.standard_normal((D, DIM))).astype(dtype), (0.1 * rng.standard_normal(D)).astype(dtype), rng


def run_both(loss, batch, n_steps, width, dtype, **factored_options):
    """The same SGD steps through both layers; returns per-step losses and gradients and final weights."""
    W, b, rng = problem(dtype=dtype)
    fact = FactoredLayer(W, b, loss, 1e-2, dtype, **factored_options)
    naive = NaiveLayer(W, b, loss, 1e-2, dtype)
    out = {"fact": [], "naive": []}
    for _ in range(n_steps):
        H = (0.7 * rng.standard_normal((batch, DIM))).astype(dtype)
        targets = rng.integers(-1, D, (batch, width))
        if width > 1:
            targets[:, -1] = targets[:, 0]                     # a repeated target in every row
        ids, y = sparse_targets(targets, None, batch, D)
        out["fact"].append(fact.step(H, ids, y, 0.02))
        out["naive"].append(naive.step(H, ids, y, 0.02))
    return out, fact, naive


@pytest.mark.parametrize("loss", ["squared", "spherical"])
@pytest.mark.parametrize("batch, width", [(1, 1), (1, 3), (6, 1), (6, 4)])
def test_factored_equals_naive_float64(loss, batch, width):
    out, fact, naive = run_both(loss, batch, 150, width, np.float64, check_every=10, refactor_cond=50.0)
    for (lf, gf), (ln, gn) in zip(out["fact"], out["naive"]):
        np.testing.assert_allclose(lf, ln, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(gf, gn, rtol=1e-9, atol=1e-9)
    for a, b in zip(fact.weights(), naive.weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)
    W, b = naive.weights()
    H = np.random.default_rng(9).standard_normal((5, DIM))
    np.testing.assert_allclose(fact.sq_norms(H), ((H @ W.T + b) ** 2).sum(axis=1), rtol=1e-9)


def test_refactorisation_happens_and_keeps_the_layer():
    out, fact, naive = run_both("squared", 4, 200, 2, np.float64, check_every=5, refactor_cond=2.0)
    assert fact.refactors > 0
    for a, b in zip(fact.weights(), naive.weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("loss", ["squared", "spherical"])
def test_factored_equals_naive_float32(loss):
    """float32: errors grow with cond(U), so U is folded back often here (this problem's steps are large)."""
    out, fact, naive = run_both(loss, 3, 300, 2, np.float32, refactor_cond=100.0, check_every=10)
    for (lf, gf), (ln, gn) in zip(out["fact"], out["naive"]):
        np.testing.assert_allclose(lf, ln, rtol=1e-4, atol=1e-5)
        assert np.linalg.norm(gf - gn) <= 1e-4 * np.linalg.norm(gn)             # observed up to 1.3e-5
    for a, b in zip(fact.weights(), naive.weights()):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()                   # observed up to 5e-6


def test_sparse_targets_merge_repeats_and_padding():
    ids, y = sparse_targets(np.array([[3, -1, 3, 1], [2, 2, 2, 2], [-1, -1, 0, -1]]),
                            np.array([[1.0, 5.0, 2.0, 0.5]] * 3), 3, 5)
    assert ids.tolist() == [[1, 3], [2, 0], [0, 0]]
    assert y.tolist() == [[0.5, 3.0], [8.5, 0.0], [2.0, 0.0]]


def test_train_api_factored_equals_naive_and_learns():
    W, b, rng = problem(1)
    centres = rng.standard_normal((D, DIM))
    labels = rng.integers(0, D, 3000)
    H = centres[labels] + 0.1 * rng.standard_normal((3000, DIM))
    runs = {alg: wolindex.train(W, b, H, labels, loss="spherical", lr=0.05, epochs=2, batch_size=8, algorithm=alg,
                                verbose=False) for alg in ("factored", "naive")}
    np.testing.assert_allclose(runs["factored"].W, runs["naive"].W, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(runs["factored"].b, runs["naive"].b, rtol=1e-4, atol=1e-5)
    hist = runs["factored"].history
    assert hist[1]["mean_loss"] < hist[0]["mean_loss"]
    out = runs["factored"]
    top1 = np.argmax((H @ out.W.T + out.b) ** 2, axis=1)
    assert (top1 == labels).mean() > 0.08                 # chance 0.0025; observed 0.16 after 2 epochs


@pytest.mark.parametrize("kwargs, match", [
    ({"loss": "hinge"}, "loss"), ({"algorithm": "fast"}, "algorithm"), ({"lr": 0}, "lr"),
    ({"epsilon": -1.0}, "epsilon"), ({"dtype": "float16"}, "dtype"), ({"batch_size": 0}, "batch_size"),
    ({"lr": np.inf}, "lr"), ({"lr": np.nan}, "lr"), ({"epsilon": np.inf}, "epsilon"),
    ({"refactor_cond": np.inf}, "refactor_cond"), ({"refactor_cond": 0.0}, "refactor_cond"),
    ({"epochs": 1.0}, "epochs"), ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"),
    ({"check_every": np.bool_(True)}, "check_every"),
    ({"dtype": ["float32"]}, "dtype")])
def test_bad_arguments(kwargs, match):
    W, b, _ = problem()
    with pytest.raises((ValueError, TypeError), match=match):
        wolindex.train(W, b, np.zeros((4, DIM)), np.zeros(4, np.int64), verbose=False, **kwargs)


def test_numpy_scalar_settings_are_taken():
    W, b, rng = problem()
    H, labels = rng.standard_normal((64, DIM)), rng.integers(0, D, 64)
    plain = wolindex.train(W, b, H, labels, lr=0.05, epochs=2, batch_size=8, verbose=False)
    scalars = wolindex.train(W, b, H, labels, lr=np.float32(0.05), epochs=np.int64(2), batch_size=np.int32(8),
                             epsilon=np.float64(1e-3), check_every=np.int64(100), seed=np.int64(0), verbose=False)
    np.testing.assert_allclose(scalars.W, plain.W, rtol=1e-6, atol=1e-7)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_divergence_is_an_error():
    W, b, rng = problem()
    with pytest.raises(ValueError, match="^lr: training diverged"):
        wolindex.train(W, b, 10 * rng.standard_normal((64, DIM)), rng.integers(0, D, 64), loss="squared", lr=1e30,
                       batch_size=8, algorithm="naive", verbose=False)


def test_bad_targets():
    W, b, _ = problem()
    with pytest.raises(ValueError, match="targets"):
        wolindex.train(W, b, np.zeros((4, DIM)), np.array([0, 1, 2, D]), verbose=False)
    with pytest.raises(ValueError, match="targets"):
        wolindex.train(W, b, np.zeros((4, DIM)), np.zeros(5, np.int64), verbose=False)
    with pytest.raises(TypeError, match="targets"):
        wolindex.train(W, b, np.zeros((4, DIM)), np.zeros(4), verbose=False)
    with pytest.raises(ValueError, match="values"):
        wolindex.train(W, b, np.zeros((4, DIM)), np.zeros((4, 2), np.int64), values=np.ones((4, 3)), verbose=False)
