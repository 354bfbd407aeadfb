"""Reading output-layer weights from files: .npy, .npz, .safetensors and Hugging Face checkpoint folders.

Nothing here executes code from a file: .npy/.npz headers are checked and read with allow_pickle=False, and
safetensors headers are validated by the safetensors package before a tensor is memory-mapped."""
from __future__ import annotations

import json
import lzma
import math
import os
import struct
import tokenize
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .layer import OutputLayer

# "bfloat16": ml_dtypes.bfloat16, imported when a BF16 tensor is read (see _numpy_dtype)
_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": "bfloat16",
                       "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64,
                       "U8": np.uint8, "U16": np.uint16, "U32": np.uint32, "U64": np.uint64}
_HF_WEIGHT_KEYS = ("lm_head.weight", "output.weight", "embed_out.weight", "cls.predictions.decoder.weight")
# input embeddings an output layer is tied to (GPT-2 as saved by transformers and on the Hub, Llama / Mistral /
# Qwen2 / Gemma / Phi, multimodal Llama-style, GPT-NeoX / Pythia, BLOOM / Falcon, OPT, BERT)
_HF_EMBEDDING_KEYS = ("transformer.wte.weight", "wte.weight", "model.embed_tokens.weight",
                      "model.language_model.embed_tokens.weight", "gpt_neox.embed_in.weight",
                      "transformer.word_embeddings.weight", "model.decoder.embed_tokens.weight",
                      "bert.embeddings.word_embeddings.weight")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# what zipfile and its decompressors raise on a damaged archive
_ZIP_ERRORS = (ValueError, OSError, EOFError, OverflowError, zipfile.BadZipFile, zlib.error, lzma.LZMAError,
               NotImplementedError, RuntimeError)


def _safe_open(path: Path, name: str):
    """safe_open(path) for numpy, its errors (bad header, offsets, overlaps, truncation) as ValueError."""
    from safetensors import SafetensorError, safe_open

    try:
        return safe_open(path, framework="numpy")
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: {path} does not exist") from None
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{name}: {path} is not a valid safetensors file ({err})") from None


def _numpy_dtype(code: str) -> np.dtype:
    """The little-endian NumPy dtype of a safetensors dtype code in _SAFETENSORS_DTYPES."""
    kind = _SAFETENSORS_DTYPES[code]
    if kind == "bfloat16":
        import ml_dtypes

        kind = ml_dtypes.bfloat16
    return np.dtype(kind).newbyteorder("<")


def _safetensors_keys(path: Path, name: str) -> list[str]:
    with _safe_open(path, name) as f:
        return f.keys()


def read_safetensors(path, key: str, name: str = "path", key_name: str = "key") -> np.ndarray:
    """One tensor of a .safetensors file, memory-mapped once the safetensors package validated the file (its
    numpy reader would copy the tensor); BF16 comes back as float32 (exact). name, key_name: what errors call
    the path and the key."""
    path = Path(path)
    with _safe_open(path, name) as f:
        keys = f.keys()
        if key not in keys:
            raise ValueError(f"{key_name}: {key!r} is not in {path}; it holds {sorted(keys)[:20]}")
        tensor = f.get_slice(key)
        code, shape = tensor.get_dtype(), tuple(tensor.get_shape())
    if code not in _SAFETENSORS_DTYPES:
        raise TypeError(f"{name}: {path}[{key!r}] has dtype {code}; expected one of {sorted(_SAFETENSORS_DTYPES)}")
    dtype = _numpy_dtype(code)
    try:  # the header again, for the tensor's offsets (valid: safe_open checked them)
        with open(path, "rb") as fp:
            (n,) = struct.unpack("<Q", fp.read(8))
            entry = json.loads(fp.read(n).decode("utf-8"))[key]
        begin, end = entry["data_offsets"]
        if entry["dtype"] != code or tuple(entry["shape"]) != shape or end - begin != dtype.itemsize * math.prod(shape):
            raise ValueError("the header changed while it was read")
        if begin == end:
            return np.zeros(shape, np.float32 if code == "BF16" else dtype)
        a = np.memmap(path, dtype=dtype, mode="r", offset=8 + n + begin, shape=shape)
    except (ValueError, OSError, OverflowError, KeyError, TypeError, struct.error) as err:
        raise ValueError(f"{name}: {path} could not be read ({err})") from None
    return a.astype(np.float32) if code == "BF16" else a


def _check_npy(f, size: int) -> None:
    """Check a .npy stream of size bytes before NumPy reads it: its header parses, holds no Python objects,
    and the data is exactly as long as shape and dtype say. Raises ValueError with the reason."""
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:
        shape, _, dtype = read_header(f)
    except tokenize.TokenError as err:  # from NumPy's fallback parser of old headers
        raise ValueError(f"its header does not parse ({err})") from None
    if dtype.hasobject:
        raise ValueError(f"it holds Python objects (dtype {dtype}); wolindex never unpickles files")
    if dtype.itemsize == 0:
        raise ValueError(f"its dtype {dtype} holds no data")
    expected = f.tell() + math.prod(shape) * dtype.itemsize
    if expected != size:
        raise ValueError(f"shape {shape} and dtype {dtype} need {expected} bytes, it has {size}")


def _read_npy(path: Path, name: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            _check_npy(f, os.fstat(f.fileno()).st_size)
        return np.load(path, allow_pickle=False, mmap_mode="r")
    except (ValueError, OSError, EOFError, OverflowError) as err:
        raise ValueError(f"{name}: {path} is not a readable .npy ({err})") from None


def _read_npz(path: Path, key: str | None, name: str, key_name: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # what np.load takes for a .npz
                raise ValueError("not a zip archive")
        z = np.load(path, allow_pickle=False)
    except _ZIP_ERRORS as err:
        raise ValueError(f"{name}: {path} is not a readable .npz ({err})") from None
    with z:
        if key is None:
            if len(z.files) != 1:
                raise ValueError(f"{key_name}: {path} holds {z.files[:20]}; name one with {key_name}=")
            key = z.files[0]
        if key not in z.files:
            raise ValueError(f"{key_name}: {key!r} is not in {path}; it holds {z.files[:20]}")
        try:
            member = z.zip.getinfo(key if key in z.zip.namelist() else key + ".npy")
            with z.zip.open(member) as f:
                _check_npy(f, member.file_size)
            return z[key]
        except _ZIP_ERRORS as err:
            raise ValueError(f"{name}: {path} is not a readable .npz ({key!r}: {err})") from None


def _read_json(path: Path, name: str):
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as err:
        raise ValueError(f"{name}: {path} is not readable JSON ({err})") from None


def _weight_map(index: Path, name: str) -> dict:
    """model.safetensors.index.json's weight_map {tensor name: shard file name}, checked."""
    content = _read_json(index, name)
    weight_map = content.get("weight_map") if isinstance(content, dict) else None
    if not isinstance(weight_map, dict):
        raise ValueError(f"{name}: {index} has no weight_map object (a dict of tensor name -> shard file)")
    return weight_map


def _shard(folder: Path, index: Path, file_name, name: str) -> Path:
    """The shard file a weight_map names, refused unless it is a plain name inside the folder."""
    if not isinstance(file_name, str) or not file_name or "\0" in file_name:
        raise ValueError(f"{name}: {index} maps a tensor to {file_name!r}, not a file name")
    relative = Path(file_name)
    if relative.is_absolute() or relative.anchor or ".." in relative.parts:
        raise ValueError(f"{name}: {index} maps a tensor to {file_name!r}, outside the checkpoint folder; refused")
    return folder / relative


def _hf_tied(folder: Path, name: str) -> bool:
    """Whether config.json ties the output layer to the input embedding: its tie_word_embeddings (or its
    text_config's), absent: True (the default of transformers' PretrainedConfig before v5, and of GPT-2's);
    False without a config.json."""
    path = folder / "config.json"
    if not path.is_file():
        return False
    config = _read_json(path, name)
    if not isinstance(config, dict):
        raise ValueError(f"{name}: {path} is not a JSON object")
    text_config = config.get("text_config")
    tied = config.get("tie_word_embeddings",
                      text_config.get("tie_word_embeddings", True) if isinstance(text_config, dict) else True)
    if not isinstance(tied, bool):
        raise ValueError(f"{name}: {path} has tie_word_embeddings {tied!r}; expected true or false")
    return tied


def _hf_key(folder: Path, keys, key: str | None, name: str, key_name: str) -> str:
    """The tensor to read from a checkpoint holding keys: key, or the first output-layer key present; an
    absent output layer tied to the input embedding (config.json) gives the embedding, with a warning."""
    if key is not None and key in keys:
        return key
    if key is None:
        present = [k for k in _HF_WEIGHT_KEYS if k in keys]
        if present:
            return present[0]
    elif key not in _HF_WEIGHT_KEYS:
        raise ValueError(f"{key_name}: {key!r} is not in {folder}; it holds {sorted(keys)[:20]}")
    wanted = repr(key) if key else f"output layer ({', '.join(_HF_WEIGHT_KEYS)})"
    if not _hf_tied(folder, name):
        raise ValueError(f"{key_name}: {folder} has no {wanted}, and no config.json there ties it to the input "
                         f"embedding; name the output layer with {key_name}=")
    embeddings = [k for k in _HF_EMBEDDING_KEYS if k in keys]
    if len(embeddings) != 1:
        raise ValueError(f"{key_name}: {folder} has no {wanted}, and its config.json ties the output layer to the "
                         f"input embedding, but it holds {len(embeddings)} of {_HF_EMBEDDING_KEYS}; "
                         f"name the tensor with {key_name}=")
    warnings.warn(f"{name}: {folder} has no {wanted}; its config.json ties the output layer to the input "
                  f"embedding, so {embeddings[0]!r} is read instead", stacklevel=5)
    return embeddings[0]


def _read_folder(folder: Path, key: str | None, name: str, key_name: str) -> np.ndarray:
    index, single = folder / "model.safetensors.index.json", folder / "model.safetensors"
    if index.is_file():
        weight_map = _weight_map(index, name)
        key = _hf_key(folder, weight_map, key, name, key_name)
        return read_safetensors(_shard(folder, index, weight_map[key], name), key, name, key_name)
    if single.is_file():
        key = _hf_key(folder, _safetensors_keys(single, name), key, name, key_name)
        return read_safetensors(single, key, name, key_name)
    pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(_PICKLE_SUFFIXES))
    if pickles:
        raise ValueError(f"{name}: {folder} holds {pickles[:5]} but no model.safetensors: this checkpoint is a "
                         f"pickle; convert it to safetensors (wolindex never unpickles files), e.g. with "
                         f"model.save_pretrained(folder, safe_serialization=True)")
    raise FileNotFoundError(f"{name}: {folder} has no model.safetensors or model.safetensors.index.json")


def _read(path, key: str | None, name: str, key_name: str) -> np.ndarray:
    """read_tensor, its errors naming the arguments name (the path) and key_name (the key)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a path (str or os.PathLike), got {type(path).__name__}")
    if key is not None and not isinstance(key, str):
        raise TypeError(f"{key_name}: expected a str or None, got {type(key).__name__}")
    path = Path(path)
    if path.is_dir():
        return _read_folder(path, key, name, key_name)
    if not path.exists():
        raise FileNotFoundError(f"{name}: {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return _read_npy(path, name)
    if suffix == ".npz":
        return _read_npz(path, key, name, key_name)
    if suffix == ".safetensors":
        if key is None:
            keys = _safetensors_keys(path, name)
            if len(keys) != 1:
                raise ValueError(f"{key_name}: {path} holds {sorted(keys)[:20]}; name one with {key_name}=")
            key = keys[0]
        return read_safetensors(path, key, name, key_name)
    hint = "; this checkpoint is a pickle; convert it to safetensors" if suffix in _PICKLE_SUFFIXES else ""
    raise ValueError(f"{name}: {path}: expected .npy, .npz, .safetensors or a checkpoint folder{hint}")


def read_tensor(path, key: str | None = None) -> np.ndarray:
    """One array from a .npy, .npz, .safetensors file or a Hugging Face checkpoint folder (.npy and
    .safetensors memory-mapped, BF16 as float32).

    key selects the tensor in .npz / .safetensors / folders (for a folder, default: the first of
    lm_head.weight, output.weight, embed_out.weight, cls.predictions.decoder.weight present). A folder whose
    output layer is absent and tied to the input embedding (config.json's tie_word_embeddings, true when
    absent) gives that embedding (transformer.wte.weight, model.embed_tokens.weight, ...) and a UserWarning
    saying so. Bad or damaged files raise ValueError / TypeError, a missing one FileNotFoundError."""
    return _read(path, key, "path", "key")


def load_layer(weights, weight_key: str | None = None, bias=None, bias_key: str | None = None,
               class_counts=None) -> OutputLayer:
    """An OutputLayer from a weights file (see read_tensor: a tied output layer is read from the input
    embedding, with a UserWarning) and an optional bias file or key.

    bias: a path, an array, or None; with bias=None and bias_key given, the bias is read from the
    same file as the weights."""
    W = _read(weights, weight_key, "weights", "weight_key")
    if bias is None and bias_key is not None:
        bias = weights
    b = _read(bias, bias_key, "bias", "bias_key") if isinstance(bias, (str, os.PathLike)) else bias
    return OutputLayer.from_arrays(W, b, class_counts)
