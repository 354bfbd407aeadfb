"""Seeded fuzzing of load_layer: damaged .safetensors / .npz / .npy files end in an OutputLayer or a
ValueError / TypeError, never another exception."""
import io
import json
import struct
import zipfile

import numpy as np
import pytest

import wolindex
from helpers import random_layer

W, b = random_layer(8, 4)
N_CASES = 1000  # per test
# Python's parser warns about junk escapes in a damaged .npy header, which NumPy parses with ast.literal_eval
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::SyntaxWarning")


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def valid_safetensors() -> tuple[dict, bytes]:
    """Header and data of a small valid file: w (8, 4) F32, b (8,) F32, h (8, 4) F16, bf (8, 4) BF16."""
    tensors = {"w": (W, "F32"), "b": (b, "F32"), "h": (W.astype(np.float16), "F16"),
               "bf": ((W.view(np.uint32) >> 16).astype(np.uint16), "BF16")}
    header, data = {"__metadata__": {"format": "np"}}, b""
    for name, (a, dtype) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [len(data), len(data) + a.nbytes]}
        data += a.tobytes()
    return header, data


def npy_bytes(a) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a)
    return buffer.getvalue()


def npz_bytes(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buffer.getvalue()


def junk_value(rng):
    """Something a header field should not hold."""
    choices = [-1, -2 ** 63, 2 ** 64, 10 ** 30, 0, 1.5, float("nan"), "8", "", None, True, [], {}, [[1]], {"a": [1]},
               [0, 8, 16], [-48, 0], "F32" * 50, [2 ** 40, 2 ** 40], int(rng.integers(0, 400))]
    return choices[rng.integers(len(choices))]


def mutate_header(rng, header: dict) -> dict:
    header = json.loads(json.dumps(header))
    for _ in range(rng.integers(1, 4)):
        names = [k for k in header if k != "__metadata__"] or ["w"]
        name = names[rng.integers(len(names))]
        entry = header.get(name)
        op = rng.integers(9)
        if op == 0 or not isinstance(entry, dict):
            header[name] = junk_value(rng)
        elif op == 1:
            entry["dtype"] = ["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "F4", "Q7", "f32",
                              junk_value(rng)][rng.integers(12)]
        elif op == 2:
            entry["shape"] = [[], [32], [4, 8], [8, 4, 1], [0, 4], [16, 2], [-8, -4], [2 ** 63, 2], [2 ** 63, 0],
                              [2 ** 64 - 1, 0], junk_value(rng)][rng.integers(11)]
        elif op == 3:
            offsets = entry.get("data_offsets")
            begin, end = offsets[:2] if isinstance(offsets, list) and len(offsets) >= 2 else (0, 0)
            begin, end = (begin, end) if isinstance(begin, int) and isinstance(end, int) else (0, 0)
            delta = int(rng.choice([-48, -8, -1, 1, 4, 8, 2 ** 32, 2 ** 64]))
            entry["data_offsets"] = [[begin + delta, end], [begin, end + delta], [end, begin], [begin, end + delta, 0],
                                     junk_value(rng)][rng.integers(5)]
        elif op == 4:
            entry.pop(["dtype", "shape", "data_offsets"][rng.integers(3)], None)
        elif op == 5:
            entry[["dtype", "shape", "data_offsets", "junk"][rng.integers(4)]] = junk_value(rng)
        elif op == 6:
            header["__metadata__"] = junk_value(rng) if rng.integers(2) else {"format": junk_value(rng)}
        elif op == 7:
            header[name + "x" if rng.integers(2) else ""] = header.pop(name)
        else:
            header[name] = {"nested": entry}
    return header


def mutate_bytes(rng, raw: bytes) -> bytes:
    raw = bytearray(raw)
    for _ in range(rng.integers(1, 4)):
        op = rng.integers(5)
        at = int(rng.integers(0, len(raw) + 1))
        if op == 0 and raw:
            i = min(at, len(raw) - 1)
            raw[i] ^= 1 << int(rng.integers(8))
        elif op == 1:
            del raw[at:]
        elif op == 2:
            raw += bytes(rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8))
        elif op == 3:
            n = int(rng.integers(1, 16))
            raw[at:at + n] = [bytes(rng.integers(0, 256, n, dtype=np.uint8)), b"\xff" * n, b"\0" * n][rng.integers(3)]
        else:
            raw[at:at] = bytes(rng.integers(0, 256, rng.integers(1, 16), dtype=np.uint8))
    return bytes(raw)


def check_load(path, weight_key, bias_key):
    """load_layer ends in a good OutputLayer or a ValueError / TypeError; anything else is returned."""
    try:
        layer = wolindex.load_layer(path, weight_key, bias_key=bias_key)
    except (ValueError, TypeError):
        return None
    except BaseException as err:  # noqa: B036 - anything else is the finding
        return f"{type(err).__name__}: {err}"
    W_, b_ = layer.W, layer.b
    if not (W_.dtype == np.float32 and W_.ndim == 2 and np.isfinite(W_).all() and b_.dtype == np.float32
            and b_.shape == (W_.shape[0],)):
        return f"bad layer: W {W_.dtype} {W_.shape}, b {b_.dtype} {b_.shape}"
    return None


def run_cases(tmp_path, suffix, make, keys):
    """make(rng) -> (bytes, description); each case loaded with every (weight_key, bias_key) in keys."""
    rng = np.random.default_rng(20240611)
    path = tmp_path / f"m{suffix}"
    failures = []
    for case in range(N_CASES):
        raw, what = make(rng)
        path.write_bytes(raw)
        for weight_key, bias_key in keys:
            found = check_load(path, weight_key, bias_key)
            if found:
                failures.append(f"case {case} ({what}), keys {weight_key}/{bias_key}: {found}")
    assert not failures, "\n".join(failures[:20])


SAFETENSORS_KEYS = [("w", "b"), ("h", None), ("bf", "b"), (None, None)]


def test_fuzz_safetensors_bytes(tmp_path):
    raw = safetensors_bytes(*valid_safetensors())
    run_cases(tmp_path, ".safetensors", lambda rng: (mutate_bytes(rng, raw), "bytes"), SAFETENSORS_KEYS)


def test_fuzz_safetensors_headers(tmp_path):
    header, data = valid_safetensors()

    def make(rng):
        mutated = mutate_header(rng, header)
        raw = safetensors_bytes(mutated, data)
        if rng.integers(4) == 0:
            raw = mutate_bytes(rng, raw)
        return raw, json.dumps(mutated)[:300]

    run_cases(tmp_path, ".safetensors", make, SAFETENSORS_KEYS)


def mutate_npy_header(rng, a) -> bytes:
    """a's .npy with a changed header, its length field kept right (3 times in 4)."""
    raw = npy_bytes(a)
    start, end, data = 10, raw.index(b"}") + 1, raw[raw.index(b"\n") + 1:]
    text = raw[start:end].decode("latin1")
    fields = [("'descr': '<f4'", ["'descr': '|O'", "'descr': '<f8'", "'descr': '>f4'", "'descr': '<f2'",
                                  "'descr': 'V0'", "'descr': '<i8'", "'descr': [('a', '<f4')]", "'descr': '<c8'",
                                  "'descr': 7", "'descr': 'junk'"]),
              ("'fortran_order': False", ["'fortran_order': True", "'fortran_order': 1"]),
              ("'shape': (8, 4)", ["'shape': (4, 8)", "'shape': (32,)", "'shape': (8, 4, 1)", "'shape': (0, 4)",
                                   "'shape': (-8, -4)", f"'shape': ({2 ** 40}, {2 ** 40})",
                                   "'shape': (9999999999999, 0)",
                                   "'shape': (8.0, 4)", "'shape': 'x'", "'shape': (1000000000, 4)",
                                   f"'shape': ({2 ** 70}, 0)", f"'shape': ({2 ** 62}, 0)"]),
              ("'shape': (8,)", ["'shape': (4,)", f"'shape': ({2 ** 62},)"])]
    for old, options in fields:
        if old in text and rng.integers(2):
            text = text.replace(old, options[rng.integers(len(options))])
    header = text.encode("latin1")
    header += b" " * (-(start + len(header) + 1) % 64) + b"\n"
    length = len(header) if rng.integers(4) else len(raw) - len(data) - start
    return raw[:8] + struct.pack("<H", length) + header + data


def test_fuzz_npz(tmp_path):
    members = {"weight.npy": npy_bytes(W), "bias.npy": npy_bytes(b)}

    def make(rng):
        mutated = {name: mutate_npy_header(rng, W if name == "weight.npy" else b) for name in members}
        if rng.integers(3) == 0:
            mutated["weight.npy"] = mutate_bytes(rng, mutated["weight.npy"])
        raw = npz_bytes(mutated, [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                  zipfile.ZIP_LZMA][rng.integers(4)])
        if rng.integers(2):
            raw = mutate_bytes(rng, raw)
        return raw, "npz"

    run_cases(tmp_path, ".npz", make, [("weight", "bias"), ("weight", None), (None, None)])


def test_fuzz_npy(tmp_path):
    def make(rng):
        raw = mutate_npy_header(rng, W)
        return (mutate_bytes(rng, raw) if rng.integers(2) else raw), "npy"

    run_cases(tmp_path, ".npy", make, [(None, None)])


@pytest.mark.parametrize("content", [b"", b"\0" * 8, b"\xff" * 16, struct.pack("<Q", 2) + b"{}",
                                     struct.pack("<Q", 3) + b"[1]", struct.pack("<Q", 2 ** 63) + b"{}"])
def test_tiny_safetensors(tmp_path, content):
    (tmp_path / "m.safetensors").write_bytes(content)
    with pytest.raises(ValueError, match="^weight(s|_key): "):
        wolindex.load_layer(tmp_path / "m.safetensors")
