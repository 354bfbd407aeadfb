"""Sparse-target training (Vincent et al. 2015): the factored O(d^2) layer against the naive O(D d) one."""
import numpy as np
import pytest

import wolindex
from wolindex.training import FactoredLayer, NaiveLayer, sparse_targets

D, DIM = 400, 12

# Ceilings (<=) on float32 rounding and floors (>=) on learning, each with what was observed (deterministic:
# seeded data, one machine's BLAS), set within 1.5x of the observation: a ceiling at most 1.5x the observed
# value, a floor at least 1/1.5 of an observed gain.
FLOORS = {
    "float32_loss_rel_squared": (3.7e-6, "observed 2.50e-6, problem seed 0"),
    "float32_loss_rel_spherical": (1.1e-5, "observed 7.54e-6, problem seed 0"),
    "float32_grad_rel_squared": (2e-5, "observed 1.34e-5, problem seed 0"),
    "float32_grad_rel_spherical": (1e-4, "observed 8.96e-5, problem seed 0"),
    "float32_weights_rel_squared": (7e-6, "observed 4.64e-6, problem seed 0"),
    "float32_weights_rel_spherical": (2.3e-5, "observed 1.55e-5, problem seed 0"),
    "train_top1": (0.14, "observed 0.159 after 2 epochs (chance 0.0025), problem seed 1"),
    "train_loss_ratio": (0.85, "observed epoch 2 / epoch 1 mean loss 3.828 / 4.769 = 0.803, problem seed 1"),
}


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
        np.testing.assert_allclose(lf, ln, rtol=FLOORS[f"float32_loss_rel_{loss}"][0], atol=1e-6)
        assert np.linalg.norm(gf - gn) <= FLOORS[f"float32_grad_rel_{loss}"][0] * np.linalg.norm(gn)
    for a, b in zip(fact.weights(), naive.weights()):
        assert np.abs(a - b).max() <= FLOORS[f"float32_weights_rel_{loss}"][0] * np.abs(b).max()


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
    assert hist[1]["mean_loss"] <= FLOORS["train_loss_ratio"][0] * hist[0]["mean_loss"], hist
    out = runs["factored"]
    top1 = np.argmax((H @ out.W.T + out.b) ** 2, axis=1)
    assert (top1 == labels).mean() >= FLOORS["train_top1"][0], (top1 == labels).mean()


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


def reference_loss(Wb, H, targets, weights, loss, eps):
    """Summed loss of a batch, from scratch in float64: o = W h + b (Wb = [W, b]); targets (B, K) class ids
    with weights (B, K), repeats allowed, -1 for none. squared: |o - y|^2 with y the summed weights per class;
    spherical: -sum_k w_k log p_{t_k}, p_c = (o_c^2 + eps) / sum_j (o_j^2 + eps)."""
    o = H @ Wb[:, :-1].T + Wb[:, -1]
    total = 0.0
    for i in range(H.shape[0]):
        valid = targets[i] >= 0
        if loss == "squared":
            y = np.zeros(Wb.shape[0])
            np.add.at(y, targets[i][valid], weights[i][valid])
            total += np.sum((o[i] - y) ** 2)
        else:
            p = (o[i] ** 2 + eps) / np.sum(o[i] ** 2 + eps)
            total -= np.sum(weights[i][valid] * np.log(p[targets[i][valid]]))
    return total


def central_difference(f, x, step=1e-6):
    """df/dx of a scalar function of the array x, by central differences (error O(step^2))."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + step
        up = f()
        x[i] = saved - step
        down = f()
        x[i] = saved
        grad[i] = (up - down) / (2 * step)
    return grad


@pytest.mark.parametrize("algorithm", ["factored", "naive"])
@pytest.mark.parametrize("loss", ["squared", "spherical"])
@pytest.mark.parametrize("batch", [1, 3])
def test_gradients_match_finite_differences(algorithm, loss, batch):
    """Both layers' hand-derived gradients against central differences of the loss, on a tiny float64
    problem (D = 7, d = 3, repeated and padded targets with weights), after three steps (so the factored
    layer's U is no longer the identity): the returned loss is the loss, the returned dL/dh is its gradient,
    and one SGD step moves [W, b] by exactly -lr * dL/d[W, b] (summed over the batch, at the weights before
    the step)."""
    rng = np.random.default_rng(11)
    n_classes, dim, eps, lr = 7, 3, 1e-2, 0.05
    W, b = rng.standard_normal((n_classes, dim)), 0.3 * rng.standard_normal(n_classes)
    layer = (FactoredLayer(W, b, loss, eps, np.float64, check_every=10**6) if algorithm == "factored"
             else NaiveLayer(W, b, loss, eps, np.float64))
    for _ in range(4):
        H = rng.standard_normal((batch, dim))
        targets = rng.integers(-1, n_classes, (batch, 3))
        targets[:, 2] = targets[:, 0]                              # a repeated target (or padding) per row
        weights = rng.uniform(0.5, 2.0, (batch, 3))
        ids, y = sparse_targets(targets, weights, batch, n_classes)
        Wb = np.c_[layer.weights()[0], layer.weights()[1]]
        value, grad_h = layer.step(H, ids, y, lr)
    if algorithm == "factored":
        assert not np.allclose(layer.U, np.eye(dim + 1))           # the factored form is in use
    # the last step: value and grad_h at Wb (the weights before it), then its update
    per_example = [reference_loss(Wb, H[i:i + 1], targets[i:i + 1], weights[i:i + 1], loss, eps) for i in range(batch)]
    np.testing.assert_allclose(value, per_example, rtol=1e-10, atol=1e-12)
    fd_h = central_difference(lambda: reference_loss(Wb, H, targets, weights, loss, eps), H)
    np.testing.assert_allclose(grad_h, fd_h, rtol=1e-6, atol=1e-7)
    fd_w = central_difference(lambda: reference_loss(Wb, H, targets, weights, loss, eps), Wb)
    moved = np.c_[layer.weights()[0], layer.weights()[1]] - Wb
    np.testing.assert_allclose(moved, -lr * fd_w, rtol=1e-6, atol=1e-8)
    assert np.abs(fd_w).max() > 0.1                              # a real gradient, not a vanishing one
