"""Command line: wolindex demo | build | search | info."""
from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np


def _settings(pairs: list[str]) -> dict:
    """['n_probe=2', 'engine=numpy'] -> {'n_probe': 2, 'engine': 'numpy'} (values parsed as JSON if they can be)."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set: expected key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _demo(a):
    from .contrib.demo import run_demo

    run_demo(data=a.data, threads=a.threads, n_queries=a.queries, methods=a.methods, target_p1=a.target_p1)


def _build(a):
    from . import build, load_layer, read_tensor
    from .format import check_save_path

    check_save_path(a.out)
    settings = _settings(a.set)
    layer = load_layer(a.weights, a.weight_key, bias=a.bias, bias_key=a.bias_key)
    train = read_tensor(a.train) if a.train else None
    labels = read_tensor(a.labels) if a.labels else None
    index = build(layer, method=a.method, train=train, labels=labels, save_to=a.out, **settings)
    print(json.dumps(index.stats(), indent=1))


def _search(a):
    from . import load, read_tensor

    index = load(a.index, mmap=True)
    scores, labels, n_scored = index.search(read_tensor(a.queries, a.queries_key), a.k, return_n_scored=True,
                                            **_settings(a.set))
    if a.out:
        _save_results(Path(a.out), scores=scores, labels=labels, n_scored=n_scored)
    else:
        for row_s, row_l in zip(scores[:20], labels[:20]):
            print(" ".join(f"{lab}:{sc:.4f}" for sc, lab in zip(row_s, row_l)))
        if len(scores) > 20:
            print(f"... {len(scores) - 20} more rows (use --out to save them all)")


_RESULT_FILES = {"scores.npy", "labels.npy", "n_scored.npy"}


def _save_results(out: Path, **arrays) -> None:
    """Write arrays to the .npz `out` atomically, replacing only an earlier result file of this command."""
    if out.suffix != ".npz" or out.name == ".npz":
        raise ValueError(f"--out: expected a file name ending in .npz, got {str(out)!r}")
    if out.is_symlink() or out.is_dir():
        raise ValueError(f"--out: {out} is a folder or a link; refusing to replace it")
    if out.exists():
        try:
            with zipfile.ZipFile(out) as z:
                ours = set(z.namelist()) <= _RESULT_FILES
        except (zipfile.BadZipFile, OSError):
            ours = False
        if not ours:
            raise ValueError(f"--out: {out} exists and is not a result file of wolindex search; refusing to replace it")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _info(a):
    from . import load

    print(json.dumps(load(a.index, mmap=True).stats(), indent=1))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="wolindex", description="Fast top-k for wide output layers.")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="build and tune every method, print accuracy / speed against exact search")
    d.add_argument("--data", choices=["debian-lm-100k", "debian-cbow", "synthetic"], default=None,
                   help="default: debian-lm-100k when WOLINDEX_DATA has it, else debian-cbow (built once when "
                        "apt-get and gensim are there), else synthetic")
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--queries", type=int, default=2048, help="held-out queries measured on")
    d.add_argument("--target-p1", type=float, default=0.95, help="P@1 each approximate method is tuned to")
    d.add_argument("--methods", nargs="*", default=None,
                   help="methods to build besides exact (default: the FAISS baselines)")
    d.set_defaults(run=_demo)

    b = sub.add_parser("build", help="build an index from a weights file")
    b.add_argument("weights", help=".npy / .npz / .safetensors file or Hugging Face checkpoint folder")
    b.add_argument("out", help="index path: a folder, or a single file ending in .wol or .zip")
    b.add_argument("--weight-key", default=None)
    b.add_argument("--bias", default=None, help="bias file (default: none, or --bias-key in the weights file)")
    b.add_argument("--bias-key", default=None)
    b.add_argument("--method", default="exact")
    b.add_argument("--train", default=None, help=".npy of training hidden states (N, d)")
    b.add_argument("--labels", default=None, help=".npy of their true labels (N,)")
    b.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="build settings")
    b.set_defaults(run=_build)

    s = sub.add_parser("search", help="search an index with queries from a file")
    s.add_argument("index")
    s.add_argument("queries", help=".npy / .npz / .safetensors of (N, d) hidden states")
    s.add_argument("--queries-key", default=None)
    s.add_argument("-k", type=int, default=10)
    s.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="search settings")
    s.add_argument("--out", default=None, help="write scores / labels / n_scored to this .npz")
    s.set_defaults(run=_search)

    i = sub.add_parser("info", help="print an index's stats")
    i.add_argument("index")
    i.set_defaults(run=_info)

    a = p.parse_args(argv)
    try:
        a.run(a)
    except (ValueError, TypeError, OSError, ImportError) as err:
        print(f"wolindex {a.command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
