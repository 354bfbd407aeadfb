"""Index files: meta.json plus one .npy per array, in a folder or in one uncompressed zip.

Writes are atomic (a temporary sibling is renamed into place) and replace only what is itself a wolindex
index. Loading parses JSON and .npy headers only, never unpickles or imports anything named by the file,
checks meta.json's fields and SHA-256 and every array's dtype, shape and SHA-256, and can memory-map the
arrays (also inside the zip, whose members are stored uncompressed).

This module knows files, arrays and the output layer only; assembling an Index from them (and back) is
index.py's (Index.save, wolindex.load)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import struct
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._version import __version__
from .arrays import all_blocks, all_finite
from .layer import OutputLayer, check_scoring
from .rows import ROW_DTYPES, STORAGE, finite_values

FORMAT = "wolindex-index"
FORMAT_VERSION = 3   # 2: meta.json carries meta_sha256; 3: and row_dtype (written only for 16-bit rows, see _meta_of)
META = "meta.json"
MAX_META_BYTES = 64 << 20
_ZIP_SUFFIXES = (".zip", ".wol")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_CHUNK = 1 << 20
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class _HashingWriter:
    """File-like wrapper that hashes what passes through it."""

    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)


def layer_fingerprint(layer: OutputLayer, block: int = 1 << 24) -> str:
    """SHA-256 over the layer's W, b and class_counts bytes in class order, whatever order its rows are stored
    in (identifies the layer an index was built on); W hashed a block of rows at a time."""
    sha = hashlib.sha256()
    rows = max(1, block // (4 * layer.dim))
    for lo in range(0, layer.n_classes, rows):
        part = slice(lo, lo + rows) if layer.class_row is None else layer.class_row[lo:lo + rows]
        sha.update(np.ascontiguousarray(layer.W[part]).data)
    sha.update(np.ascontiguousarray(layer.class_b()).data)
    if layer.class_counts is not None:
        sha.update(np.ascontiguousarray(layer.class_counts).data)
    return sha.hexdigest()


def _check_array_names(arrays: dict[str, np.ndarray]) -> None:
    for name, a in arrays.items():
        if not _NAME.match(name) or a.dtype.hasobject:
            raise ValueError(f"array {name!r}: names must match {_NAME.pattern} and dtypes hold no objects")


def meta_checksum(meta: dict) -> str:
    """SHA-256 of meta.json's content (every field but meta_sha256, as canonical JSON)."""
    body = {key: value for key, value in meta.items() if key != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _meta_of(fields: dict, entries: dict) -> dict:
    """meta.json's content; an index of float32 rows is written as version 2, which older readers read too."""
    version = FORMAT_VERSION if fields.get("row_dtype", "float32") != "float32" else 2
    meta = {"format": FORMAT, "format_version": version, "library_version": __version__, **fields,
            "arrays": entries}
    return {**meta, "meta_sha256": meta_checksum(meta)}


@dataclass(frozen=True)
class ArrayInBlocks:
    """An array that write_index writes a block of rows at a time and never holds whole: its shape, dtype, and
    blocks(), which yields (lo, rows lo:lo + n) of it in order (the same bytes a .npy of the array holds)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    blocks: Callable[[], Iterator[tuple[int, np.ndarray]]]


def _write_npy(f, a: np.ndarray | ArrayInBlocks) -> str:
    w = _HashingWriter(f)
    if not isinstance(a, ArrayInBlocks):
        np.lib.format.write_array(w, np.ascontiguousarray(a), allow_pickle=False)
        return w.sha.hexdigest()
    header = {"descr": np.lib.format.dtype_to_descr(a.dtype), "fortran_order": False, "shape": tuple(a.shape)}
    np.lib.format.write_array_header_1_0(w, header)
    rows = 0
    for lo, part in a.blocks():
        if lo != rows or part.dtype != a.dtype or part.shape[1:] != tuple(a.shape[1:]):
            raise ValueError(f"blocks: expected rows from {rows} of {a.dtype} {tuple(a.shape)}, got rows from {lo} "
                             f"of {part.dtype} {part.shape}")
        w.write(np.ascontiguousarray(part).data)
        rows += len(part)
        del part                     # before the next block is made: one block in memory at a time
    if rows != a.shape[0]:
        raise ValueError(f"blocks: gave {rows} of {a.shape[0]} rows")
    return w.sha.hexdigest()


def _entry(a: np.ndarray, sha: str, file: str) -> dict:
    return {"file": file, "dtype": a.dtype.str, "shape": list(a.shape), "sha256": sha}


def _write_folder(tmp: Path, arrays: dict, fields: dict) -> None:
    tmp.mkdir()
    entries = {}
    for name, a in arrays.items():
        with open(tmp / f"{name}.npy", "wb") as f:
            entries[name] = _entry(a, _write_npy(f, a), f"{name}.npy")
            f.flush()
            os.fsync(f.fileno())
    with open(tmp / META, "w") as f:
        json.dump(_meta_of(fields, entries), f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _write_zip(tmp: Path, arrays: dict, fields: dict) -> None:
    entries = {}
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, a in arrays.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                entries[name] = _entry(a, _write_npy(f, a), f"{name}.npy")
        z.writestr(META, json.dumps(_meta_of(fields, entries), indent=1))
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())


def _holds_index(path: Path) -> bool:
    """Whether path is a wolindex index (folder or zip) by its meta.json's format field."""
    try:
        store = _Folder(path) if path.is_dir() else _Zip(path)
        meta = json.loads(store.meta_bytes())
    except (ValueError, OSError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


def check_save_path(path) -> Path:
    """The Path an index can be saved to, or ValueError: a save replaces nothing but a wolindex index of
    the same kind (a zip for .wol / .zip paths, else a folder) or an empty folder, and follows no link."""
    path = Path(path)
    as_zip = path.suffix.lower() in _ZIP_SUFFIXES
    if path.is_symlink():
        raise ValueError(f"path: {path} is a symbolic link; save to the path it points to")
    if not path.exists():
        if not path.parent.is_dir():
            raise ValueError(f"path: the folder {path.parent} does not exist")
        return path
    if as_zip and path.is_dir():
        raise ValueError(f"path: {path} is a folder; an index file (.wol / .zip) would replace it; refusing")
    if not as_zip and not path.is_dir():
        raise ValueError(f"path: {path} is a file; a folder index would replace it; refusing (save to a path "
                         f"ending in .wol for a single-file index)")
    if not _holds_index(path) and not (path.is_dir() and not any(path.iterdir())):
        kind = "folder" if path.is_dir() else "file"
        raise ValueError(f"path: {path} is a {kind} that is not a wolindex index; refusing to overwrite it")
    return path


_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?:(?P<pid>\d+)-)?[0-9a-f]{12}$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _remove_leftovers(path: Path) -> None:
    """Remove the temporaries of earlier saves of `path` that were killed (their process is gone)."""
    for entry in path.parent.iterdir():
        m = _LEFTOVER.match(entry.name)
        if m is None or m["name"] != path.name:
            continue
        if m["pid"] is not None and (int(m["pid"]) == os.getpid() or _alive(int(m["pid"]))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _sibling(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def write_index(path, arrays: dict[str, np.ndarray | ArrayInBlocks], fields: dict) -> None:
    """Write `arrays` (each an array or an ArrayInBlocks) and meta.json (format fields, then `fields`, then the
    array entries and the checksum) to `path` atomically: a zip if path ends in .zip / .wol, else a folder.

    Only a wolindex index of the same kind, or an empty folder, is replaced (see check_save_path);
    temporaries of earlier killed saves of `path` are removed."""
    path = check_save_path(path)
    _check_array_names(arrays)
    tmp = _sibling(path, "tmp")
    as_zip = path.suffix.lower() in _ZIP_SUFFIXES
    try:
        (_write_zip if as_zip else _write_folder)(tmp, arrays, fields)
        if as_zip or not path.exists():
            os.replace(tmp, path)
        else:
            old = _sibling(path, "old")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()
    _remove_leftovers(path)


class _Folder:
    def __init__(self, path: Path):
        self.path = path

    def meta_bytes(self) -> bytes:
        meta = self.path / META
        if not meta.is_file():
            raise ValueError(f"path: {self.path} is not a wolindex index (no {META})")
        if meta.stat().st_size > MAX_META_BYTES:
            raise ValueError(f"path: {self.path}: {META} is larger than {MAX_META_BYTES} bytes")
        return meta.read_bytes()

    def open_npy(self, file: str) -> tuple[str, int, int]:
        """(os path, offset of the .npy inside it, its length)."""
        p = self.path / file
        if not p.is_file():
            raise ValueError(f"{self.path}: array file {file} is missing")
        return str(p), 0, p.stat().st_size


class _Zip:
    def __init__(self, path: Path):
        self.path = path
        try:
            with zipfile.ZipFile(path) as z:
                self.members = {i.filename: i for i in z.infolist()}
        except (zipfile.BadZipFile, OSError) as err:
            raise ValueError(f"path: {path} is not a readable wolindex index ({err})") from None

    def meta_bytes(self) -> bytes:
        info = self.members.get(META)
        if info is None:
            raise ValueError(f"path: {self.path} is not a wolindex index (no {META} inside)")
        if info.compress_type != zipfile.ZIP_STORED or max(info.file_size, info.compress_size) > MAX_META_BYTES:
            raise ValueError(f"path: {self.path}: {META} must be stored uncompressed and at most "
                             f"{MAX_META_BYTES} bytes")
        try:
            with zipfile.ZipFile(self.path) as z:
                return z.read(META)
        except (zipfile.BadZipFile, OSError) as err:
            raise ValueError(f"path: {self.path} is not a readable wolindex index ({err})") from None

    def open_npy(self, file: str) -> tuple[str, int, int]:
        info = self.members.get(file)
        if info is None:
            raise ValueError(f"{self.path}: array file {file} is missing")
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(f"{self.path}: member {file} is compressed; index zips store members uncompressed")
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"{self.path}: member {file} has a damaged local header")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        return str(self.path), info.header_offset + 30 + name_len + extra_len, info.file_size


def _sha256_of(path: str, offset: int, length: int) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left > 0:
            chunk = f.read(min(_CHUNK, left))
            if not chunk:
                break
            sha.update(chunk)
            left -= len(chunk)
    return sha.hexdigest()


def _read_array(where: str, offset: int, length: int, entry: dict, mmap: bool, name: str) -> np.ndarray:
    with open(where, "rb") as f:
        f.seek(offset)
        try:
            version = np.lib.format.read_magic(f)
            read_header = _NPY_HEADER_READERS.get(version)
            if read_header is None:
                raise ValueError(f".npy version {version} is not supported")
            shape, fortran, dtype = read_header(f)
        except ValueError as err:
            raise ValueError(f"array {name}: not a valid .npy ({err})") from None
        data_offset = f.tell()
    if dtype.hasobject or fortran:
        raise ValueError(f"array {name}: object or Fortran-ordered arrays are not allowed in an index")
    if dtype.str != entry["dtype"] or list(shape) != entry["shape"]:
        raise ValueError(f"array {name}: file holds {dtype.str} {list(shape)}, meta.json says "
                         f"{entry['dtype']} {entry['shape']}")
    nbytes = dtype.itemsize * math.prod(shape)
    if data_offset - offset + nbytes != length or offset + length > os.path.getsize(where):
        raise ValueError(f"array {name}: truncated or padded file")
    if mmap:
        return np.memmap(where, dtype=dtype, mode="r", offset=data_offset, shape=tuple(shape))
    with open(where, "rb") as f:
        f.seek(data_offset)
        return np.fromfile(f, dtype=dtype, count=int(np.prod(shape, dtype=np.int64))).reshape(shape)


_META_FIELDS = {"method": str, "build_params": dict, "default_search": dict, "method_state": dict, "info": dict,
                "n_classes": int, "dim": int, "arrays": dict}
_ENTRY_FIELDS = {"file": str, "dtype": str, "shape": list, "sha256": str}


def _read_meta(store, path: Path, verify: bool) -> dict:
    """meta.json parsed, its format, version, checksum (version >= 2, when verify) and field types checked."""
    try:
        meta = json.loads(store.meta_bytes())
        checksum = meta_checksum(meta) if isinstance(meta, dict) else None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"path: {path}: {META} is not valid JSON ({type(err).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"path: {path} is not a wolindex index (format field is not {FORMAT!r})")
    version = meta.get("format_version")
    if type(version) is not int or not 1 <= version <= FORMAT_VERSION:
        raise ValueError(f"path: {path} has format version {version!r}; this wolindex ({__version__}) "
                         f"reads versions 1..{FORMAT_VERSION}")
    if verify and version >= 2 and meta.get("meta_sha256") != checksum:
        raise ValueError(f"path: {path}: checksum mismatch in {META} (file damaged or altered)")
    _check_fields(meta, _META_FIELDS, path, META)
    for name, entry in meta["arrays"].items():
        if not isinstance(entry, dict):
            raise ValueError(f"path: {path}: bad array entry {name!r} in {META}")
        _check_fields(entry, _ENTRY_FIELDS, path, f"{META} arrays.{name}")
        if not all(type(n) is int and 0 <= n < 2 ** 62 for n in entry["shape"]):
            raise ValueError(f"path: {path}: bad shape {entry['shape']!r} for array {name!r} in {META}")
    for name in ("n_classes", "dim"):
        if not 1 <= meta[name] < 2 ** 62:
            raise ValueError(f"path: {path}: {name} in {META} must be a positive int, got {meta[name]}")
    if meta.get("layer", "included") not in ("included", "external"):
        raise ValueError(f"path: {path}: layer in {META} must be 'included' or 'external'")
    if meta.get("row_dtype", "float32") not in ROW_DTYPES:
        raise ValueError(f"path: {path}: row_dtype in {META} must be one of {ROW_DTYPES}")
    return meta


def _check_fields(d: dict, fields: dict, path: Path, where: str) -> None:
    for name, kind in fields.items():
        if name not in d:
            raise ValueError(f"path: {path}: {where} lacks the field {name!r}")
        if not isinstance(d[name], kind) or isinstance(d[name], bool):
            raise ValueError(f"path: {path}: field {name!r} of {where} must be of type {kind.__name__}, "
                             f"got {type(d[name]).__name__}")


def open_store(path) -> _Folder | _Zip:
    """The index folder or zip at path; FileNotFoundError when there is none."""
    path = Path(path)
    if path.is_dir():
        return _Folder(path)
    if path.is_file():
        return _Zip(path)
    raise FileNotFoundError(f"path: {path} does not exist")


def read_meta(store: _Folder | _Zip, verify: bool = True) -> dict:
    """The store's meta.json, parsed and checked (see _read_meta)."""
    return _read_meta(store, store.path, verify)


def read_arrays(store: _Folder | _Zip, meta: dict, mmap: bool = False, verify: bool = True) -> dict[str, np.ndarray]:
    """Every array meta.json lists, by name: its dtype, shape and (when verify) SHA-256 checked; memory-mapped
    read-only when mmap."""
    path = store.path
    arrays = {}
    for name, entry in meta["arrays"].items():
        if not _NAME.match(name) or entry.get("file") != f"{name}.npy":
            raise ValueError(f"path: {path}: bad array entry {name!r} in {META}")
        where, offset, length = store.open_npy(entry["file"])
        if verify and _sha256_of(where, offset, length) != entry["sha256"]:
            raise ValueError(f"path: {path}: checksum mismatch in {entry['file']} (file damaged or altered)")
        arrays[name] = _read_array(where, offset, length, entry, mmap, name)
    return arrays


def read_layer(arrays: dict, meta: dict, path, verify: bool, layer: OutputLayer | None = None) -> OutputLayer:
    """The index's OutputLayer: from its own arrays, or `layer` (checked against meta) for an index saved
    without it."""
    path = Path(path)
    if meta.get("layer", "included") == "external":
        return _external_layer(layer, arrays, meta, path, verify)
    if layer is not None:
        raise ValueError(f"layer: {path} holds its own layer; pass layer only for indexes saved with_layer=False")
    return _layer_of(arrays, meta, path)


def _layer_of(arrays: dict, meta: dict, path: Path) -> OutputLayer:
    D, d = meta["n_classes"], meta["dim"]
    W, b = arrays.get("layer.W"), arrays.get("layer.b")
    counts = arrays.get("layer.class_counts")
    rows = meta.get("row_dtype", "float32")
    if W is None or b is None or STORAGE.get(W.dtype) != rows or W.shape != (D, d) or b.dtype != np.float32 \
            or b.shape != (D,) or (counts is not None and (counts.dtype != np.int64 or counts.shape != (D,))):
        raise ValueError(f"path: {path}: the layer arrays do not match n_classes={D}, dim={d}, row_dtype={rows}")
    if not (all_blocks(W, finite_values) and all_finite(b)):
        raise ValueError(f"path: {path}: the layer's W or b holds NaN or Inf")
    if counts is not None and counts.min() < 0:
        raise ValueError(f"path: {path}: the layer's class_counts holds negative counts")
    scoring, epsilon = meta.get("scoring", "logit"), meta.get("epsilon", 0.0)
    check_scoring(scoring, epsilon)
    return OutputLayer(W, b, counts, scoring, epsilon, _row_class(arrays, D, path))


def _row_class(arrays: dict, n_classes: int, path: Path) -> np.ndarray | None:
    """The layer's checked row order (a permutation of [0, n_classes)), or None when rows are in class order."""
    order = arrays.get("layer.row_class")
    if order is None:
        return None
    if order.dtype != np.int32 or order.shape != (n_classes,) or order.min() < 0 or order.max() >= n_classes \
            or np.bincount(order, minlength=n_classes).max() != 1:
        raise ValueError(f"path: {path}: layer.row_class must be an int32 permutation of [0, {n_classes})")
    return np.ascontiguousarray(order)


def _external_layer(layer, arrays: dict, meta: dict, path: Path, verify: bool) -> OutputLayer:
    if not isinstance(layer, OutputLayer):
        raise ValueError(f"layer: {path} was saved without its layer; pass the OutputLayer it was built on "
                         f"(wolindex.OutputLayer.from_arrays(W, b, class_counts))")
    if layer.n_classes != meta["n_classes"] or layer.dim != meta["dim"] or layer.scoring != meta.get("scoring") \
            or layer.epsilon != meta.get("epsilon"):
        raise ValueError(f"layer: expected D={meta['n_classes']}, d={meta['dim']}, scoring={meta.get('scoring')!r}, "
                         f"epsilon={meta.get('epsilon')} as in {path}, got D={layer.n_classes}, d={layer.dim}, "
                         f"scoring={layer.scoring!r}, epsilon={layer.epsilon}")
    layer = layer.stored_as(meta.get("row_dtype", "float32"))
    if verify and layer_fingerprint(layer) != meta.get("layer_sha256"):
        raise ValueError(f"layer: not the layer {path} was built on (SHA-256 of W, b, class_counts differs)")
    order = _row_class(arrays, meta["n_classes"], path)
    return layer if order is None else layer.in_class_order().permuted(order)
