"""wolindex.sampling: draws follow the softmax restricted to the candidates (chi-square with a fixed seed, and
the same test rejecting a wrong distribution); temperature, top_k and top_p as Hugging Face's warpers; the
log normaliser (exact pass, the default estimate, the method hook) and search's return_logprobs; errors."""
import subprocess
import sys

import numpy as np
import pytest

import wolindex
from helpers import random_layer, random_queries
from wolindex import sampling
from wolindex.sampling import candidate_probs, exact_log_normaliser, log_normaliser, tail_sample

chi2 = pytest.importorskip("scipy.stats").chi2

D, d = 50, 8
W, b = random_layer(D, d, seed=11)
W *= 0.6
H = random_queries(6, d, seed=12)
ALPHA = 1e-4            # chi-square tests: the fixed-seed draws must not be rejected at this level


@pytest.fixture(scope="module")
def exact():
    return wolindex.build(W, b)


def full_logits(Q):
    return Q.astype(np.float64) @ W.T.astype(np.float64) + b


def log_softmax(x):
    return x - sampling.logsumexp(x)[:, None]


def chi_square_p(counts, probs):
    """p-value of counts (n,) under probs (n,) (cells of zero probability must be empty)."""
    assert counts[probs == 0].sum() == 0
    keep = probs > 0
    expected = counts.sum() * probs[keep]
    return chi2.sf(((counts[keep] - expected) ** 2 / expected).sum(), keep.sum() - 1)


def test_draws_follow_the_restricted_softmax(exact):
    n, k, T = 40_000, 8, 0.7
    h = H[:1]
    ids = wolindex.sample(exact, np.repeat(h, n, axis=0), temperature=T, k=k, generator=0)
    top = np.argsort(-full_logits(h)[0], kind="stable")[:k]
    z = full_logits(h)[0, top] / T
    want = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    assert set(np.unique(ids)) <= set(top.tolist())
    counts = np.array([(ids == c).sum() for c in top])
    assert chi_square_p(counts, want) > ALPHA
    # the floor can fail: the unrestricted softmax or the untempered one are rejected by the same draws
    z_all = full_logits(h)[0] / T
    unrestricted = np.exp(z_all - z_all.max()) / np.exp(z_all - z_all.max()).sum()
    assert chi_square_p(counts, unrestricted[top] / unrestricted[top].sum() * 0.9 + 0.1 / k) < ALPHA
    untempered = np.exp(z * T - (z * T).max())
    assert chi_square_p(counts, untempered / untempered.sum()) < ALPHA


def test_top_k_top_p_and_temperature_semantics(exact):
    h = np.repeat(H[1:2], 3000, axis=0)
    top = np.argsort(-full_logits(H[1:2])[0], kind="stable")
    assert set(np.unique(wolindex.sample(exact, h, top_k=3, generator=1))) == set(top[:3].tolist())
    assert np.all(wolindex.sample(exact, h, top_k=1, generator=2) == top[0])
    assert np.all(wolindex.sample(exact, h, temperature=0, generator=3) == top[0])
    assert np.all(wolindex.sample(exact, h, top_p=1e-6, generator=4) == top[0])
    greedy = wolindex.sample(exact, H, temperature=0)
    np.testing.assert_array_equal(greedy, exact.search(H, 1)[1][:, 0])
    again = wolindex.sample(exact, h, top_p=0.8, generator=np.random.default_rng(5))
    np.testing.assert_array_equal(again, wolindex.sample(exact, h, top_p=0.8, generator=5))


def test_candidate_probs_by_hand():
    logits = np.log([[0.5, 0.3, 0.15, 0.05]])
    np.testing.assert_allclose(candidate_probs(logits), [[0.5, 0.3, 0.15, 0.05]])
    np.testing.assert_allclose(candidate_probs(logits, top_p=0.75), [[0.625, 0.375, 0, 0]])
    np.testing.assert_allclose(candidate_probs(logits, top_p=0.85), [[0.5, 0.3, 0.15, 0]] / np.float64(0.95))
    np.testing.assert_allclose(candidate_probs(logits, top_k=1, top_p=0.1), [[1, 0, 0, 0]])
    np.testing.assert_allclose(candidate_probs(logits, temperature=0), [[1, 0, 0, 0]])
    p2 = np.array([0.5, 0.3, 0.15, 0.05]) ** 2
    np.testing.assert_allclose(candidate_probs(logits, temperature=0.5), [p2 / p2.sum()])
    # top_p measured against a larger normaliser (the candidates hold half the mass): every candidate stays
    np.testing.assert_allclose(candidate_probs(logits, top_p=0.6, log_normaliser=np.log([2.0])),
                               [[0.5, 0.3, 0.15, 0.05]])
    np.testing.assert_allclose(candidate_probs(np.full((1, 3), -np.inf)), [[1, 0, 0]])   # no candidate


def test_candidate_probs_equal_hugging_face_warpers():
    pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)

    logits = np.random.default_rng(13).standard_normal((5, 300)) * 2
    for T, top_k, top_p in [(1.0, None, 0.9), (0.6, 40, 0.8), (1.7, 7, None), (0.9, None, 0.3)]:
        x = torch.from_numpy(logits)
        x = TemperatureLogitsWarper(T)(None, x)
        if top_k:
            x = TopKLogitsWarper(top_k)(None, x)
        if top_p:
            x = TopPLogitsWarper(top_p)(None, x)
        want = torch.softmax(x, dim=-1).numpy()
        order = np.argsort(-logits, axis=1, kind="stable")
        got = candidate_probs(np.take_along_axis(logits, order, axis=1), T, top_k, top_p)
        np.testing.assert_allclose(np.take_along_axis(want, order, axis=1), got, atol=1e-12)


def test_exact_logprobs_equal_the_full_log_softmax(exact):
    scores, labels, logprobs = exact.search(H, 7, return_logprobs="exact")
    want = np.take_along_axis(log_softmax(full_logits(H)), labels, axis=1)
    np.testing.assert_allclose(logprobs, want, atol=1e-5)
    np.testing.assert_allclose(exact_log_normaliser(exact, H), sampling.logsumexp(full_logits(H)), atol=1e-5)
    np.testing.assert_allclose(exact_log_normaliser(exact, H, temperature=0.5),
                               sampling.logsumexp(full_logits(H) / 0.5), atol=1e-5)
    *_, n_scored, lp = exact.search(H, 7, return_n_scored=True, return_logprobs=True)   # D <= TAIL_ROWS: exact
    np.testing.assert_allclose(lp, want, atol=1e-5)


def test_exact_pass_over_several_blocks(monkeypatch):
    Wl, bl = random_layer(5000, 16, seed=14)
    big = wolindex.build(Wl, bl)
    Q = random_queries(300, 16, seed=15)
    monkeypatch.setattr(sampling, "CELLS", 4096)
    monkeypatch.setattr(sampling, "QUERY_BLOCK", 128)
    want = sampling.logsumexp(Q.astype(np.float64) @ Wl.T.astype(np.float64) + bl)
    np.testing.assert_allclose(exact_log_normaliser(big, Q), want, atol=1e-5)


def test_default_estimate_is_unbiased_for_the_tail_and_close():
    """Over many sample seeds the tail estimate's mean is the true tail mass; one sample is within a few
    tenths of a nat on a layer of 5,000 classes, and never below the top-k's log-sum-exp."""
    Wl, bl = random_layer(5000, 16, seed=16)
    Wl *= 0.5
    layer = wolindex.build(Wl, bl).layer
    Q = random_queries(4, 16, seed=17)
    logits = Q.astype(np.float64) @ Wl.T.astype(np.float64) + bl
    top = np.argsort(-logits, axis=1)[:, :10]
    tail_true = np.exp(logits).sum(axis=1) - np.exp(np.take_along_axis(logits, top, axis=1)).sum(axis=1)
    estimates = []
    for seed in range(300):
        t = tail_sample(layer, rows=64, seed=seed)
        z = Q @ t.W.T + t.b + t.log_weight
        z[sampling._members(top, t.ids)] = -np.inf
        estimates.append(np.exp(sampling.logsumexp(z)))
    np.testing.assert_allclose(np.mean(estimates, axis=0), tail_true, rtol=0.05)
    index = wolindex.build(Wl, bl)
    scores, labels, lp = index.search(Q, 10, return_logprobs=True)
    est = scores[:, 0] - lp[:, 0]
    exact_lse = sampling.logsumexp(logits)
    assert np.all(np.abs(est - exact_lse) < 0.3)
    assert np.all(est >= sampling.logsumexp(scores.astype(np.float64)) - 1e-9)


def test_a_method_hook_replaces_the_default(exact, monkeypatch):
    calls = []

    def hook(ops, Q, scores, labels, temperature):
        calls.append((ops.layer is exact.layer, Q.shape, temperature))
        return np.full(Q.shape[0], 100.0)

    monkeypatch.setattr(exact.method, "log_normaliser_with", hook, raising=False)
    scores, labels = exact.search(H, 3)
    np.testing.assert_array_equal(log_normaliser(exact, H, scores, labels, 0.5), np.full(len(H), 100.0))
    assert calls == [(True, H.shape, 0.5)]
    monkeypatch.setattr(exact.method, "log_normaliser_with", lambda *a: np.full(len(H), -100.0))
    np.testing.assert_allclose(log_normaliser(exact, H, scores, labels),       # kept above the top-k's mass
                               sampling.logsumexp(scores.astype(np.float64)))
    monkeypatch.setattr(exact.method, "log_normaliser_with", lambda *a: np.zeros(2))
    with pytest.raises(ValueError, match="log_normaliser_with"):
        log_normaliser(exact, H, scores, labels)


def test_spherical_logprobs_are_the_log_of_the_exact_probabilities():
    sph = wolindex.build(W, b, scoring="spherical", epsilon=1e-3)
    _, labels, probs, logprobs = sph.search(H, 5, return_probs=True, return_logprobs=True)
    np.testing.assert_allclose(logprobs, np.log(probs), atol=1e-6)      # probs: float32 numerators
    o2 = full_logits(H) ** 2 + 1e-3
    np.testing.assert_allclose(sampling.logsumexp(np.log(o2)), exact_log_normaliser(sph, H), rtol=1e-10)
    ids = wolindex.sample(sph, H, top_k=2, generator=0)
    assert all(i in row for i, row in zip(ids, labels[:, :2]))


def test_sample_is_exported_lazily():
    out = subprocess.run([sys.executable, "-c", "import sys, wolindex; print('wolindex.sampling' in sys.modules); "
                          "wolindex.sample; print('wolindex.sampling' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True"]


def test_bad_arguments_name_themselves(exact):
    cases = [(dict(temperature=-1.0), ValueError, "temperature"), (dict(temperature="hot"), TypeError, "temperature"),
             (dict(top_p=0.0), ValueError, "top_p"), (dict(top_p=1.5), ValueError, "top_p"),
             (dict(top_k=0), ValueError, "top_k"), (dict(top_k=5, k=3), ValueError, "top_k"),
             (dict(generator="seed"), TypeError, "generator"), (dict(generator=-1), ValueError, "generator"),
             (dict(k=0), ValueError, "k"), (dict(n_probe=2), TypeError, "n_probe"),
             (dict(top_p=0.9, exact_fallback=1), TypeError, "exact_fallback")]
    for kwargs, error, name in cases:
        with pytest.raises(error, match=name):
            wolindex.sample(exact, H, **kwargs)
    with pytest.raises(ValueError, match="return_logprobs"):
        exact.search(H, 3, return_logprobs="bogus")
    with pytest.raises(ValueError, match="H"):
        wolindex.sample(exact, H[:, :3])
    scores, labels = exact.search(H, 3)
    with pytest.raises(ValueError, match="scores / labels"):
        log_normaliser(exact, H, scores[:2], labels)
    with pytest.raises(ValueError, match="log_normaliser"):
        candidate_probs(scores, top_p=0.5, log_normaliser=np.zeros(2))
    with pytest.raises(ValueError, match="logits"):
        candidate_probs(np.zeros(3))


def exact_top_p(logits, top_p):
    """The exact top-p distribution of each row of full logits (N, D): [(labels, probs)] best first."""
    out = []
    for z in logits:
        order = np.lexsort((np.arange(z.size), -z))
        p = np.exp(z[order] - sampling.logsumexp(z[None])[0])
        keep = np.cumsum(p) - p < top_p
        out.append((order[keep], p[keep] / p[keep].sum()))
    return out


def test_a_nucleus_past_the_candidates_comes_from_every_class():
    """Flat logits: top_p = 0.9 needs more classes than the k = 4 candidates. Those rows are taken from the
    exact logits (labels and probabilities as the full softmax's nucleus), the others from the candidates; a
    permuted (bucket-ordered) index reports classes, not rows. Without the fallback the rows stop at k."""
    Wf, bf = random_layer(300, 8, seed=5)
    Wf *= 0.05
    bf[:3] += 6.0                                        # three confident classes: some rows fit in 4
    Q = random_queries(40, 8, seed=6)
    Q[:10] *= 40.0
    want = exact_top_p(Q.astype(np.float64) @ Wf.T.astype(np.float64) + bf, 0.9)
    for index in (wolindex.build(Wf, bf), wolindex.build(Wf, bf, method="lss", train=random_queries(2000, 8, seed=7),
                                                          n_buckets=8, n_tables=1)):
        dist = sampling.distribution(index, Q, top_p=0.9, k=4, n_probe=8) if index.method_name == "lss" else \
            sampling.distribution(index, Q, top_p=0.9, k=4)
        assert 0 < dist.exact.sum() < len(Q)
        for i, (labels, probs) in enumerate(want):
            got_l, got_p = dist.row(i)
            if dist.exact[i]:
                np.testing.assert_array_equal(got_l, labels)
                np.testing.assert_allclose(got_p, probs, rtol=1e-5)
            else:
                assert labels.size <= 4 and set(got_l.tolist()) == set(labels.tolist())
    cut = sampling.distribution(wolindex.build(Wf, bf), Q, top_p=0.9, k=4, exact_fallback=False)
    assert not cut.exact.any() and np.diff(cut.indptr).max() <= 4


def test_draws_from_an_exact_nucleus_follow_it():
    Wf, bf = random_layer(60, 8, seed=8)
    Wf *= 0.05
    q = np.repeat(random_queries(1, 8, seed=9), 30_000, axis=0)
    labels, probs = exact_top_p(q[:1].astype(np.float64) @ Wf.T.astype(np.float64) + bf, 0.9)[0]
    ids = wolindex.sample(wolindex.build(Wf, bf), q, top_p=0.9, k=2, generator=3)
    assert set(np.unique(ids)) <= set(labels.tolist())
    counts = np.array([(ids == c).sum() for c in labels])
    assert chi_square_p(counts, probs) > ALPHA
    assert chi_square_p(counts, np.full(labels.size, 1 / labels.size) * 0.5 + probs * 0.5) < ALPHA


def test_spherical_nucleus_uses_the_squared_scores():
    sph = wolindex.build(W * 0.1, b * 0.1, scoring="spherical", epsilon=1e-3)
    dist = sampling.distribution(sph, H, top_p=0.9, k=2)
    want = exact_top_p(np.log((0.1 * full_logits(H)) ** 2 + 1e-3), 0.9)
    assert dist.exact.any()
    for i in np.flatnonzero(dist.exact):
        np.testing.assert_array_equal(dist.row(i)[0], want[i][0])
        np.testing.assert_allclose(dist.row(i)[1], want[i][1], rtol=1e-5)
