"""Reading weights from .npy / .npz / .safetensors files and Hugging Face checkpoint folders."""
import json
import struct

import numpy as np
import pytest

import wolindex
from wolindex.weights import read_tensor
from conftest import random_layer

W, b = random_layer(40, 6)


def write_safetensors(path, tensors, dtypes=None):
    """A minimal writer following the published format: u64 header length, JSON header, raw bytes."""
    header, blobs, offset = {"__metadata__": {"format": "np"}}, [], 0
    for name, a in tensors.items():
        raw = a.tobytes()
        dtype = (dtypes or {}).get(name, {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}.get(a.dtype))
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_npy_and_npz(tmp_path):
    np.save(tmp_path / "W.npy", W)
    np.testing.assert_array_equal(read_tensor(tmp_path / "W.npy"), W)
    np.savez(tmp_path / "m.npz", weight=W, bias=b)
    np.testing.assert_array_equal(read_tensor(tmp_path / "m.npz", "bias"), b)
    with pytest.raises(ValueError, match="name one with key="):
        read_tensor(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="'nope' is not in"):
        read_tensor(tmp_path / "m.npz", "nope")
    layer = wolindex.load_layer(tmp_path / "m.npz", "weight", bias_key="bias")
    np.testing.assert_array_equal(layer.b, b)


def test_safetensors_float16_and_bfloat16(tmp_path):
    W16 = W.astype(np.float16)
    bf16_bits = (W.view(np.uint32) >> 16).astype(np.uint16)  # truncation to bfloat16
    write_safetensors(tmp_path / "m.safetensors", {"lm_head.weight": W16, "bf": bf16_bits, "lm_head.bias": b},
                      dtypes={"bf": "BF16"})
    np.testing.assert_array_equal(read_tensor(tmp_path / "m.safetensors", "lm_head.weight"), W16)
    got = read_tensor(tmp_path / "m.safetensors", "bf")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, (bf16_bits.astype(np.uint32) << 16).view(np.float32))
    layer = wolindex.load_layer(tmp_path / "m.safetensors", "lm_head.weight", bias_key="lm_head.bias")
    assert layer.W.dtype == np.float32 and np.array_equal(layer.W, W16.astype(np.float32))


def test_safetensors_errors(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{{{{{")
    with pytest.raises(ValueError, match="not a safetensors file"):
        read_tensor(tmp_path / "bad.safetensors", "x")
    write_safetensors(tmp_path / "t.safetensors", {"w": W})
    raw = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[:-8])
    with pytest.raises(ValueError, match="truncated"):
        read_tensor(tmp_path / "t.safetensors", "w")


def test_hugging_face_folders(tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    write_safetensors(single / "model.safetensors", {"model.embed.weight": b, "lm_head.weight": W})
    np.testing.assert_array_equal(read_tensor(single), W)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    write_safetensors(sharded / "model-00001.safetensors", {"model.embed.weight": W})
    write_safetensors(sharded / "model-00002.safetensors", {"output.weight": W * 2})
    (sharded / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed.weight": "model-00001.safetensors", "output.weight": "model-00002.safetensors"}}))
    np.testing.assert_array_equal(read_tensor(sharded), W * 2)
    np.testing.assert_array_equal(read_tensor(sharded, "model.embed.weight"), W)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(ValueError, match="never unpickles"):
        read_tensor(pickled, "lm_head.weight")


def test_unknown_file_types(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"")
    with pytest.raises(ValueError, match="expected .npy, .npz, .safetensors"):
        read_tensor(tmp_path / "w.pt")
    with pytest.raises(FileNotFoundError):
        read_tensor(tmp_path / "none.npy")
