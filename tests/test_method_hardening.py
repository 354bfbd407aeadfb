"""Hardening of the learned methods: restore checks every array and state value of a method (damaged input
gives ValueError / TypeError, never another exception, a crash or a wrong answer), settings refuse NaN and
Inf and take NumPy scalars, and a seeded fuzz of restore over many mutations."""
import dataclasses
import json

import numpy as np
import pytest

import wolindex
from wolindex.methods import METHODS, get_method
from helpers import random_layer, random_queries

D, DIM = 1500, 16
W, B = random_layer(D, DIM, seed=11)
COUNTS = np.random.default_rng(12).integers(0, 100, D)
H_TRAIN = random_queries(1200, DIM, seed=13)
H_TEST = random_queries(30, DIM, seed=14)
BUILDS = {
    "ds": ("ds", dict(n_experts=8, epochs_per_stage=0.5, final_epochs=0.5, batch_size=256, keep_adapted=True)),
    "ds-hidden": ("ds", dict(n_experts=4, epochs_per_stage=0.5, final_epochs=0.5, batch_size=256, gate_hidden=8)),
    "lss": ("lss", dict(n_tables=2, n_buckets=32, rounds=1)),
    "adaptive": ("adaptive", dict(cutoffs=[200, 600], bound_block=64)),
}
SEARCHES = {"ds": [{}, {"n_probe": 2}, {"rows": "adapted"}], "lss": [{}, {"n_probe": 2}],
            "adaptive": [{}, {"mode": "certified"}, {"margin": -1.0, "beat_rank": 1}]}


@pytest.fixture(scope="module")
def built():
    return {key: wolindex.build(W, B, method=name, train=H_TRAIN, class_counts=COUNTS, verbose=False, **kw)
            for key, (name, kw) in BUILDS.items()}


def restore(index, arrays=None, state=None):
    """The index's method restored from (a copy of) its arrays and state, with the given replacements."""
    m = index.method
    return get_method(index.method_name).restore(index.layer, {**m.arrays, **(arrays or {})},
                                                 {**m.state, **(state or {})})


def search_ok(index, method, settings):
    """Search with the given settings; labels must lie in [-1, D) (a ValueError only for a setting the
    restored method does not support: n_probe past its buckets, scoring='adapted' without adapted rows)."""
    try:
        _, labels, _ = method.search(index.layer, H_TEST, 5, method.Search.from_dict(settings))
    except ValueError as err:
        assert str(err).startswith(("n_probe", "rows")), err
        return
    assert labels.shape == (H_TEST.shape[0], 5) and labels.min() >= -1 and labels.max() < D


def big_endian(a):
    return a.astype(a.dtype.newbyteorder(">"))


def with_value(a, value, where=0):
    out = a.copy()
    out.flat[where] = value
    return out


# ---- 1. restore checks ------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, name, mutate, match", [
    ("ds", "gate.c", lambda a: a[:-1], "gate.c"),                   # read past the end at routing before
    ("ds", "gate.U", lambda a: a.astype(np.float16), "gate.U"),     # Numba typing error before
    ("ds", "gate.U", big_endian, "gate.U"),
    ("ds", "gate.c", lambda a: with_value(a, np.nan), "gate.c"),
    ("ds", "adapted_W", lambda a: with_value(a, np.inf), "adapted_W"),
    ("ds", "adapted_b", lambda a: a[:-1], "adapted_b"),
    ("ds", "rehomed", lambda a: np.r_[a, D].astype(np.int32), "rehomed"),
    ("ds-hidden", "gate.U1", lambda a: a[:, :-1], "gate.U1"),
    ("ds-hidden", "gate.c1", lambda a: with_value(a, -np.inf), "gate.c1"),
    ("lss", "hash_V", lambda a: a.astype(np.float64), "hash_V"),     # silently cast before
    ("lss", "hash_c", lambda a: with_value(a, np.nan), "hash_c"),
    ("lss", "indices", lambda a: a.astype(np.int64), "indices"),
    ("adaptive", "cluster_ptr", lambda a: a[:0], "cluster_ptr"),      # IndexError before
    ("adaptive", "cluster_ptr", lambda a: a[::-1].copy(), "cluster_ptr"),
    ("adaptive", "block_radius", lambda a: with_value(a, np.nan), "block_radius"),   # wrong certified top-k
    ("adaptive", "block_radius", lambda a: with_value(a, -1.0), "block_radius"),
    ("adaptive", "block_bias_min", lambda a: a + 1e9, "block_bias_min"),
    ("adaptive", "gate_V", big_endian, "gate_V"),
    ("adaptive", "block_centre", lambda a: a.astype(np.float64), "block_centre"),
])
def test_damaged_arrays_are_refused(built, key, name, mutate, match):
    with pytest.raises(ValueError, match=f"^arrays: .*{match}"):
        restore(built[key], {name: mutate(built[key].method.arrays[name])})


def test_indptr_wrapping_around_int64_is_refused(built):
    """indptr [0, 2^63 - 1, -2^63 + n + 5, n]: every step is >= 0 modulo 2^64, yet a bucket spans far past
    indices."""
    index = built["lss"]
    indices = index.method.arrays["indices"]
    n = indices.size
    indptr = np.array([0, 2**63 - 1, -2**63 + n + 5] + [n] * (index.method.buckets.n_buckets - 2), np.int64)
    with pytest.raises(ValueError, match="^arrays: indptr"):
        restore(index, {"indptr": indptr})


def test_missing_and_unexpected_arrays_are_refused(built):
    for key in BUILDS:
        index = built[key]
        with pytest.raises(ValueError, match="^arrays: .*unexpected"):
            restore(index, {"junk": np.zeros(3)})
        for name in index.method.arrays:
            arrays = {n: a for n, a in index.method.arrays.items() if n != name}
            with pytest.raises(ValueError, match="^arrays: "):
                get_method(index.method_name).restore(index.layer, arrays, index.method.state)
    exact = wolindex.build(W, B)
    with pytest.raises(ValueError, match="^arrays: method 'exact'"):
        get_method("exact").restore(exact.layer, {"indptr": np.zeros(1, np.int64)}, {})
    with pytest.raises(TypeError, match="^state"):
        get_method("exact").restore(exact.layer, {}, [1, 2])


@pytest.mark.parametrize("key, name", [("lss", "n_tables"), ("lss", "n_buckets"), ("ds", "gate_hidden"),
                                       ("ds-hidden", "gate_hidden")])
@pytest.mark.parametrize("value", ["2", [2], 2.0, 10**30, -10**30, True, None, {"a": 1}, 0, 1, 3, 64])
def test_bad_state_values_are_refused(built, key, name, value):
    index = built[key]
    if value == index.method.state[name] and type(value) is int:
        return
    with pytest.raises((ValueError, TypeError), match="^(state|arrays): "):
        restore(index, state={name: value})


def test_lss_tables_times_buckets_must_match_the_arrays(built):
    with pytest.raises(ValueError, match="^state: n_tables x n_buckets = 1 x 32"):
        restore(built["lss"], state={"n_tables": 1})
    restored = restore(built["lss"], state={"n_tables": 1, "n_buckets": 64})   # consistent: one table of 64
    assert restored.probes(H_TEST, 3).shape == (H_TEST.shape[0], 3)


def test_restored_methods_search_as_built(built):
    for key in BUILDS:
        index = built[key]
        method = restore(index)
        for settings in SEARCHES[index.method_name]:
            if settings.get("rows") == "adapted" and index.method.adapted is None:
                continue
            params = index.search_params(**settings)
            a, b = index.method.search(index.layer, H_TEST, 5, params), method.search(index.layer, H_TEST, 5, params)
            assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_strided_arrays_are_made_contiguous(built):
    """A strided (but otherwise right) array is accepted and stored C-contiguous for the kernels."""
    index = built["ds"]
    U = index.method.arrays["gate.U"]
    strided = np.zeros((U.shape[0], 2 * U.shape[1]), np.float32)[:, ::2]
    strided[:] = U
    method = restore(index, {"gate.U": strided})
    assert method.arrays["gate.U"].flags.c_contiguous
    np.testing.assert_array_equal(method.route(H_TEST, 2), index.method.route(H_TEST, 2))


# ---- 3. settings: finite numbers, NumPy scalars ------------------------------------------------------------
def settings_classes():
    return sorted({P for cls in METHODS.values() for P in (cls.Build, cls.Search)}, key=lambda P: P.__qualname__)


def fields_of(kind):
    return [(P, f.name, f.default) for P in settings_classes() for f in dataclasses.fields(P)
            if type(f.default) is kind]


@pytest.mark.parametrize("P, name, default", fields_of(float), ids=lambda x: getattr(x, "__qualname__", str(x)))
def test_float_settings_refuse_nan_and_inf_and_take_numpy_scalars(P, name, default):
    for bad in (np.inf, -np.inf, np.nan, np.float32("inf"), 10**400):
        with pytest.raises(ValueError, match=f"^{name}: "):
            P.from_dict({name: bad})
    for scalar in (np.float32(default), np.float64(default), np.float16(default)):
        value = getattr(P.from_dict({name: scalar}), name)
        assert type(value) is float and value == float(scalar)
    with pytest.raises(TypeError, match=f"^{name}: "):
        P.from_dict({name: "1.0"})
    json.dumps(P.from_dict({name: np.float32(default)}).to_dict())


@pytest.mark.parametrize("P, name, default", fields_of(int), ids=lambda x: getattr(x, "__qualname__", str(x)))
def test_int_settings_take_numpy_integers_and_refuse_bools(P, name, default):
    for scalar in (np.int64(default), np.int32(default), np.uint16(default)):
        value = getattr(P.from_dict({name: scalar}), name)
        assert type(value) is int and value == default
    json.dumps(P.from_dict({name: np.int64(default)}).to_dict())
    for bad in (True, np.bool_(True), float(default), "1"):
        with pytest.raises(TypeError, match=f"^{name}: "):
            P.from_dict({name: bad})


def test_settings_from_a_non_dict_are_refused():
    with pytest.raises(TypeError, match="^values: "):
        get_method("lss").Search.from_dict([("n_probe", 2)])


@pytest.mark.parametrize("method, settings", [
    ("lss", {"lr": np.inf}), ("lss", {"bucket_cap": np.inf}), ("lss", {"epochs": np.inf}),
    ("ds", {"expert_lr": np.inf}), ("ds", {"capacity_factor": np.nan}), ("adaptive", {"ridge": np.inf}),
    ("lss", {"bucket_cap": 1e-9}), ("ds", {"distill_k": D + 1, "complete_k": 1}),
    ("lss", {"seed": 2**32 - 1}), ("adaptive", {"seed": 2**32})])
def test_bad_build_settings_are_refused_before_training(method, settings):
    name = next(iter(settings))
    with pytest.raises(ValueError, match=f"^{name}: "):
        wolindex.build(W, B, method=method, train=H_TRAIN[:300], verbose=False, **settings)


def test_huge_finite_caps_mean_no_cap():
    """bucket_cap and capacity_factor past every bucket's or batch's size build (no OverflowError) exactly
    as a cap of D labels / of the whole batch."""
    lss = dict(method="lss", train=H_TRAIN, n_tables=1, n_buckets=16, rounds=1, verbose=False)
    assert np.array_equal(wolindex.build(W, B, bucket_cap=1e300, **lss).method.arrays["indices"],
                          wolindex.build(W, B, bucket_cap=16.0, **lss).method.arrays["indices"])
    ds = dict(method="ds", train=H_TRAIN, n_experts=4, epochs_per_stage=0.25, final_epochs=0.0, batch_size=256,
              verbose=False)
    assert np.array_equal(wolindex.build(W, B, capacity_factor=1e300, **ds).method.arrays["gate.U"],
                          wolindex.build(W, B, capacity_factor=4.0, **ds).method.arrays["gate.U"])


def test_numpy_scalar_search_settings(built):
    ref = built["adaptive"].search(H_TEST, 5, margin=1.0)
    got = built["adaptive"].search(H_TEST, 5, margin=np.float32(1.0), beat_rank=np.int64(0))
    assert np.array_equal(ref[1], got[1])
    ref = built["lss"].search(H_TEST, np.int64(5), n_probe=2)
    assert np.array_equal(ref[1], built["lss"].search(H_TEST, 5, n_probe=np.int64(2))[1])
    with pytest.raises(ValueError, match="^margin: "):
        built["adaptive"].search(H_TEST, 5, margin=1e39)


# ---- 4. seeded fuzz of restore -------------------------------------------------------------------------------
JSON_VALUES = ["x", "", [1], [], {}, {"n": 1}, 1.5, -0.0, float("nan"), 10**30, -(10**30), 2**63, True, False,
               None, 0, 1, -1, 2, 3, 7, 32, 64]


def array_mutations(a, rng):
    """Damaged variants of one method array: dtypes, byte order, shapes, truncation, non-finite values,
    out-of-range ids, shuffled order."""
    out = [a.astype(t) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.uint32)
           if np.dtype(t) != a.dtype]
    out += [big_endian(a), a[:-1], a[1:], a[:0], np.r_[a, a[-1:]] if a.ndim == 1 else np.vstack([a, a[-1:]]),
            a[..., None], a.reshape(-1) if a.ndim > 1 else a[None], a.T.copy() if a.ndim > 1 else a[::-1].copy(),
            rng.permutation(a), a[()] if a.ndim == 0 else a[0], a.tolist()]
    if a.size:
        where = int(rng.integers(a.size))
        if a.dtype.kind == "f":
            out += [with_value(a, v, where) for v in (np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0)]
        else:
            info = np.iinfo(a.dtype)
            out += [with_value(a, v, where) for v in (-1, D, D - 1, 0, info.max, info.min, int(rng.integers(D)))]
            out += [rng.permutation(a), np.sort(a), a[::-1].copy()]
    return out


def outcome(index, rng, arrays=None, state=None):
    """'refused' (ValueError / TypeError from restore) or 'searched' (with one of the method's search settings,
    drawn by rng, returning valid labels)."""
    try:
        method = restore(index, arrays, state)
    except (ValueError, TypeError):
        return "refused"
    settings = SEARCHES[index.method_name]
    search_ok(index, method, settings[int(rng.integers(len(settings)))])
    return "searched"


@pytest.mark.parametrize("key", list(BUILDS))
def test_fuzzed_restore_refuses_or_searches_correctly(built, key):
    rng = np.random.default_rng(2024)
    index = built[key]
    outcomes = [outcome(index, rng, {name: mutated}) for name, a in index.method.arrays.items()
                for mutated in array_mutations(a, rng)]
    outcomes += [outcome(index, rng, state={name: JSON_VALUES[i]}) for name in index.method.state
                 for i in rng.choice(len(JSON_VALUES), 6, replace=False)]
    for _ in range(20):   # two arrays damaged at once
        arrays = {}
        for name in rng.choice(list(index.method.arrays), 2, replace=False):
            options = array_mutations(index.method.arrays[name], rng)
            arrays[name] = options[int(rng.integers(len(options)))]
        outcomes.append(outcome(index, rng, arrays))
    assert "refused" in outcomes and "searched" in outcomes
