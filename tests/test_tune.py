"""tune: among the settings meeting the target, the fastest becomes the default (never one below the target);
target_recall uses R_true on the given labels; the report is returned and kept in stats()."""
import importlib

import numpy as np
import pytest

import wolindex
from wolindex.metrics import p_at_k, true_recall_at_k

tune_module = importlib.import_module("wolindex.tune")


def clustered_layer(n_classes=30000, dim=32, n_groups=50, n_queries=512, seed=0):
    """Classes in n_groups tight groups and queries near the group centres: an IVF with one list per group
    finds the top class by scanning one or two lists, so a full scan is many times as expensive for nothing."""
    rng = np.random.default_rng(seed)
    centres = 4.0 * rng.standard_normal((n_groups, dim))
    W = (centres[rng.integers(0, n_groups, n_classes)] + rng.standard_normal((n_classes, dim))).astype(np.float32)
    b = (0.1 * rng.standard_normal(n_classes)).astype(np.float32)
    H = (0.5 * centres[rng.integers(0, n_groups, n_queries)]
         + 0.5 * rng.standard_normal((n_queries, dim))).astype(np.float32)
    return W, b, H


@pytest.fixture(scope="module")
def lss_setup():
    from wolindex.contrib.datasets import synthetic

    data = synthetic(n_classes=2000, dim=16, n_train=4000, n_test=400, seed=5)
    index = wolindex.build(data.W, data.b, method="lss", train=data.H_train, labels=data.y_train, n_buckets=32,
                           n_tables=1, rounds=1, verbose=False)
    return data, index


def fake_speed(qps_of, exact_qps=1.0):
    """A stand-in for tune.compare_speed giving each runner the qps that qps_of(settings) names (runners
    are functools.partial(index.search, k=..., **settings)), and exact search's runner exact_qps; records
    the settings timed."""
    timed = []

    def compare_speed(runners, H, batch, n_batches, rounds=5, warmup=2):
        out = {}
        for name, fn in runners.items():
            settings = {key: v for key, v in fn.keywords.items() if key != "k"}
            qps = exact_qps if name == "exact" else float(qps_of(settings))
            if name != "exact":
                timed.append(settings)
            out[name] = {"batch": batch, "n_batches": n_batches, "median_s": batch / qps, "qps": qps}
        return out

    return compare_speed, timed


def check_report_consistent(report, target):
    """The chosen entry meets the target and has the highest measured qps among the entries that do; qps is
    reported for exactly the entries meeting the target."""
    metric, qps = report["metric"], f"qps_batch{report['batch']}"
    meeting = [t for t in report["tried"] if t[metric] >= target]
    assert meeting and report["chosen"] in meeting
    for t in report["tried"]:
        assert (qps in t) == (t[metric] >= target), t
    assert report["chosen"][qps] == max(t[qps] for t in meeting)


def test_fastest_meeting_setting_wins_not_the_most_expensive(lss_setup, monkeypatch):
    """Timings fixed by a fake timer: the fastest setting meeting the target is chosen, whatever its place in
    the grid or its candidate count; a faster setting below the target is never chosen."""
    data, index = lss_setup
    H = data.H_test
    _, exact = wolindex.build(data.W, data.b).search(H, 1)
    grid = [{"n_probe": p} for p in (1, 2, 4, 8, 32)]
    p1 = {g["n_probe"]: p_at_k(index.search(H, 5, **g)[1], exact, 1) for g in grid}
    assert p1[32] == 1.0 and p1[1] < 0.99, p1                   # the data must make n_probe=1 miss the target
    target = min(p1[4], 0.99)
    meets = [p for p in p1 if p1[p] >= target]
    assert 1 not in meets and 32 in meets
    for fastest in meets:                                       # whichever meeting setting is fastest wins
        qps = {p: 1000.0 + p for p in p1}                       # the rest: more probes, faster (anti-cost order)
        qps[fastest] = 1e6
        qps[1] = 1e9                                            # below the target: fastest of all, never chosen
        speed, timed = fake_speed(lambda s, qps=qps: qps[s["n_probe"]])
        monkeypatch.setattr(tune_module, "compare_speed", speed)
        report = index.tune(H, 5, target_p1=target, grid=grid, verbose=False)
        assert set(meets) <= {s["n_probe"] for s in timed}       # the fake timer was used
        assert report["chosen"]["settings"] == {"n_probe": fastest}
        assert index.default_search["n_probe"] == fastest
        check_report_consistent(report, target)
        assert [t["settings"] for t in report["tried"]] == grid
        for t in report["tried"]:
            assert t["P@1"] == pytest.approx(p1[t["settings"]["n_probe"]])
            _, _, n_scored = index.search(H, 5, return_n_scored=True, **t["settings"])
            assert t["candidates"] == pytest.approx(float(np.mean(n_scored)))
    # costs in the usual order (qps falling as candidates grow): the cheapest meeting setting wins
    speed, _ = fake_speed(lambda s: 1e6 / s["n_probe"])
    monkeypatch.setattr(tune_module, "compare_speed", speed)
    report = index.tune(H, 5, target_p1=target, grid=grid, verbose=False)
    assert report["chosen"]["settings"] == {"n_probe": min(meets)}


def test_faiss_ivf_is_not_tuned_to_a_full_scan():
    """Real timings with a large cost gap: a small n_probe meeting target_p1 beats scanning all 50 lists;
    n_probe=1, cheaper still but below the target, is not chosen."""
    pytest.importorskip("faiss")
    W, b, H = clustered_layer()
    index = wolindex.build(W, b, method="faiss-ivf", nlist=50, verbose=False)
    grid = [{"n_probe": 1}, {"n_probe": 6}, {"n_probe": 50}]
    report = index.tune(H, 10, target_p1=0.98, grid=grid, batch=256, n_batches=4, verbose=False)
    by_probe = {t["settings"]["n_probe"]: t for t in report["tried"]}
    # observed P@1: 0.953, 1.0, 1.0
    assert by_probe[6]["P@1"] >= 0.98 and by_probe[50]["P@1"] == 1.0 and by_probe[1]["P@1"] < 0.98, by_probe
    check_report_consistent(report, 0.98)
    assert report["chosen"]["settings"] == {"n_probe": 6}, report["tried"]
    assert index.default_search["n_probe"] == 6
    qps = "qps_batch256"
    assert by_probe[6][qps] > 2 * by_probe[50][qps], by_probe   # the gap the choice rests on (observed ~6x)


def test_target_recall_uses_true_labels(lss_setup):
    """target_recall is met by R_true@recall_k on `labels`, not by agreement with exact search: each tried
    setting reports R_true computed from its own labels, and a target above what exact search itself reaches
    on those labels cannot be met, although a full scan agrees with exact search perfectly."""
    data, index = lss_setup
    H, y = data.H_test, data.y_test
    grid = [{"n_probe": p} for p in (1, 4, 32)]
    _, exact = wolindex.build(data.W, data.b).search(H, 5)
    exact_r1 = true_recall_at_k(exact, y, 1)
    assert exact_r1 < 0.9                                       # synthetic labels are noisy: R_true < P@1 = 1
    report = index.tune(H, 5, target_recall=exact_r1 - 0.02, labels=y, grid=grid, batch=100, n_batches=2,
                        verbose=False)
    assert report["metric"] == "R_true@1" and report["target"] == pytest.approx(exact_r1 - 0.02)
    for t in report["tried"]:
        _, labels = index.search(H, 5, **t["settings"])
        assert t["R_true@1"] == pytest.approx(true_recall_at_k(labels, y, 1))
        assert "P@1" not in t
    check_report_consistent(report, exact_r1 - 0.02)
    assert report["chosen"]["R_true@1"] >= exact_r1 - 0.02
    with pytest.raises(ValueError, match="R_true@1"):
        index.tune(H, 5, target_recall=min(1.0, exact_r1 + 0.05), labels=y, grid=grid, verbose=False)
    # recall_k: the metric is R_true@recall_k
    report = index.tune(H, 5, target_recall=0.01, labels=y, recall_k=5, grid=grid, batch=100, n_batches=2,
                        verbose=False)
    assert report["metric"] == "R_true@5"
    for t in report["tried"]:
        assert t["R_true@5"] == pytest.approx(true_recall_at_k(index.search(H, 5, **t["settings"])[1], y, 5))
    # labels that are exact search's second choice: the full scan (P@1 = 1) gets R_true@1 = 0, so a modest
    # target is out of reach; its R_true@2 is 1
    second = exact[:, 1]
    with pytest.raises(ValueError, match="no setting reaches R_true@1"):
        index.tune(H, 5, target_recall=0.5, labels=second, grid=grid, verbose=False)
    report = index.tune(H, 5, target_recall=1.0, labels=second, recall_k=2, grid=grid, batch=100, n_batches=2,
                        verbose=False)
    assert report["tried"][-1]["R_true@2"] == 1.0 and report["chosen"]["R_true@2"] == 1.0
    with pytest.raises(ValueError, match="labels"):
        index.tune(H, 5, target_recall=0.5, grid=grid, verbose=False)


def test_report_is_kept_in_stats_and_becomes_the_default(lss_setup, monkeypatch):
    data, index = lss_setup
    H = data.H_test
    speed, _ = fake_speed(lambda s: 1e6 / s["n_probe"])
    monkeypatch.setattr(tune_module, "compare_speed", speed)
    grid = [{"n_probe": 2, "path": "grouped"}, {"n_probe": 32, "path": "fused"}]
    report = index.tune(H, 5, target_p1=0.5, grid=grid, verbose=False)
    assert report["chosen"]["settings"] == grid[0]
    stats = index.stats()
    assert stats["tuned"] == report
    assert stats["default_search"]["n_probe"] == 2 and stats["default_search"]["path"] == "grouped"
    assert stats["tuned"]["k"] == 5 and stats["tuned"]["n_queries"] == H.shape[0]
    for a, c in zip(index.search(H, 5, return_n_scored=True),
                    index.search(H, 5, return_n_scored=True, n_probe=2, path="grouped")):
        np.testing.assert_array_equal(a, c)
    # a later tune replaces the report
    report2 = index.tune(H, 5, target_p1=1.0, grid=[{"n_probe": 32}], verbose=False)
    assert index.stats()["tuned"] == report2 and index.default_search["n_probe"] == 32


HELD_OUT_P1 = {"adaptive": (0.94, "observed 0.960, data seed 5"), "lss": (0.92, "observed 0.945, data seed 5")}


@pytest.mark.parametrize("method", ["adaptive", "lss"])
def test_learned_methods_tune_on_their_own_grid(lss_setup, method, monkeypatch):
    """adaptive and LSS tune over their own tuning_grid (the default grid): the chosen setting is one of
    the grid's, the fastest of those meeting the target by the (fake, deterministic) timer, and it holds
    the target on other held-out queries within a small margin."""
    data, lss_index = lss_setup
    index = lss_index if method == "lss" else wolindex.build(
        data.W, data.b, method="adaptive", train=data.H_train, labels=data.y_train, cost_queries=256,
        verbose=False)
    grid = index.method.tuning_grid(5)

    def qps(settings):   # fewer classes scored, faster
        return 1e6 / (1.0 + float(np.mean(index.search(data.H_test[:50], 5, return_n_scored=True, **settings)[2])))

    speed, _ = fake_speed(qps)
    monkeypatch.setattr(tune_module, "compare_speed", speed)
    tune_half, check_half = data.H_test[:200], data.H_test[200:]
    report = index.tune(tune_half, 5, target_p1=0.95, verbose=False)
    assert report["chosen"]["settings"] in grid
    check_report_consistent(report, 0.95)
    _, exact_labels = wolindex.build(data.W, data.b).search(check_half, 1)
    _, labels = index.search(check_half, 5)
    assert p_at_k(labels, exact_labels, 1) >= HELD_OUT_P1[method][0]


def test_exact_search_faster_than_every_setting_becomes_the_default(lss_setup, monkeypatch):
    """When exact search outruns every setting meeting the target, the report says so and search() without
    settings searches exactly (explicit settings still use the method)."""
    data, index = lss_setup
    H = data.H_test
    grid = [{"n_probe": p} for p in (2, 32)]
    speed, _ = fake_speed(lambda s: 100.0, exact_qps=1000.0)
    monkeypatch.setattr(tune_module, "compare_speed", speed)
    report = index.tune(H, 5, target_p1=0.5, grid=grid, verbose=False)
    assert report["search_exactly"] and "exact search" in report["verdict"]
    exact_s, exact_l = wolindex.build(data.W, data.b).search(H, 5)
    scores, labels, n_scored = index.search(H, 5, return_n_scored=True)
    np.testing.assert_array_equal(labels, exact_l)
    assert np.all(n_scored == data.W.shape[0])
    _, _, n_probe2 = index.search(H, 5, n_probe=2, return_n_scored=True)
    assert n_probe2.mean() < data.W.shape[0]
    speed, _ = fake_speed(lambda s: 100.0, exact_qps=10.0)
    monkeypatch.setattr(tune_module, "compare_speed", speed)
    report = index.tune(H, 5, target_p1=0.5, grid=grid, verbose=False)
    assert not report["search_exactly"]
    _, _, n_scored = index.search(H, 5, return_n_scored=True)
    assert n_scored.mean() < data.W.shape[0]


def test_tune_widens_the_grid_until_the_target_is_met(monkeypatch):
    """LSS with more buckets than its base grid probes: a target only (nearly) exact search meets is reached
    by widening n_probe up to every bucket, instead of failing."""
    from wolindex.contrib.datasets import synthetic

    data = synthetic(n_classes=3000, dim=16, n_train=3000, n_test=300, seed=7)
    index = wolindex.build(data.W, data.b, method="lss", train=data.H_train, labels=data.y_train, n_buckets=512,
                           n_tables=1, rounds=0, verbose=False)
    base = {t["n_probe"] for t in index.method.tuning_grid(5)}
    assert max(base) < 512
    speed, _ = fake_speed(lambda s: 1000.0 / s["n_probe"])
    monkeypatch.setattr(tune_module, "compare_speed", speed)
    report = index.tune(data.H_test, 5, target_p1=1.0, verbose=False)
    probes = [t["settings"]["n_probe"] for t in report["tried"]]
    assert probes[-1] == 512 and report["chosen"]["settings"]["n_probe"] > max(base)
    assert report["chosen"]["P@1"] == 1.0
