"""Test helpers shared by the test files (data makers and the tie-aware top-k check); fixtures live in
conftest.py. Import with `from helpers import ...`."""
from contextlib import contextmanager

import numpy as np


def random_layer(n_classes, dim, seed=0, integer=False):
    """(W, b) float32; integer=True gives small integer values, so every dot product is exact and ties
    are real ties."""
    rng = np.random.default_rng(seed)
    if integer:
        W = rng.integers(-2, 3, (n_classes, dim)).astype(np.float32)
        b = rng.integers(-2, 3, n_classes).astype(np.float32)
    else:
        W = rng.standard_normal((n_classes, dim)).astype(np.float32)
        b = rng.standard_normal(n_classes).astype(np.float32)
    return W, b


def random_queries(n, dim, seed=1, integer=False):
    rng = np.random.default_rng(seed)
    if integer:
        return rng.integers(-2, 3, (n, dim)).astype(np.float32)
    return rng.standard_normal((n, dim)).astype(np.float32)


def assert_topk_matches(scores, labels, logits, k, cand_mask=None, rtol=1e-5, atol=1e-4):
    """Check (scores, labels), best first, against full float64 logits (N, D):
    - every returned label is valid, distinct within its row, and its score is its logit;
    - scores are non-increasing and equal the reference top-k scores (so ids may differ only among
      classes whose logits tie at the boundary);
    cand_mask (N, D) bool restricts the reference to each row's candidates (padding -1 / -inf beyond)."""
    logits = np.where(cand_mask, logits, -np.inf) if cand_mask is not None else logits
    n_valid = np.isfinite(logits).sum(axis=1)
    ref = -np.sort(-logits, axis=1)[:, :k]
    for i in range(len(labels)):
        m = min(k, n_valid[i])
        row_l, row_s = labels[i], scores[i]
        assert np.all(row_l[m:] == -1) and np.all(np.isneginf(row_s[m:])), f"row {i}: bad padding"
        got = row_l[:m]
        assert np.all(got >= 0) and len(set(got.tolist())) == m, f"row {i}: invalid or repeated labels {got}"
        np.testing.assert_allclose(row_s[:m], logits[i, got], rtol=rtol, atol=atol, err_msg=f"row {i}: score != logit")
        np.testing.assert_allclose(row_s[:m], ref[i, :m], rtol=rtol, atol=atol, err_msg=f"row {i}: not the top-k")
        assert np.all(np.diff(row_s[:m]) <= 0), f"row {i}: not sorted"


@contextmanager
def numba_threads(n):
    """Run the block with n of Numba's threads (at most its configured number), then restore the count."""
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        numba.set_num_threads(before)
