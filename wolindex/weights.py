"""Reading output-layer weights from files: .npy, .npz, .safetensors and Hugging Face checkpoint folders.

Nothing here executes code from a file: .npy/.npz are read with allow_pickle=False, and safetensors files
are parsed from their JSON header (https://github.com/huggingface/safetensors, format section)."""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from .layer import OutputLayer

_SAFETENSORS_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": np.uint16,
                       "I8": np.int8, "I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8}
_HF_WEIGHT_KEYS = ("lm_head.weight", "output.weight", "embed_out.weight", "cls.predictions.decoder.weight")


def _safetensors_header(path: Path) -> tuple[dict, int]:
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            raise ValueError(f"{path}: not a safetensors file (header length {n})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not a safetensors file ({err})") from None
    header.pop("__metadata__", None)
    return header, 8 + n


def read_safetensors(path, key: str) -> np.ndarray:
    """One tensor of a .safetensors file, memory-mapped; BF16 comes back as float32 (exact)."""
    path = Path(path)
    header, data_start = _safetensors_header(path)
    if key not in header:
        raise ValueError(f"key: {key!r} is not in {path}; it holds {sorted(header)[:20]}")
    entry = header[key]
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
        raise TypeError(f"{path}[{key!r}]: unsupported dtype {entry['dtype']}")
    dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
    begin, end = entry["data_offsets"]
    shape = tuple(entry["shape"])
    if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"{path}[{key!r}]: data_offsets do not match shape {shape} and dtype")
    if data_start + end > os.path.getsize(path):
        raise ValueError(f"{path}: truncated (tensor {key!r} runs past the end of the file)")
    a = np.memmap(path, dtype=dtype, mode="r", offset=data_start + begin, shape=shape)
    if entry["dtype"] == "BF16":
        return (np.asarray(a).astype(np.uint32) << 16).view(np.float32)
    return a


def _hf_folder_file(folder: Path, key: str) -> Path:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        if key not in weight_map:
            raise ValueError(f"key: {key!r} is not in {index}")
        return folder / weight_map[key]
    single = folder / "model.safetensors"
    if single.exists():
        return single
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise ValueError(f"{folder}: only PyTorch pickle checkpoints found; wolindex never unpickles files. "
                         f"Convert them to safetensors first (model.save_pretrained(..., safe_serialization=True)).")
    raise FileNotFoundError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def _hf_default_key(folder: Path) -> str:
    index = folder / "model.safetensors.index.json"
    keys = (json.loads(index.read_text())["weight_map"] if index.exists()
            else _safetensors_header(folder / "model.safetensors")[0])
    for k in _HF_WEIGHT_KEYS:
        if k in keys:
            return k
    raise ValueError(f"key: none of {_HF_WEIGHT_KEYS} is in {folder}; name the output layer with key=")


def read_tensor(path, key: str | None = None) -> np.ndarray:
    """One array from a .npy, .npz, .safetensors file or a Hugging Face checkpoint folder.

    key selects the tensor in .npz / .safetensors / folders (for a folder, default: the first of
    lm_head.weight, output.weight, embed_out.weight, cls.predictions.decoder.weight present)."""
    path = Path(path)
    if path.is_dir():
        key = key or _hf_default_key(path)
        return read_safetensors(_hf_folder_file(path, key), key)
    if not path.exists():
        raise FileNotFoundError(f"path: {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False, mmap_mode="r")
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if key is None:
                if len(z.files) != 1:
                    raise ValueError(f"key: {path} holds {z.files}; name one with key=")
                key = z.files[0]
            if key not in z.files:
                raise ValueError(f"key: {key!r} is not in {path}; it holds {z.files}")
            return z[key]
    if suffix == ".safetensors":
        if key is None:
            keys = list(_safetensors_header(path)[0])
            if len(keys) != 1:
                raise ValueError(f"key: {path} holds {sorted(keys)[:20]}; name one with key=")
            key = keys[0]
        return read_safetensors(path, key)
    raise ValueError(f"path: {path}: expected .npy, .npz, .safetensors or a checkpoint folder")


def load_layer(weights, weight_key: str | None = None, bias=None, bias_key: str | None = None,
               class_counts=None) -> OutputLayer:
    """An OutputLayer from a weights file (see read_tensor) and an optional bias file or key.

    bias: a path, an array, or None; with bias=None and bias_key given, the bias is read from the
    same file as the weights."""
    W = read_tensor(weights, weight_key)
    if bias is None and bias_key is not None:
        bias = weights
    b = read_tensor(bias, bias_key) if isinstance(bias, (str, os.PathLike)) else bias
    return OutputLayer.from_arrays(W, b, class_counts)
