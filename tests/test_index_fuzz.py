"""Seeded fuzzing of saved indexes of every method: damaged bytes, and crafted files whose checksums were
made to match (changed JSON values, arrays of other dtypes, shapes and values, arrays taken from a larger
index). Every load ends in an Index or a ValueError / TypeError, and every search after a successful load
returns labels in [-1, D) or a ValueError / TypeError."""
import hashlib
import io as bytes_io
import json
import shutil

import numpy as np
import pytest

import wolindex
from wolindex import format as wio
from helpers import random_layer, random_queries

pytest.importorskip("faiss")

D, DIM = 600, 8
SETTINGS = {
    "exact": {},
    "faiss-flat": {},
    "faiss-ivf": {"nlist": 8},
    "faiss-hnsw": {"m": 8, "ef_construction": 16},
    "faiss-ivfpq": {"nlist": 8, "m": 3},
    "adaptive": {"cutoffs": [100, 300]},
    "ds": {"n_experts": 4, "start_experts": 2, "epochs_per_stage": 1.0, "final_epochs": 1.0, "batch_size": 256},
    "lss": {"n_tables": 2, "n_buckets": 8, "rounds": 1},
}
JUNK = [None, True, -1, 0, 1, 2 ** 31, 2 ** 63, -2 ** 70, 0.5, 1e308, "x", "", [], [1, 2], {}, {"a": 1}]
CASES_PER_METHOD = 200
H = random_queries(7, DIM, seed=5)


def _build(method, n_classes, seed):
    W, b = random_layer(n_classes, DIM, seed=seed)
    train = random_queries(1500, DIM, seed=seed + 1)
    labels = np.random.default_rng(seed).integers(0, n_classes, 1500)
    extra = {"class_counts": np.bincount(labels, minlength=n_classes)} if method == "adaptive" else {}
    if method in ("exact",) or method.startswith("faiss"):
        return wolindex.build(W, b, method=method, **SETTINGS[method])
    return wolindex.build(W, b, method=method, train=train, labels=labels, verbose=False, **SETTINGS[method],
                          **extra)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """method -> (folder of an index over D classes, folder of one over 2 D classes)."""
    root = tmp_path_factory.mktemp("fuzz")
    out = {}
    for method in SETTINGS:
        small, large = root / f"{method}-small", root / f"{method}-large"
        _build(method, D, 0).save(small)
        _build(method, 2 * D, 1).save(large)
        out[method] = (small, large)
    return out


def _npy_bytes(a: np.ndarray) -> bytes:
    f = bytes_io.BytesIO()
    np.save(f, a, allow_pickle=False)
    return f.getvalue()


def _put_array(folder, meta, name, a):
    """Replace array `name` and make its meta.json entry and checksum match (a crafted file)."""
    data = _npy_bytes(a)
    (folder / f"{name}.npy").write_bytes(data)
    meta["arrays"][name] = {"file": f"{name}.npy", "dtype": a.dtype.str, "shape": list(a.shape),
                            "sha256": hashlib.sha256(data).hexdigest()}


def _mutate_array(rng, a: np.ndarray) -> np.ndarray:
    choice = rng.integers(8)
    flat = a.reshape(-1).copy()
    if choice == 0 and a.size:                                   # one value changed
        i = rng.integers(a.size)
        if a.dtype.kind == "f":
            flat[i] = rng.choice([np.nan, np.inf, -np.inf, 1e30, -1e30])
        elif a.dtype.kind in "iu":
            flat[i] = rng.choice([-1, -2 ** 31, np.iinfo(a.dtype).max, 2 * D, D])
        else:
            flat[i] = rng.integers(256)
        return flat.reshape(a.shape)
    if choice == 1:                                              # truncated
        return flat[: max(0, a.size - 1 - rng.integers(max(1, a.size)))]
    if choice == 2:                                              # longer
        return np.concatenate([flat, flat[: rng.integers(1, 9)]])
    if choice == 3:                                              # another dtype
        kinds = [np.float16, np.float64, np.int32, np.int64, np.uint8, np.float32, ">f4", ">i8"]
        return a.astype(kinds[rng.integers(len(kinds))])
    if choice == 4 and a.ndim == 2 and a.shape[1] > 1:          # a column dropped
        return np.ascontiguousarray(a[:, :-1])
    if choice == 5:                                              # shuffled
        return rng.permutation(flat).reshape(a.shape)
    if choice == 6:                                              # empty
        return a[:0]
    return a.reshape(-1)[None, :] if a.ndim == 1 else a.reshape(-1)   # another rank


def _mutate_json(rng, node, depth=0):
    """Change one value somewhere inside the JSON tree `node` (in place)."""
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if not keys:
        return
    key = keys[rng.integers(len(keys))]
    child = node[key]
    if isinstance(child, (dict, list)) and child and rng.random() < 0.7:
        _mutate_json(rng, child, depth + 1)
    elif isinstance(node, dict) and rng.random() < 0.2:
        del node[key]
    else:
        node[key] = JUNK[rng.integers(len(JUNK))]


def _check(folder, n_classes):
    try:
        index = wolindex.load(folder)
    except (ValueError, TypeError):
        return "refused"
    try:
        _, labels = index.search(H, 5)
    except (ValueError, TypeError):
        return "search refused"
    assert labels.shape == (len(H), 5)
    assert labels.min() >= -1 and labels.max() < n_classes, (labels.min(), labels.max())
    return "loaded"


@pytest.mark.parametrize("method", list(SETTINGS))
def test_fuzzed_index_files(saved, tmp_path, method):
    small, large = saved[method]
    rng = np.random.default_rng(sum(map(ord, method)))
    outcomes = []
    for case in range(CASES_PER_METHOD):
        folder = tmp_path / f"case{case}"
        shutil.copytree(small, folder)
        meta = json.loads((folder / "meta.json").read_text())
        names = sorted(meta["arrays"])
        kind = case % 4
        if kind == 0:                                            # damaged bytes: checksums must catch them
            target = folder / (rng.choice(names) + ".npy" if rng.random() < 0.7 else "meta.json")
            original = target.read_bytes()
            raw = bytearray(original)
            what = rng.integers(3)
            if what == 0 and raw:
                raw[rng.integers(len(raw))] ^= 1 << rng.integers(8)
            elif what == 1:
                raw = raw[: rng.integers(len(raw) + 1)]
            else:
                raw += bytes(rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8))
            target.write_bytes(bytes(raw))
            outcome = _check(folder, D)
            assert outcome == "refused" or bytes(raw) == original, (case, target.name, what)
            outcomes.append(outcome)
            continue
        if kind == 1:                                            # crafted JSON
            _mutate_json(rng, meta)
        elif kind == 2:                                          # crafted array
            name = names[rng.integers(len(names))]
            a = np.load(folder / f"{name}.npy", allow_pickle=False)
            _put_array(folder, meta, name, _mutate_array(rng, a))
        else:                                                    # an array from the larger index
            other = json.loads((large / "meta.json").read_text())
            common = sorted(set(other["arrays"]) & set(names))
            name = common[rng.integers(len(common))]
            _put_array(folder, meta, name, np.load(large / f"{name}.npy", allow_pickle=False))
        if isinstance(meta, dict):
            meta["meta_sha256"] = wio.meta_checksum(meta)
        (folder / "meta.json").write_text(json.dumps(meta))
        outcomes.append(_check(folder, D))
    assert "refused" in outcomes
