"""Index files: round trips, memory-mapping, atomic writes, and refusal of anything not a sound index."""
import json
import os
import zipfile

import numpy as np
import pytest

import wolindex
from wolindex import format as wio
from helpers import random_layer, random_queries

W, b = random_layer(500, 24)
H = random_queries(11, 24)


@pytest.fixture(scope="module")
def index():
    return wolindex.build(W, b, class_counts=np.arange(500))


@pytest.mark.parametrize("name", ["idx", "idx.wol", "idx.zip"])
@pytest.mark.parametrize("mmap", [False, True])
def test_round_trip_bit_identical(tmp_path, index, name, mmap):
    index.save(tmp_path / name)
    loaded = wolindex.load(tmp_path / name, mmap=mmap)
    for a, c in zip(index.search(H, 9, return_n_scored=True), loaded.search(H, 9, return_n_scored=True)):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(loaded.layer.W, W)
    np.testing.assert_array_equal(loaded.layer.class_counts, np.arange(500))
    assert loaded.method_name == "exact" and loaded.info == index.info
    assert [p.name for p in tmp_path.iterdir()] == [name], "temporary files left behind"


def test_mmap_maps_inside_zip(tmp_path, index):
    index.save(tmp_path / "i.wol")
    loaded = wolindex.load(tmp_path / "i.wol", mmap=True)
    assert isinstance(loaded.layer.W, np.memmap) and not loaded.layer.W.flags.writeable


def test_overwrite_replaces_index_but_not_other_folders(tmp_path, index):
    index.save(tmp_path / "i")
    index.save(tmp_path / "i")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep")
    with pytest.raises(ValueError, match="not a wolindex index; refusing"):
        index.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "precious.txt").read_text() == "keep"


def test_not_an_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a wolindex index"):
        wolindex.load(tmp_path / "empty")
    (tmp_path / "x.wol").write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a readable wolindex index"):
        wolindex.load(tmp_path / "x.wol")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("meta.json", json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="format field"):
        wolindex.load(tmp_path / "other.zip")
    with pytest.raises(FileNotFoundError):
        wolindex.load(tmp_path / "missing")


def _edit_meta(folder, change):
    """Change meta.json as a crafted file would: its checksum made to match the new content."""
    meta = json.loads((folder / "meta.json").read_text())
    change(meta)
    meta["meta_sha256"] = wio.meta_checksum(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def test_version_and_method_checks(tmp_path, index):
    index.save(tmp_path / "i")
    _edit_meta(tmp_path / "i", lambda m: m.update(format_version=99))
    with pytest.raises(ValueError, match="format version 99"):
        wolindex.load(tmp_path / "i")
    index.save(tmp_path / "j")
    _edit_meta(tmp_path / "j", lambda m: m.update(method="os.system"))
    with pytest.raises(ValueError, match="method: expected one of"):
        wolindex.load(tmp_path / "j")
    index.save(tmp_path / "k")
    _edit_meta(tmp_path / "k", lambda m: m["arrays"]["layer.W"].update(file="../../etc/passwd"))
    with pytest.raises(ValueError, match="bad array entry"):
        wolindex.load(tmp_path / "k")
    index.save(tmp_path / "l")
    (tmp_path / "l" / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        wolindex.load(tmp_path / "l")


def test_tampered_array_fails_checksum(tmp_path, index):
    index.save(tmp_path / "i")
    path = tmp_path / "i" / "layer.W.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch in layer.W.npy"):
        wolindex.load(tmp_path / "i")


def test_tampered_zip_fails_checksum(tmp_path, index):
    index.save(tmp_path / "i.wol")
    raw = bytearray((tmp_path / "i.wol").read_bytes())
    at = raw.find(W[100].tobytes())
    raw[at] ^= 0x01
    (tmp_path / "i.wol").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum mismatch"):
        wolindex.load(tmp_path / "i.wol")


def test_truncated_files(tmp_path, index):
    index.save(tmp_path / "i")
    path = tmp_path / "i" / "layer.W.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="checksum mismatch"):
        wolindex.load(tmp_path / "i")
    with pytest.raises(ValueError, match="truncated"):
        wolindex.load(tmp_path / "i", verify=False)
    index.save(tmp_path / "z.wol")
    raw = (tmp_path / "z.wol").read_bytes()
    (tmp_path / "z.wol").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable wolindex index"):
        wolindex.load(tmp_path / "z.wol")


def test_shape_mismatch_with_meta(tmp_path, index):
    index.save(tmp_path / "i")
    _edit_meta(tmp_path / "i", lambda m: m["arrays"]["layer.b"].update(shape=[499]))
    with pytest.raises(ValueError, match="meta.json says"):
        wolindex.load(tmp_path / "i", verify=False)


def test_pickled_array_is_refused(tmp_path, index):
    index.save(tmp_path / "i")
    obj = np.array([{"evil": 1}], dtype=object)
    np.save(tmp_path / "i" / "layer.b.npy", obj, allow_pickle=True)
    with pytest.raises(ValueError, match="object"):
        wolindex.load(tmp_path / "i", verify=False)


def test_failed_write_leaves_old_index(tmp_path, index, monkeypatch):
    index.save(tmp_path / "i.wol")
    before = (tmp_path / "i.wol").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(wio, "_write_npy", boom)
    with pytest.raises(OSError, match="disk full"):
        index.save(tmp_path / "i.wol")
    assert (tmp_path / "i.wol").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["i.wol"]


def test_saved_without_layer_needs_the_same_layer(tmp_path, index):
    """with_layer=False writes the method's arrays only; loading takes the layer back and checks it is
    the one the index was built on."""
    index.save(tmp_path / "method.wol", with_layer=False)
    assert not any(n.startswith("layer.") for n in zipfile.ZipFile(tmp_path / "method.wol").namelist())
    loaded = wolindex.load(tmp_path / "method.wol", layer=index.layer)
    for a, c in zip(index.search(H, 9), loaded.search(H, 9)):
        np.testing.assert_array_equal(a, c)
    with pytest.raises(ValueError, match="saved without its layer"):
        wolindex.load(tmp_path / "method.wol")
    other = wolindex.OutputLayer.from_arrays(W + 1, b, np.arange(500))
    with pytest.raises(ValueError, match="not the layer"):
        wolindex.load(tmp_path / "method.wol", layer=other)
    with pytest.raises(ValueError, match="expected D=500"):
        wolindex.load(tmp_path / "method.wol", layer=wolindex.OutputLayer.from_arrays(W[:9], b[:9]))
    index.save(tmp_path / "full.wol")
    with pytest.raises(ValueError, match="holds its own layer"):
        wolindex.load(tmp_path / "full.wol", layer=index.layer)
