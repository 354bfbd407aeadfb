"""Pack debian-lm-100k for the GPU benchmark (benchmarks/gpu.py) into one folder small enough to travel to a
GPU machine (about 59 MB): W as stored (float16), b, class counts, 4,096 validation queries with their
labels and float32 exact top-10, and the adaptive and LSS indexes built here with the CPU benchmarks'
settings, saved without the layer.

    WOLINDEX_DATA=../shared/data python benchmarks/gpu_bundle.py gpu-bundle     # about 8 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

import wolindex
from wolindex.contrib.datasets import debian_lm_100k

K = 10
SWEEPS = {"adaptive": [{"beat_rank": 1, "margin": m} for m in (3.0, 5.0, 7.0)],
          "lss": [{"n_probe": p} for p in (6, 10, 16, 24)]}


def write_bundle(out: Path, W_stored: np.ndarray, b: np.ndarray, class_counts: np.ndarray, methods: dict,
                 H_stored: np.ndarray, y: np.ndarray, exact_top: np.ndarray) -> None:
    """methods: name -> (built Index over W_stored's float32 values, its search sweep)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, a in (("W", W_stored), ("b", b), ("class_counts", class_counts), ("H", H_stored), ("y", y),
                    ("exact_top", exact_top)):
        np.save(out / f"{name}.npy", a)
    for name, (index, _) in methods.items():
        index.save(out / f"{name}.wol", with_layer=False)
    (out / "settings.json").write_text(json.dumps({name: sweep for name, (_, sweep) in methods.items()}, indent=1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--queries", type=int, default=4096)
    a = ap.parse_args(argv)
    base, more = debian_lm_100k(), debian_lm_100k(extra_train=1_000_000)
    W, b = np.asarray(base.W, np.float32), np.asarray(base.b, np.float32)
    layer = wolindex.OutputLayer.from_arrays(W, b, base.class_counts)
    H = np.asarray(base.H_test[:a.queries])
    exact_top = wolindex.build(layer, verbose=False).search(H, K)[1]
    adaptive = wolindex.build(layer, method="adaptive", train=base.H_train, labels=base.y_train)
    lss = wolindex.build(layer, method="lss", train=more.H_train, labels=more.y_train)
    write_bundle(a.out, np.asarray(base.W), b, base.class_counts,
                 {"adaptive": (adaptive, SWEEPS["adaptive"]), "lss": (lss, SWEEPS["lss"])},
                 H, np.asarray(base.y_test[:a.queries]), exact_top)
    size = sum(p.stat().st_size for p in a.out.rglob("*") if p.is_file())
    print(f"wrote {a.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
