"""The GPU benchmark: exact search (cuBLAS GEMM + selection kernel) against each method's GPU search at batch
1, 64, 1024 and 4096, with class rows in float32 and bfloat16; speedups from the same run.

    WOLINDEX_DATA=../shared/data python benchmarks/gpu_bundle.py gpu-bundle   # on the CPU: pack debian-lm-100k
    python benchmarks/gpu.py --bundle gpu-bundle --out $OUT                    # on the GPU machine, ~5 minutes
    (benchmarks/gpu_device.sh runs the GPU tests and then this, in one call of the device tool)

Layers: debian-lm-100k from the bundle (W, b, 4,096 validation queries with labels, their float32 exact
top-10 from the CPU, and indexes built on the CPU, saved without the layer), and a synthetic D = 10^6,
d = 512 layer (wolindex.contrib.datasets.synthetic, seed 0) generated here, on which adaptive and LSS are built with
the machine's CPUs (SYNTHETIC_BUILDS). P@1 is agreement with the float32 exact top-1; timing: the per-call
median over distinct batches after warm-up, each call ending with a device synchronisation, methods
interleaved with exact (wolindex.tune.compare_speed). --emulate runs everything on the CPU emulator
(tests only, tiny sizes)."""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import wolindex
from wolindex.contrib.timing import compare_speed
from wolindex.contrib.datasets import synthetic
from wolindex.gpu import to_device
from wolindex.metrics import p_at_k, true_recall_at_k

K = 10
BATCHES = (1, 64, 1024, 4096)
CALLS = {1: 100, 64: 50, 1024: 20, 4096: 10}
DTYPES = ("float32", "bfloat16")


def runtime_for(emulate: bool):
    if not emulate:
        from wolindex.gpu.runtime import CupyRuntime

        return CupyRuntime(0)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import tempfile

    import cuda_emulator

    return cuda_emulator.EmulatedRuntime(cuda_emulator.build(Path(tempfile.mkdtemp())))


def accuracy(gpu, rt, H, y, ref_top, settings) -> dict:
    labels = np.concatenate([rt_host(rt, gpu.search(H[i:i + 4096], K, **settings)[1])
                             for i in range(0, H.shape[0], 4096)])
    out = {"P@1": p_at_k(labels, ref_top, 1), f"P@{K}": p_at_k(labels, ref_top, K)}
    if y is not None:
        out["R_true@1"] = true_recall_at_k(labels, y, 1)
    return out


def rt_host(rt, a) -> np.ndarray:
    return a if rt.xp is np else rt.xp.asnumpy(a)


def measure(name: str, exact_index, methods, H_host, y, ref_top, rt, batches, calls, warmup, say) -> list[dict]:
    """Rows for one layer: per dtype, exact and every (label, index, settings) point, timed per batch."""
    rows = []
    H = rt.to_device(H_host)
    for dtype in DTYPES:
        exact = to_device(exact_index, dtype=dtype, runtime=rt)
        points = [("exact", exact, {})]
        for label, index, sweep in methods:
            gpu = to_device(index, dtype=dtype, runtime=rt)
            points += [(label, gpu, settings) for settings in sweep]
        dtype_rows = [{"layer": name, "dtype": dtype, "label": label, "search": settings,
                       **accuracy(gpu, rt, H, y, ref_top, settings)} for label, gpu, settings in points]
        for batch in batches:
            if batch > H.shape[0]:
                continue
            runners = {i: _synced(rt, gpu, settings) for i, (_, gpu, settings) in enumerate(points)}
            speed = compare_speed(runners, H, batch, calls[batch], warmup=warmup)
            for i, row in enumerate(dtype_rows):
                row[f"ms_b{batch}"] = 1e3 * speed[i]["median_s"]
                row[f"speedup_b{batch}"] = speed[0]["median_s"] / speed[i]["median_s"]
        for row in dtype_rows:
            say(f"  {name} {dtype:8s} {row['label']:10s} {json.dumps(row['search']):30s} P@1 {row['P@1']:.4f} "
                + " ".join(f"b{b} {row[f'ms_b{b}']:.3f}ms x{row[f'speedup_b{b}']:.2f}" for b in batches
                           if f"ms_b{b}" in row))
        rows += dtype_rows
    return rows


def _synced(rt, gpu, settings):
    sync = getattr(rt, "synchronize", lambda: None)

    def run(Hb):
        gpu.search(Hb, K, **settings)
        sync()

    return run


def debian_layer(bundle: Path, limit: int | None):
    """(exact index, [(label, index, sweep)], H, y, ref_top) from a bundle written by gpu_bundle.py."""
    settings = json.loads((bundle / "settings.json").read_text())
    W, b = np.load(bundle / "W.npy"), np.load(bundle / "b.npy")
    layer = wolindex.OutputLayer.from_arrays(W, b, np.load(bundle / "class_counts.npy"))
    n = limit or None
    H, y, ref = np.load(bundle / "H.npy")[:n], np.load(bundle / "y.npy")[:n], np.load(bundle / "exact_top.npy")[:n]
    methods = [(name, wolindex.load(bundle / f"{name}.wol", layer=layer), sweep) for name, sweep in settings.items()]
    return wolindex.build(layer, verbose=False), methods, H.astype(np.float32), y, ref


SYNTHETIC_BUILDS = {
    # bound_block=1024: k-means splits of the tail clusters 8x cheaper to build (they only tighten the
    # certified mode's bounds, which is not swept here)
    "adaptive": (dict(bound_block=1024), [{"beat_rank": 1, "margin": m} for m in (3.5, 4.0, 4.5, 5.0)]),
    "lss": (dict(n_tables=2), [{"n_probe": p} for p in (1, 4, 16)]),
}


def synthetic_layer(n_classes: int, dim: int, n_train: int, n_test: int, methods, say):
    """The synthetic layer, its exact index, the given methods built here (SYNTHETIC_BUILDS), queries and
    the exact top-k (on the CPU)."""
    t0 = time.perf_counter()
    ds = synthetic(n_classes=n_classes, dim=dim, n_train=n_train, n_test=n_test, seed=0)
    exact = wolindex.build(ds.W, ds.b, class_counts=ds.class_counts, verbose=False)
    ref = exact.search(ds.H_test, K)[1]
    say(f"synthetic D={n_classes:,} d={dim}: generated and searched exactly in {time.perf_counter() - t0:.0f} s")
    built = []
    for name in methods:
        build, sweep = SYNTHETIC_BUILDS[name]
        if name == "lss":    # k-means of 10^6 rows into more buckets takes minutes
            build = dict(build, n_buckets=max(16, min(1024, n_classes // 64)))
        t0 = time.perf_counter()
        index = wolindex.build(exact.layer, method=name, train=ds.H_train, labels=ds.y_train, verbose=False, **build)
        say(f"  {name} {build} built in {time.perf_counter() - t0:.0f} s")
        built.append((name, index, sweep))
    return exact, built, ds.H_test, ds.y_test, ref


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="folder written by gpu_bundle.py (debian-lm-100k); skipped if absent")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--synthetic", type=int, nargs=2, default=(1_000_000, 512), metavar=("D", "d"))
    ap.add_argument("--synthetic-train", type=int, default=20_000)
    ap.add_argument("--synthetic-methods", nargs="*", default=sorted(SYNTHETIC_BUILDS),
                    choices=sorted(SYNTHETIC_BUILDS))
    ap.add_argument("--queries", type=int, default=4096, help="test queries per layer")
    ap.add_argument("--batches", type=int, nargs="*", default=list(BATCHES))
    ap.add_argument("--calls", type=float, default=1.0, help="scale the timed calls per batch")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per batch before timing")
    ap.add_argument("--emulate", action="store_true", help="CPU emulator instead of CuPy (tests, tiny sizes)")
    a = ap.parse_args(argv)
    rt = runtime_for(a.emulate)
    calls = {b: max(1, int(CALLS.get(b, 10) * a.calls)) for b in a.batches}
    rows, started = [], time.perf_counter()
    if a.bundle and (a.bundle / "settings.json").exists():
        rows += measure("debian-lm-100k", *debian_layer(a.bundle, a.queries), rt, a.batches, calls, a.warmup, print)
    else:
        print(f"no bundle at {a.bundle}: debian-lm-100k skipped")
    exact, methods, H, y, ref = synthetic_layer(*a.synthetic, a.synthetic_train, a.queries, a.synthetic_methods,
                                                print)
    rows += measure(f"synthetic-{a.synthetic[0]}x{a.synthetic[1]}", exact, methods, H, None, ref, rt, a.batches,
                    calls, a.warmup, print)
    result = {"benchmark": "gpu", "k": K, "runtime": rt.name, "device": _device_name(rt),
              "python": platform.python_version(), "seconds": time.perf_counter() - started,
              "timing": f"median per call (search + device synchronise) over distinct batches after {a.warmup} "
                        "warm-up calls, interleaved with exact; speedup = exact median / method median, same dtype",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"gpu-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return path


def _device_name(rt) -> str:
    if rt.xp is np:
        return "CPU emulator"
    props = rt.xp.cuda.runtime.getDeviceProperties(0)
    return props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])


if __name__ == "__main__":
    main()
