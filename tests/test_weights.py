"""Reading weights from .npy / .npz / .safetensors files and Hugging Face checkpoint folders."""
import io
import json
import struct
import warnings
import zipfile

import numpy as np
import pytest

import wolindex
from wolindex.weights import read_tensor
from helpers import random_layer

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
    with pytest.raises(ValueError, match="^path: .* is not a valid safetensors file"):
        read_tensor(tmp_path / "bad.safetensors", "x")
    write_safetensors(tmp_path / "t.safetensors", {"w": W})
    raw = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[:-8])
    with pytest.raises(ValueError, match="^path: .* is not a valid safetensors file .*not fully covered"):
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
    with pytest.raises(ValueError, match="^path: .*never unpickles"):
        read_tensor(pickled, "lm_head.weight")


def test_unknown_file_types(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"")
    (tmp_path / "w.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="^path: .*expected .npy, .npz, .safetensors or a checkpoint folder$"):
        read_tensor(tmp_path / "w.txt")
    with pytest.raises(ValueError, match="expected .npy, .npz, .safetensors.*this checkpoint is a pickle"):
        read_tensor(tmp_path / "w.pt")
    with pytest.raises(FileNotFoundError):
        read_tensor(tmp_path / "none.npy")


def write_header(path, header, data=b""):
    """A .safetensors file with any header (a dict, or raw JSON bytes) and data bytes."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("header,data", [
    ({"w": {"dtype": "U8", "shape": [48], "data_offsets": [-48, 0]}}, b""),  # the header's own bytes
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, b"\0" * 8),
    ({"a": F32_2, "b": F32_2}, b"\0" * 8),  # overlapping
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8),  # a gap
    ({"w": {"shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
    ({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 16]}}, b"\0" * 16),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 2 ** 70]}}, b"\0" * 8),
    ({"w": {"dtype": "F32", "shape": [2 ** 40, 2 ** 40], "data_offsets": [0, 8]}}, b"\0" * 8),
    ({"w": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8),
    ({"w": "x"}, b""),
    ([1, 2], b""),
    ({"__metadata__": "x", "w": F32_2}, b"\0" * 8),
    ({"w": F32_2}, b"\0" * 12),  # trailing bytes
])
def test_safetensors_bad_headers(tmp_path, header, data):
    write_header(tmp_path / "m.safetensors", header, data)
    with pytest.raises(ValueError, match="^weights: .* is not a valid safetensors file"):
        wolindex.load_layer(tmp_path / "m.safetensors", "w")
    with pytest.raises(ValueError, match="^path: "):
        read_tensor(tmp_path / "m.safetensors")


def test_safetensors_unsupported_dtype(tmp_path):
    write_header(tmp_path / "m.safetensors", {"w": {"dtype": "F8_E4M3", "shape": [2, 1], "data_offsets": [0, 2]}},
                 b"\0\0")
    with pytest.raises(TypeError, match=r"^weights: .*\['w'\] has dtype F8_E4M3"):
        wolindex.load_layer(tmp_path / "m.safetensors")


def test_safetensors_package_files(tmp_path):
    """Files written by the safetensors package: BF16 exact as float32, F32 memory-mapped, metadata ignored."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    from safetensors.numpy import save_file

    Wbf = W.astype(ml_dtypes.bfloat16)
    save_file({"lm_head.weight": Wbf, "lm_head.bias": b, "empty": np.zeros((0, 6), np.float32)},
              tmp_path / "m.safetensors", metadata={"format": "np"})
    got = read_tensor(tmp_path / "m.safetensors", "lm_head.weight")
    assert got.dtype == np.float32 and np.array_equal(got, Wbf.astype(np.float32))
    assert isinstance(read_tensor(tmp_path / "m.safetensors", "lm_head.bias"), np.memmap)
    assert read_tensor(tmp_path / "m.safetensors", "empty").shape == (0, 6)
    layer = wolindex.load_layer(tmp_path / "m.safetensors", "lm_head.weight", bias_key="lm_head.bias")
    np.testing.assert_array_equal(layer.b, b)
    with pytest.raises(ValueError, match="^bias_key: 'nope' is not in"):
        wolindex.load_layer(tmp_path / "m.safetensors", "lm_head.weight", bias_key="nope")
    with pytest.raises(ValueError, match="^weight_key: .* name one with weight_key="):
        wolindex.load_layer(tmp_path / "m.safetensors")


def test_argument_types(tmp_path):
    with pytest.raises(TypeError, match="^weights: expected a path"):
        wolindex.load_layer(W)
    np.save(tmp_path / "W.npy", W)
    with pytest.raises(TypeError, match="^weight_key: expected a str"):
        wolindex.load_layer(tmp_path / "W.npy", 3)


def object_npy(path):
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def npy_bytes(a):
    buffer = io.BytesIO()
    np.save(buffer, a)
    return buffer.getvalue()


@pytest.mark.parametrize("content", [
    b"", b"junk", b"\x80\x04K\x01.", npy_bytes(W)[:-4], npy_bytes(W) + b"\0" * 4,
    npy_bytes(W).replace(b"(40, 6)", b"(40, 9)"), npy_bytes(W).replace(b"'descr'", b"'dexcr'"),
    npy_bytes(W).replace(b"(40, 6)", b"(%d, 0)" % 2 ** 70), object_npy,
])
def test_junk_npy(tmp_path, content):
    path = tmp_path / "W.npy"
    content(path) if callable(content) else path.write_bytes(content)
    with pytest.raises(ValueError, match="^weights: .*W.npy is not a readable .npy") as err:
        wolindex.load_layer(path)
    assert "allow_pickle" not in str(err.value)
    with pytest.raises(ValueError, match="^path: .*W.npy is not a readable .npy"):
        read_tensor(path)


def test_object_npy_says_why(tmp_path):
    object_npy(tmp_path / "W.npy")
    with pytest.raises(ValueError, match="Python objects .*never unpickles"):
        read_tensor(tmp_path / "W.npy")


def npz_bytes(**arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npz_with_members(**members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("content", [
    b"", b"junk", npy_bytes(W), npz_bytes(weight=W)[:-30], npz_bytes(weight=W)[:200],
    npz_bytes(weight=W).replace(b"(40, 6)", b"(40, 9)"),
    npz_bytes(weight=W).replace(b"(40, 6)", b"(%d, 0)" % 2 ** 70),
    npz_with_members(**{"weight.npy": npy_bytes(W)[:-8]}),
    npz_with_members(**{"weight.npy": b"not an array"}),
    npz_with_members(weight=b"raw bytes"),
    npz_with_members(**{"weight.npy": npy_bytes(np.array([None], dtype=object))}),
])
def test_junk_npz(tmp_path, content):
    path = tmp_path / "m.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="^weights: .*m.npz is not a readable .npz"):
        wolindex.load_layer(path, "weight")


def sharded_folder(path, weight_map):
    path.mkdir()
    write_safetensors(path / "model-00001.safetensors", {"lm_head.weight": W})
    (path / "model.safetensors.index.json").write_text(json.dumps(weight_map))
    return path


@pytest.mark.parametrize("index,pattern", [
    ({"metadata": {}}, "no weight_map"), ([1, 2], "no weight_map"), ({"weight_map": ["x"]}, "no weight_map"),
    ("{not json", "not readable JSON"), ({"weight_map": {"lm_head.weight": 5}}, "not a file name"),
    ({"weight_map": {"lm_head.weight": "../outside.safetensors"}}, "outside the checkpoint folder"),
    ({"weight_map": {"lm_head.weight": "sub/../../outside.safetensors"}}, "outside the checkpoint folder"),
    ({"weight_map": {"lm_head.weight": "OUTSIDE"}}, "outside the checkpoint folder"),  # an absolute path
])
def test_bad_sharded_index(tmp_path, index, pattern):
    write_safetensors(tmp_path / "outside.safetensors", {"lm_head.weight": W})
    folder = tmp_path / "ckpt"
    folder.mkdir()
    text = index if isinstance(index, str) else json.dumps(index)
    (folder / "model.safetensors.index.json").write_text(text.replace("OUTSIDE", str(tmp_path / "outside.safetensors")))
    with pytest.raises(ValueError, match=f"^weights: .*{pattern}"):
        wolindex.load_layer(folder)
    with pytest.raises(ValueError, match=f"^path: .*{pattern}"):
        read_tensor(folder, "lm_head.weight")


def test_symlinked_shard(tmp_path):
    """A shard linked from outside the folder, as in the Hugging Face cache (snapshots/ -> blobs/), is read."""
    write_safetensors(tmp_path / "blob", {"lm_head.weight": W})
    folder = tmp_path / "snapshot"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(tmp_path / "blob")
    np.testing.assert_array_equal(wolindex.load_layer(folder).W, W)


def test_missing_shard(tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    index = {"weight_map": {"lm_head.weight": "x.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(FileNotFoundError, match="^weights: .*x.safetensors does not exist"):
        wolindex.load_layer(folder)


@pytest.mark.parametrize("files", [["pytorch_model.bin"], ["pytorch_model-00001-of-00002.bin", "config.json"],
                                   ["model.pt"]])
@pytest.mark.parametrize("key", [None, "lm_head.weight"])
def test_pickle_checkpoint_folders(tmp_path, files, key):
    for name in files:
        (tmp_path / name).write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError, match="^weights: .*this checkpoint is a pickle; convert it to safetensors"):
        wolindex.load_layer(tmp_path, key)


def test_pickle_file_and_empty_folder(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ValueError, match="^weights: .*this checkpoint is a pickle; convert it to safetensors"):
        wolindex.load_layer(tmp_path / "pytorch_model.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="^weights: .*no model.safetensors"):
        wolindex.load_layer(tmp_path / "empty")


def tied_folder(path, config, tensors):
    path.mkdir()
    write_safetensors(path / "model.safetensors", tensors)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("config", [{"model_type": "gpt2"}, {"tie_word_embeddings": True},
                                    {"text_config": {"tie_word_embeddings": True}}])
@pytest.mark.parametrize("key", [None, "lm_head.weight"])
def test_tied_output_layer(tmp_path, config, key):
    """An absent output layer tied to the input embedding (tie_word_embeddings true or absent, as in the Hub's
    GPT-2 config.json) is read from the embedding, with a warning."""
    folder = tied_folder(tmp_path / "m", config, {"wte.weight": W, "wpe.weight": W[:5]})
    with pytest.warns(UserWarning, match="^weights: .*ties the output layer to the input embedding, so 'wte.weight'"):
        layer = wolindex.load_layer(folder, key)
    np.testing.assert_array_equal(layer.W, W)


@pytest.mark.parametrize("config,tensors,pattern", [
    ({"tie_word_embeddings": False}, {"wte.weight": W}, "no config.json there ties it"),
    (None, {"wte.weight": W}, "no config.json there ties it"),
    ({"tie_word_embeddings": "yes"}, {"wte.weight": W}, "tie_word_embeddings 'yes'"),
    ([1], {"wte.weight": W}, "is not a JSON object"),
    ({}, {"other.weight": W}, "holds 0 of"),
    ({}, {"wte.weight": W, "model.embed_tokens.weight": W}, "holds 2 of"),
])
def test_tied_output_layer_errors(tmp_path, config, tensors, pattern):
    folder = tied_folder(tmp_path / "m", config, tensors)
    with pytest.raises(ValueError, match=pattern):
        wolindex.load_layer(folder)
    with pytest.raises(ValueError, match="^weight_key: 'other' is not in"):
        wolindex.load_layer(folder, "other")


TINY = {"gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_layer=1, n_head=2, n_embd=16, vocab_size=100)),
        "llama-untied": ("LlamaConfig", "LlamaForCausalLM",
                         dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              num_key_value_heads=2, vocab_size=100, tie_word_embeddings=False)),
        "llama-tied": ("LlamaConfig", "LlamaForCausalLM",
                       dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                            num_key_value_heads=2, vocab_size=100, tie_word_embeddings=True))}


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """Folders written by transformers' save_pretrained from tiny config-built models: {name: (folder, lm_head W)}."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    out = {}
    for name, (config_class, model_class, settings) in TINY.items():
        model = getattr(transformers, model_class)(getattr(transformers, config_class)(**settings))
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        out[name] = folder, model.get_output_embeddings().weight.detach().numpy().copy()
    return out


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize("key", [None, "lm_head.weight"])
def test_save_pretrained_folders(saved_models, name, key):
    folder, lm_head = saved_models[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer = wolindex.load_layer(folder, key)
    np.testing.assert_array_equal(layer.W, lm_head)
    assert layer.W.shape == (100, 16) and np.all(layer.b == 0)
    said = [str(w.message) for w in caught if "ties the output layer" in str(w.message)]
    assert len(said) == (name != "llama-untied")


def test_cli_build_tied_folder(saved_models, tmp_path, capsys):
    from wolindex.cli import main

    folder, lm_head = saved_models["gpt2"]
    with pytest.warns(UserWarning, match="'transformer.wte.weight' is read instead"):
        main(["build", str(folder), str(tmp_path / "gpt2.wol")])
    assert '"n_classes": 100' in capsys.readouterr().out
    np.testing.assert_array_equal(wolindex.load(tmp_path / "gpt2.wol").layer.W, lm_head)
