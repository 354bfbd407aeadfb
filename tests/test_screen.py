"""method='screen' and the engine's screening stage: int8 codes, the scan kernels against the NumPy
reference, the query-aware projection, the certified mode's exactness, save / load and bad input."""
import numpy as np
import pytest

import wolindex
from wolindex.engine import exact_topk
from wolindex.engine import screen as S
from wolindex.engine import vnni
from wolindex.metrics import p_at_k
from helpers import assert_topk_matches, random_layer, random_queries


def logits_of(W, b, H):
    return H.astype(np.float64) @ W.T.astype(np.float64) + b


def test_quantize_reconstructs_within_half_a_step():
    rng = np.random.default_rng(0)
    Z = (rng.standard_normal((300, 37)) * rng.uniform(0.01, 100, (300, 1))).astype(np.float32)
    Z[5] = 0
    codes, scales = S.quantize(Z)
    assert codes.dtype == np.int8 and codes.min() >= -127
    err = np.abs(Z.astype(np.float64) - scales[:, None].astype(np.float64) * codes)
    assert np.all(err <= scales[:, None] * 0.5 * (1 + 1e-6) + 1e-30)
    assert scales[5] == 0 and not codes[5].any()
    assert np.all(np.abs(codes).max(axis=1)[scales > 0] == 127)


def test_query_coding_kernel_equals_quantize():
    """The queries' codes (a Numba kernel) are quantize's, byte for byte: halves round to even, zero rows."""
    rng = np.random.default_rng(1)
    H = (rng.standard_normal((40, 37)) * rng.uniform(0.01, 100, (40, 1))).astype(np.float32)
    H[3] = 0
    H[7, :4] = [127.0, -0.5, 1.5, 2.5]       # scale 1: codes at exact halves
    H[7, 4:] = 0
    mean = rng.standard_normal(37).astype(np.float32)
    quads, qscale, qconst, p = S.code_queries(H, mean, None, 12)
    codes, scales = S.quantize(H)
    np.testing.assert_array_equal(p, codes)
    np.testing.assert_array_equal(qscale, scales)
    assert list(p[7, :4]) == [127, 0, 2, 2]
    u8 = quads.view(np.uint8)
    np.testing.assert_array_equal(u8[:, :37], (codes.astype(np.int16) + 128).astype(np.uint8))
    assert np.all(u8[:, 37:] == 128)
    np.testing.assert_allclose(qconst, H.astype(np.float64) @ mean, rtol=1e-5, atol=1e-4)


def test_top_m_buffer_keeps_the_m_best_ties_by_label():
    """heap.py's buffer, fed a stream with many tied scores, ends with the same m entries as a full sort
    (score descending, then label ascending)."""
    import numba

    from wolindex.engine.heap import buffer_clear, buffer_cut, buffer_offer

    @numba.njit
    def run(scores, labels, m):
        bs = np.empty(2 * m + 1, np.float32)
        bl = np.empty(2 * m + 1, np.int64)
        buffer_clear(bs, bl)
        n = 0
        for t in range(scores.shape[0]):
            n = buffer_offer(bs, bl, n, scores[t], labels[t])
        n = buffer_cut(bs, bl, n)
        return bs[1:n + 1].copy(), bl[1:n + 1].copy()

    for m in (1, 3, 16, 50):
        rng = np.random.default_rng(m)
        for size in (0, m, 5 * m + 3, 400):
            labels = rng.permutation(1000)[:size].astype(np.int64)
            scores = rng.integers(-3, 4, size).astype(np.float32)
            got_s, got_l = run(scores, labels, m)
            order = np.lexsort((labels, -scores))[:m]
            assert sorted(got_l) == sorted(labels[order]), (m, size)
            np.testing.assert_array_equal(np.sort(got_s), np.sort(scores[order]))


@pytest.mark.parametrize("n, r", [(1, 1), (17, 5), (33, 64), (50, 131)])
def test_blocks_layout_round_trips(n, r):
    codes = np.random.default_rng(n).integers(-127, 128, (n, r)).astype(np.int8)
    blocks = S.to_blocks(codes)
    assert blocks.shape == (-(-n // 16), max(1, -(-r // 4)), 64)
    back = S.from_blocks(blocks, n)
    assert np.array_equal(back[:, :r], codes) and not back[:, r:].any()


@pytest.mark.parametrize("n_q, n_b", vnni.TILES)
def test_tiles_compute_exact_integer_dot_products(n_q, n_b):
    """The tile the kernels use (VNNI where the CPU has it) and the plain Numba one agree with int64 NumPy,
    at the extremes of the code range."""
    from numba import njit

    rng = np.random.default_rng(n_q * 10 + n_b)
    codes = rng.integers(-127, 128, (16 * 6, 40)).astype(np.int8)
    codes[0] = 127
    codes[1] = -127
    blocks = S.to_blocks(codes)
    u8 = rng.integers(0, 256, (9, blocks.shape[1] * 4)).astype(np.uint8)
    u8[0] = 255
    quads = u8.view(np.int32)

    @njit
    def run(kind_generic, blocks, quads, out):
        for g in range(0, 2):
            if kind_generic:
                vnni.generic_tile(blocks, 2 * g, quads, 3, n_q, n_b, out[g])
            else:
                vnni.tile(n_q, n_b, blocks, 2 * g, quads, 3, out[g])

    ref = u8.astype(np.int64) @ S.from_blocks(blocks, codes.shape[0]).astype(np.int64).T
    for generic in (False, True):
        out = np.zeros((2, 8, 16), np.int32)
        run(generic, blocks, quads, out)
        for g in range(2):
            for i in range(n_q):
                for a in range(n_b):
                    cls = slice(16 * (2 * g + a), 16 * (2 * g + a) + 16)
                    assert np.array_equal(out[g, i * n_b + a], ref[3 + i, cls]), (generic, g, i, a)


def test_kernel_candidates_equal_the_numpy_reference():
    W, b = random_layer(1003, 48, seed=3)
    H = random_queries(23, 48, seed=4)
    codes = S.ScreenCodes.encode(W, b, W.mean(axis=0))
    for n_cand in (1, 10, 77):
        ids, vals = S.screen_candidates(codes, H, n_cand)
        ref_ids, ref_vals = S.screen_candidates(codes, H, n_cand, engine="numpy")
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(vals, ref_vals)


def test_screen_with_every_class_as_candidate_is_exact():
    W, b = random_layer(700, 32, seed=5)
    H = random_queries(40, 32, seed=6)
    index = wolindex.build(W, b, method="screen", verbose=False)
    for engine in ("numba", "numpy"):
        scores, labels, n_scored = index.search(H, 10, n_candidates=700, engine=engine, return_n_scored=True)
        assert_topk_matches(scores, labels, logits_of(W, b, H), 10)
        assert np.all(n_scored == 700)


@pytest.mark.parametrize("n_queries", [1, 3, 70])
def test_fused_rescoring_equals_the_numpy_engine(n_queries):
    """The numba engine scans and rescores in one kernel; the numpy engine rescores the reference's
    candidates: the same classes, scores within float32 summation error, for one query and for several."""
    W, b = random_layer(1500, 40, seed=11)
    H = random_queries(n_queries, 40, seed=12)
    index = wolindex.build(W, b, method="screen", rank=12, train=random_queries(800, 40, seed=13), verbose=False)
    for n_cand in (10, 33, 1500):
        got = index.search(H, 10, n_candidates=n_cand, return_n_scored=True)
        want = index.search(H, 10, n_candidates=n_cand, engine="numpy", return_n_scored=True)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[2], want[2])


def test_p_at_k_does_not_fall_as_the_candidates_grow():
    W, b = random_layer(4000, 64, seed=7)
    H = random_queries(200, 64, seed=8)
    _, exact = exact_topk(W, b, H, 10)
    index = wolindex.build(W, b, method="screen", rank=8, train=random_queries(2000, 64, seed=9), verbose=False)
    values = [p_at_k(index.search(H, 10, n_candidates=c)[1], exact, 10) for c in (10, 40, 160, 640, 4000)]
    assert all(later >= earlier for earlier, later in zip(values, values[1:])), values
    assert values[-1] == 1.0


def test_query_aware_projection_succeeds_where_pca_of_w_fails():
    """W's rows vary most along 4 directions the queries never use; the queries' logit variance lies along 4
    others. The principal directions of W carry no logit variance, the query-aware ones nearly all of it."""
    rng = np.random.default_rng(10)
    D, d = 3000, 32

    def queries(n):
        H = np.zeros((n, d), np.float32)
        H[:, 4:8] = rng.standard_normal((n, 4)) * 10
        H[:, 8:] = rng.standard_normal((n, d - 8)) * 0.1
        return H

    W = rng.standard_normal((D, d)).astype(np.float32)
    W[:, :4] *= 10
    b = np.zeros(D, np.float32)
    H = queries(300)
    _, exact = exact_topk(W, b, H, 1)
    aware = wolindex.build(W, b, method="screen", rank=4, train=queries(4000), verbose=False)
    pca = wolindex.build(W, b, method="screen", rank=4, verbose=False)
    p_aware = p_at_k(aware.search(H, 1, n_candidates=30)[1], exact, 1)
    p_pca = p_at_k(pca.search(H, 1, n_candidates=30)[1], exact, 1)
    assert p_aware >= 0.95 and p_pca <= 0.2, (p_aware, p_pca)


@pytest.mark.parametrize("integer", [False, True])
def test_certified_mode_equals_exact_search(integer):
    """Integer-valued rows and queries make every score exact in float32, so ties are real ties and the
    returned ids must match exact search's exactly; with real-valued rows the scores match."""
    W, b = random_layer(2500, 40, seed=11, integer=integer)
    H = random_queries(70, 40, seed=12, integer=integer)
    index = wolindex.build(W, b, method="screen", verbose=False)
    exact_s, exact_l = exact_topk(W, b, H, 10)
    for engine in ("numba", "numpy"):
        scores, labels, n_scored = index.search(H, 10, mode="certified", engine=engine, return_n_scored=True)
        assert_topk_matches(scores, labels, logits_of(W, b, H), 10)
        if integer:
            np.testing.assert_array_equal(labels, exact_l)
            np.testing.assert_array_equal(scores, exact_s)
        assert np.all(n_scored >= 10)


def test_certified_mode_on_adversarial_layers():
    """Duplicated rows (ties everywhere), huge norms beside tiny ones, a constant row: still exactly exact."""
    rng = np.random.default_rng(13)
    base = rng.integers(-3, 4, (50, 24)).astype(np.float32)
    W = np.concatenate([np.repeat(base, 20, axis=0), base[:5] * 1000, np.zeros((7, 24), np.float32),
                        np.full((3, 24), 1e-3, np.float32)])
    b = rng.integers(-2, 3, W.shape[0]).astype(np.float32)
    H = rng.integers(-3, 4, (40, 24)).astype(np.float32)
    H[0] = 0
    index = wolindex.build(W, b, method="screen", verbose=False)
    exact_s, exact_l = exact_topk(W, b, H, 10)
    scores, labels = index.search(H, 10, mode="certified")
    np.testing.assert_array_equal(labels, exact_l)
    np.testing.assert_array_equal(scores, exact_s)


def test_certified_candidates_equal_the_numpy_reference():
    W, b = random_layer(900, 20, seed=14)
    H = random_queries(11, 20, seed=15)
    codes = S.ScreenCodes.encode(W, b, W.mean(axis=0))
    bounds = codes.certificate(W, b)
    ids, counts, overflow = S.certified_candidates(codes, bounds, H, 5)
    ref_ids, ref_counts, _ = S.certified_candidates(codes, bounds, H, 5, engine="numpy")
    assert not overflow.any()
    np.testing.assert_array_equal(counts, ref_counts)
    for i in range(len(H)):
        assert set(ids[i, :counts[i]].tolist()) == set(ref_ids[i, :ref_counts[i]].tolist())


def test_certified_falls_back_to_exact_search_when_a_list_overflows(monkeypatch):
    W = np.ones((3000, 8), np.float32)   # every class ties: every class must be rescored
    b = np.zeros(3000, np.float32)
    H = random_queries(3, 8, seed=16)
    index = wolindex.build(W, b, method="screen", verbose=False)
    monkeypatch.setattr(S, "CERTIFIED_CAP", 64)
    scores, labels, n_scored = index.search(H, 5, mode="certified", return_n_scored=True)
    exact_s, exact_l = exact_topk(W, b, H, 5)
    np.testing.assert_array_equal(labels, exact_l)
    assert np.all(n_scored == 3000)


def test_save_load_gives_identical_results(tmp_path):
    W, b = random_layer(1200, 36, seed=17)
    H = random_queries(30, 36, seed=18)
    for rank in (None, 12):
        index = wolindex.build(W, b, method="screen", rank=rank, train=random_queries(500, 36, seed=19),
                               verbose=False)
        path = tmp_path / f"screen-{rank}"
        index.save(path)
        for mmap in (False, True):
            loaded = wolindex.load(path, mmap=mmap)
            for settings in ({"n_candidates": 20},) + (({"mode": "certified"},) if rank is None else ()):
                a, b_ = index.search(H, 7, **settings), loaded.search(H, 7, **settings)
                np.testing.assert_array_equal(a[0], b_[0])
                np.testing.assert_array_equal(a[1], b_[1])


def test_tampered_codes_are_refused(tmp_path):
    W, b = random_layer(100, 8, seed=20)
    index = wolindex.build(W, b, method="screen", verbose=False)
    method = type(index.method)
    good = dict(index.method.arrays)
    for name, bad in (("blocks", good["blocks"][:-1]), ("blocks", np.full_like(good["blocks"], -128)),
                      ("scale", -good["scale"]), ("scale", good["scale"].astype(np.float64)),
                      ("mean", np.full(8, np.nan, np.float32)), ("proj", np.ones((9, 8), np.float32))):
        with pytest.raises(ValueError, match="arrays"):
            method.restore(index.layer, {**good, name: bad}, {})
    with pytest.raises(ValueError, match="unexpected"):
        method.restore(index.layer, {**good, "extra": good["scale"]}, {})


def test_bad_settings_are_refused():
    W, b = random_layer(100, 8, seed=21)
    with pytest.raises(ValueError, match="rank"):
        wolindex.build(W, b, method="screen", rank=9, verbose=False)
    with pytest.raises(TypeError, match="rank"):
        wolindex.build(W, b, method="screen", rank=2.5, verbose=False)
    index = wolindex.build(W, b, method="screen", verbose=False)
    H = random_queries(2, 8)
    with pytest.raises(ValueError, match="n_candidates"):
        index.search(H, 3, n_candidates=0)
    with pytest.raises(ValueError, match="mode"):
        index.search(H, 3, mode="exactish")
    projected = wolindex.build(W, b, method="screen", rank=4, verbose=False)
    with pytest.raises(ValueError, match="certified"):
        projected.search(H, 3, mode="certified")


def test_codes_take_about_a_quarter_of_w():
    W, b = random_layer(4096, 128, seed=22)
    full = wolindex.build(W, b, method="screen", verbose=False)
    low = wolindex.build(W, b, method="screen", rank=32, verbose=False)
    assert full.method.nbytes() <= 0.3 * W.nbytes
    assert low.method.nbytes() <= 0.12 * W.nbytes   # 32 code bytes + 16 bytes of per-row terms per 512-byte row


@pytest.mark.parametrize("method, build, search", [
    ("lss", {"n_buckets": 16, "n_tables": 2, "rounds": 1}, {"n_probe": 3}),
    ("adaptive", {"cost_queries": 128}, {"margin": 2.0}),
    ("ds", {"n_experts": 8, "epochs_per_stage": 0.2, "final_epochs": 0.2}, {"n_probe": 2}),
])
def test_routed_methods_screen_their_probed_buckets(method, build, search):
    """screen=n rescores the n best probed classes by int8 score: with n = D it equals the unscreened
    search; the kernel's candidates equal the NumPy reference's; n_scored counts the rescored classes."""
    from wolindex.contrib.datasets import synthetic

    data = synthetic(n_classes=1500, dim=24, n_train=3000, n_test=60, seed=23)
    index = wolindex.build(data.W, data.b, method=method, train=data.H_train, labels=data.y_train, screen=True,
                           verbose=False, **build)
    H = data.H_test
    plain_s, plain_l = index.search(H, 5, **search)
    full_s, full_l, n_full = index.search(H, 5, screen=1500, return_n_scored=True, **search)
    np.testing.assert_array_equal(full_l, plain_l)
    np.testing.assert_allclose(full_s, plain_s, rtol=1e-5, atol=1e-5)   # summation orders differ in the last bits
    for one in range(3):   # one query at a time: its probed blocks split between the threads
        got = index.search(H[one:one + 1], 5, screen=12, return_n_scored=True, **search)
        want = index.search(H[one:one + 1], 5, screen=12, engine="numpy", return_n_scored=True, **search)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[2], want[2])
    _, labels, n = index.search(H, 5, screen=12, return_n_scored=True, **search)
    _, ref_labels, ref_n = index.search(H, 5, screen=12, engine="numpy", return_n_scored=True, **search)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(n, ref_n)
    assert np.all(n <= 24) and np.all(n <= n_full)   # adaptive screens its head and its tail: 12 each
    assert p_at_k(labels, plain_l, 1) >= 0.9


def test_routed_screen_needs_its_codes_and_round_trips(tmp_path):
    from wolindex.contrib.datasets import synthetic

    data = synthetic(n_classes=800, dim=16, n_train=1500, n_test=20, seed=24)
    plain = wolindex.build(data.W, data.b, method="lss", train=data.H_train, n_buckets=8, rounds=0, verbose=False)
    with pytest.raises(ValueError, match="screen"):
        plain.search(data.H_test, 5, screen=10)
    with pytest.raises(ValueError, match="screen"):
        plain.search(data.H_test, 5, screen=-1)
    with pytest.raises(TypeError, match="screen"):
        wolindex.build(data.W, data.b, method="lss", train=data.H_train, screen=1, verbose=False)
    index = wolindex.build(data.W, data.b, method="lss", train=data.H_train, n_buckets=8, rounds=0, screen=True,
                           verbose=False)
    index.save(tmp_path / "lss")
    loaded = wolindex.load(tmp_path / "lss", mmap=True)
    a, b_ = index.search(data.H_test, 5, n_probe=2, screen=10), loaded.search(data.H_test, 5, n_probe=2, screen=10)
    np.testing.assert_array_equal(a[1], b_[1])
    arrays = dict(index.method.arrays)
    with pytest.raises(ValueError, match="screen_blocks"):
        type(index.method).restore(index.layer, {**arrays, "screen_blocks": arrays["screen_blocks"][:-1]},
                                   index.method.state)
    with pytest.raises(ValueError, match="screen"):
        type(index.method).restore(index.layer, {**arrays, "screen_scale": -arrays["screen_scale"]},
                                   index.method.state)


def test_screened_searches_go_through_the_batch_in_steps(monkeypatch):
    """With few (query, candidate) cells allowed per step, the dense and the routed screen give the same answer
    as in one step."""
    from wolindex.contrib.datasets import synthetic

    data = synthetic(n_classes=900, dim=16, n_train=1500, n_test=50, seed=25)
    dense = wolindex.build(data.W, data.b, method="screen", verbose=False)
    routed = wolindex.build(data.W, data.b, method="lss", train=data.H_train, n_buckets=8, rounds=0, screen=True,
                            verbose=False)
    runs = [(dense, {"n_candidates": 40}), (dense, {"mode": "certified"}), (routed, {"n_probe": 3, "screen": 40})]
    whole = [index.search(data.H_test, 5, return_n_scored=True, **settings) for index, settings in runs]
    monkeypatch.setattr(S, "STEP_CELLS", 40 * 7)
    for (index, settings), first in zip(runs, whole):
        for got, want in zip(index.search(data.H_test, 5, return_n_scored=True, **settings), first):
            np.testing.assert_array_equal(got, want)
