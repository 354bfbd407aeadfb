"""Regression tests of the hardening issue for index files, saves, search inputs, tune and the CLI: each
case broke the process, destroyed a user's file or gave a raw exception before."""
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import wolindex
from wolindex import format as wio
from wolindex.cli import main
from helpers import random_layer, random_queries

W, b = random_layer(300, 12)
H = random_queries(5, 12)


@pytest.fixture(scope="module")
def index():
    return wolindex.build(W, b)


def _rewrite_meta(folder, change):
    """Change meta.json as a crafted file would, its checksum made to match (None: leave the checksum)."""
    meta = json.loads((folder / "meta.json").read_text())
    meta = change(meta) or meta
    if isinstance(meta, dict):
        meta["meta_sha256"] = wio.meta_checksum(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


# --- saves never replace what is not an index ---

def test_folder_save_over_a_user_file_is_refused(tmp_path, index):
    np.save(tmp_path / "weights.npy", W)
    before = (tmp_path / "weights.npy").read_bytes()
    with pytest.raises(ValueError, match="path: .* is a file; a folder index would replace it"):
        index.save(tmp_path / "weights.npy")
    assert (tmp_path / "weights.npy").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["weights.npy"]


def test_zip_save_over_a_user_file_is_refused(tmp_path, index):
    (tmp_path / "notes.wol").write_text("mine")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("meta.json", json.dumps({"format": "something-else"}))
    for name in ("notes.wol", "other.zip"):
        before = (tmp_path / name).read_bytes()
        with pytest.raises(ValueError, match="not a wolindex index; refusing"):
            index.save(tmp_path / name)
        assert (tmp_path / name).read_bytes() == before
    index.save(tmp_path / "i.wol")
    index.save(tmp_path / "i.wol")   # an index file is replaced
    with pytest.raises(ValueError, match="is a folder"):
        index.save(tmp_path / "dir.wol") if (tmp_path / "dir.wol").mkdir() is None else None


def test_folder_with_a_foreign_meta_json_is_not_replaced(tmp_path, index):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "meta.json").write_text('{"author": "me"}')
    with pytest.raises(ValueError, match="not a wolindex index; refusing"):
        index.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "meta.json").read_text() == '{"author": "me"}'


def test_symlink_is_not_moved_aside(tmp_path, index):
    index.save(tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(ValueError, match="symbolic link"):
        index.save(tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and wio._holds_index(tmp_path / "real")
    assert sorted(os.listdir(tmp_path)) == ["link", "real"]


def test_cli_build_over_its_own_weights_file(tmp_path, capsys):
    np.save(tmp_path / "W.npy", W)
    before = (tmp_path / "W.npy").read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(["build", str(tmp_path / "W.npy"), str(tmp_path / "W.npy")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing" in err[0]
    assert (tmp_path / "W.npy").read_bytes() == before


_KILLED_SAVE = """
import os, shutil, signal, sys
import numpy as np
import wolindex
index = wolindex.build(np.ones((50, 4), np.float32))
calls = []
def kill_at(n, real):
    def hooked(*args, **kwargs):
        calls.append(1)
        if len(calls) == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    return hooked
{hook}
index.save(sys.argv[1])
"""
_KILL_POINTS = {   # a zip save has only the first
    "before the rename": "os.replace = kill_at(1, os.replace)",
    "between moving the old index aside and the rename": "os.replace = kill_at(2, os.replace)",
    "before removing the old index": "shutil.rmtree = kill_at(1, shutil.rmtree)",
}


@pytest.mark.parametrize("name", ["i", "i.wol"])
def test_next_save_removes_leftovers_of_killed_saves(tmp_path, index, name):
    index.save(tmp_path / name)
    points = list(_KILL_POINTS.values()) if name == "i" else [_KILL_POINTS["before the rename"]]
    for hook in points:
        done = subprocess.run([sys.executable, "-c", _KILLED_SAVE.format(hook=hook), str(tmp_path / name)])
        assert done.returncode == -9
    assert [p for p in os.listdir(tmp_path) if p != name], "the killed saves left no temporaries to clean"
    index.save(tmp_path / name)
    assert sorted(os.listdir(tmp_path)) == [name]
    np.testing.assert_array_equal(wolindex.load(tmp_path / name).search(H, 3)[1], index.search(H, 3)[1])


def test_leftovers_of_a_running_save_are_kept(tmp_path, index):
    live = tmp_path / f".i.wol.tmp-{os.getppid()}-0123456789ab"
    live.write_bytes(b"partial")
    index.save(tmp_path / "i.wol")
    assert live.exists()


# --- index files: meta.json ---

def test_meta_checksum_catches_an_edited_layout(tmp_path, index):
    index.save(tmp_path / "i")
    meta = json.loads((tmp_path / "i" / "meta.json").read_text())
    meta["info"]["note"] = "edited"
    (tmp_path / "i" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="checksum mismatch in meta.json"):
        wolindex.load(tmp_path / "i")
    wolindex.load(tmp_path / "i", verify=False)


def test_deflated_or_huge_meta_is_refused_before_reading(tmp_path, index, monkeypatch):
    index.save(tmp_path / "i.wol")
    with zipfile.ZipFile(tmp_path / "i.wol") as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(tmp_path / "bomb.wol", "w") as z:
        for n, data in members.items():
            if n == "meta.json":
                z.writestr(n, data + b" " * (8 << 20), compress_type=zipfile.ZIP_DEFLATED)
            else:
                z.writestr(n, data)
    assert (tmp_path / "bomb.wol").stat().st_size < 1 << 20
    with pytest.raises(ValueError, match="meta.json must be stored uncompressed"):
        wolindex.load(tmp_path / "bomb.wol")
    monkeypatch.setattr(wio, "MAX_META_BYTES", 100)
    with pytest.raises(ValueError, match="meta.json must be stored uncompressed and at most 100 bytes"):
        wolindex.load(tmp_path / "i.wol")
    index.save(tmp_path / "f")
    with pytest.raises(ValueError, match="meta.json is larger than 100 bytes"):
        wolindex.load(tmp_path / "f")


@pytest.mark.parametrize("field", ["method", "arrays", "method_state", "build_params", "default_search", "info",
                                   "n_classes", "dim"])
def test_missing_meta_fields(tmp_path, index, field):
    index.save(tmp_path / "i")
    _rewrite_meta(tmp_path / "i", lambda m: m.pop(field) and None)
    with pytest.raises(ValueError, match=f"lacks the field '{field}'"):
        wolindex.load(tmp_path / "i")


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(arrays=list(m["arrays"])), "field 'arrays' of meta.json must be of type dict"),
    (lambda m: m.update(n_classes=True), "field 'n_classes' of meta.json must be of type int"),
    (lambda m: m.update(n_classes=-3), "n_classes in meta.json must be a positive int"),
    (lambda m: m["arrays"]["layer.W"].pop("sha256"), "lacks the field 'sha256'"),
    (lambda m: m["arrays"]["layer.W"].update(shape=[300, -12]), "bad shape"),
    (lambda m: m["arrays"].update({"layer.b": "x"}), "bad array entry"),
    (lambda m: m.update(layer="elsewhere"), "layer in meta.json"),
    (lambda m: m.update(method=["exact"]), "method"),
])
def test_ill_typed_meta_fields(tmp_path, index, change, message):
    index.save(tmp_path / "i")
    _rewrite_meta(tmp_path / "i", lambda m: change(m) and None)
    with pytest.raises(ValueError, match=message):
        wolindex.load(tmp_path / "i")


def test_deeply_nested_meta(tmp_path, index):
    index.save(tmp_path / "i")
    text = (tmp_path / "i" / "meta.json").read_text()
    (tmp_path / "i" / "meta.json").write_text(text[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ValueError, match="not valid JSON"):
        wolindex.load(tmp_path / "i")


def test_non_finite_layer_in_a_file(tmp_path, index):
    index.save(tmp_path / "i")
    b_bad = b.copy()
    b_bad[7] = np.nan
    np.save(tmp_path / "i" / "layer.b.npy", b_bad)
    with pytest.raises(ValueError, match="W or b holds NaN or Inf"):
        wolindex.load(tmp_path / "i", verify=False)


def test_byte_swapped_layer_in_a_file(tmp_path, index):
    index.save(tmp_path / "i")
    np.save(tmp_path / "i" / "layer.W.npy", W.astype(">f4"))
    _rewrite_meta(tmp_path / "i", lambda m: m["arrays"]["layer.W"].update(dtype=">f4"))
    with pytest.raises(ValueError, match="layer arrays do not match"):
        wolindex.load(tmp_path / "i", verify=False)


# --- search: finite inputs whose products overflow ---

@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_overflowing_products_are_an_error(engine):
    big = wolindex.build(np.full((40, 6), 1e20, np.float32))
    with pytest.raises(ValueError, match="H: entries up to .* can overflow float32"):
        big.search(np.full((2, 6), 1e20, np.float32), 3, engine=engine)
    scores, _ = big.search(np.full((2, 6), 1e-20, np.float32), 3, engine=engine)
    assert np.isfinite(scores).all()


def test_overflowing_squares_are_an_error():
    sph = wolindex.build(np.full((40, 6), 1e10, np.float32), scoring="spherical")
    with pytest.raises(ValueError, match="squared"):
        sph.search(np.full((1, 6), 1e10, np.float32), 3)


# --- tune: clear errors ---

@pytest.mark.parametrize("options, error, message", [
    ({"target_p1": "0.9"}, TypeError, "target_p1: expected a number"),
    ({"target_p1": 1.5}, ValueError, "target_p1: expected a fraction"),
    ({"target_p1": 0.9, "grid": []}, ValueError, "grid: expected a non-empty list"),
    ({"target_p1": 0.9, "grid": [3]}, ValueError, "grid: expected a non-empty list"),
    ({"target_p1": 0.9, "batch": 0}, ValueError, "batch: expected an int >= 1"),
    ({"target_p1": 0.9, "n_batches": 0}, ValueError, "n_batches: expected an int >= 1"),
])
def test_tune_errors(index, options, error, message):
    with pytest.raises(error, match=message):
        index.tune(H, 3, verbose=False, **options)


# --- CLI: one line, exit 2 ---

def _cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_cli_errors_are_one_line(tmp_path, capsys, index):
    (tmp_path / "junk.npy").write_bytes(b"not an array at all")
    assert "junk.npy" in _cli_error(capsys, ["build", str(tmp_path / "junk.npy"), str(tmp_path / "o.wol")])
    assert "--set" in _cli_error(capsys, ["build", str(tmp_path / "junk.npy"), str(tmp_path / "o.wol"),
                                          "--set", "nlist"])
    index.save(tmp_path / "i.wol")
    np.save(tmp_path / "q.npy", H)
    assert "--out" in _cli_error(capsys, ["search", str(tmp_path / "i.wol"), str(tmp_path / "q.npy"),
                                          "--out", str(tmp_path)])
    assert "--out" in _cli_error(capsys, ["search", str(tmp_path / "i.wol"), str(tmp_path / "q.npy"),
                                          "--out", str(tmp_path / "x.txt")])
    (tmp_path / "data.npz").write_bytes(b"mine")
    assert "refusing" in _cli_error(capsys, ["search", str(tmp_path / "i.wol"), str(tmp_path / "q.npy"),
                                             "--out", str(tmp_path / "data.npz")])
    assert (tmp_path / "data.npz").read_bytes() == b"mine"
    main(["search", str(tmp_path / "i.wol"), str(tmp_path / "q.npy"), "--out", str(tmp_path / "r.npz")])
    main(["search", str(tmp_path / "i.wol"), str(tmp_path / "q.npy"), "--out", str(tmp_path / "r.npz")])
    with np.load(tmp_path / "r.npz") as r:
        np.testing.assert_array_equal(r["labels"], index.search(H, 10)[1])
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
