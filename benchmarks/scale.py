"""Memory and scale: what an index costs in memory, and how the cost per query grows with D.

    WOLINDEX_DATA=../shared/data python benchmarks/scale.py benchmarks/configs/scale.yaml [--layers NAME ...]
        [--methods LABEL ...]
    python benchmarks/scale.py --plot      # only redraw results/scale.png from the result files

Each (layer, method) runs in a process of its own, so its peak resident memory is its own:
- the layer is loaded (or generated: the registry's synthetic generator), a small index of the method is
  built and searched (imports, compiled kernels), W is multiplied once with a few queries (OpenBLAS keeps
  about 60 MiB of per-thread buffers from the first product over a wide matrix on; a model that has run its
  own layer holds them already), and the resident memory then (interpreter, libraries, W, the training
  sample and the held-out queries) is the baseline;
- the build is watched by a thread that samples the process's resident memory every few milliseconds: its
  peak minus the baseline is the build's own memory, reported over W's bytes;
- the index is tuned (Index.tune, P@1 target against exact search) on the first half of the held-out
  queries and measured on the other half: P@1, classes scored per query, and queries/s at batch 1 and 256
  against exact search timed interleaved in the same process (median after warm-up);
- the index is saved, and a fresh process loads it with mmap=True twice (the first load and search warm
  it up): its resident memory (anonymous and file-backed) before the second load, after it, and after one
  search, over W's bytes.
A method entry with `labels: false` is built without the data set's labels (learned methods then train on
each training query's exact top-1); one with `save_to: true` is built straight to its file
(wolindex.build(..., save_to=path): the rows go into the file a block at a time, never into a copy in
memory), and its build peak includes writing the file and loading it back with mmap=True.
One JSON file in benchmarks/results/ (scale-<date>.json), then results/scale.png redrawn: the cost per query
against D of the synthetic layers of one width (the newest row of each layer and method over every result
file), log-log, with sqrt(D) and D slopes drawn.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

RESULTS = Path(__file__).resolve().parent / "results"
SAMPLE_S = 0.005
WARMUP_CLASSES, WARMUP_QUERIES = 4096, 2048   # a small build and search first: imports and compiled kernels
                                               # are not the measured build's or load's memory
WARMUP_PRODUCT = 64                            # then one product of W with this many queries


def rss() -> dict[str, int]:
    """This process's resident bytes: total, anonymous and file-backed (from /proc/self/status)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[{"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}[key]] = int(value.split()[0]) * 1024
    return out


class PeakRss:
    """Samples rss()['rss'] every SAMPLE_S seconds in a thread while the `with` block runs; .peak after."""

    def __enter__(self):
        self.peak = rss()["rss"]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(SAMPLE_S):
            self.peak = max(self.peak, rss()["rss"])

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss()["rss"])


def build_job(job: dict) -> dict:
    """One (layer, method): build with peak memory, tune, measure, save to job['path']."""
    import wolindex
    from wolindex.contrib.datasets import load_dataset
    from wolindex.contrib.timing import compare_speed, set_threads
    from wolindex.metrics import p_at_k

    set_threads(job["threads"])
    k = job["k"]
    base = rss()["rss"]
    ds = load_dataset(job["dataset"], **job.get("options", {}))
    W, b = np.ascontiguousarray(ds.W, np.float32), np.asarray(ds.b, np.float32)
    H_train = np.ascontiguousarray(ds.H_train[:job.get("n_train", len(ds.H_train))], np.float32)
    H_test = np.ascontiguousarray(ds.H_test[:job["n_test"]], np.float32)
    small = slice(0, min(W.shape[0], WARMUP_CLASSES))
    warmup_labels = ds.y_train[:WARMUP_QUERIES] % small.stop if job["labels"] else None   # any ids of the small layer
    wolindex.build(W[small], b[small], method=job["method"], train=H_train[:WARMUP_QUERIES], labels=warmup_labels,
                   class_counts=ds.class_counts[small], verbose=False, **job.get("build", {})).search(H_test[:4], k)
    np.dot(W, H_test[:WARMUP_PRODUCT].T)   # OpenBLAS's per-thread buffers, touched by the first product over a wide W
    data = rss()["rss"]
    t0 = time.perf_counter()
    with PeakRss() as peak:
        train_labels = ds.y_train[:H_train.shape[0]] if job["labels"] else None   # None: the exact top-1
        index = wolindex.build(W, b, method=job["method"], train=H_train, labels=train_labels,
                               class_counts=ds.class_counts, verbose=False,
                               save_to=job["path"] if job["save_to"] else None, **job.get("build", {}))
    build_s = time.perf_counter() - t0
    out = {"D": W.shape[0], "d": W.shape[1], "W_bytes": W.nbytes, "train_bytes": H_train.nbytes,
           "test_bytes": H_test.nbytes, "build_s": build_s, "rss_before_data": base, "rss_with_data": data,
           "build_peak_rss": peak.peak, "build_peak_over_W": (peak.peak - data) / W.nbytes,
           "index_bytes": index.nbytes(), "index_over_W": index.nbytes() / W.nbytes}
    method = index.method
    if hasattr(method, "duplication"):
        out["bucket_entries_per_class"] = method.duplication()
    codes = getattr(method, "screen_codes", None) or getattr(method, "codes", None)
    if codes is not None:
        out["screen_codes_bytes"] = int(codes.nbytes())
        out["index_without_codes_over_W"] = (index.nbytes() - codes.nbytes()) / W.nbytes
    exact = wolindex.build(W, b, verbose=False)
    half = H_test.shape[0] // 2
    H_val, H_eval = H_test[:half], H_test[half:]
    try:
        out["tuned"] = index.tune(H_val, k, target_p1=job["target_p1"], verbose=False)
    except ValueError as err:
        out["tuned"] = {"error": str(err)}
    _, exact_labels = exact.search(H_eval, k)
    _, labels, n_scored = index.search(H_eval, k, return_n_scored=True)
    out.update({"P@1": p_at_k(labels, exact_labels, 1), "P@10": p_at_k(labels, exact_labels, 10),
                "candidates": float(n_scored.mean())})
    for batch, calls in ((1, job["batch1_calls"]), (256, job["batch256_calls"])):
        speed = compare_speed({"exact": lambda H: exact.search(H, k), "index": lambda H: index.search(H, k)},
                              H_eval, batch, calls, warmup=3 if batch == 1 else 1)
        out[f"exact_ms_b{batch}"] = 1e3 * speed["exact"]["median_s"] / batch
        out[f"ms_b{batch}"] = 1e3 * speed["index"]["median_s"] / batch
        out[f"speedup_b{batch}"] = speed["exact"]["median_s"] / speed["index"]["median_s"]
    index.save(job["path"])
    return out


def load_job(job: dict) -> dict:
    """Resident memory of load(mmap=True) of job['path'], before and after one search."""
    import gc

    import wolindex

    wolindex.load(job["path"], mmap=True).search(np.zeros((1, job["d"]), np.float32), job["k"])
    gc.collect()
    before = rss()
    index = wolindex.load(job["path"], mmap=True)
    loaded = rss()
    H = np.random.default_rng(0).standard_normal((1, index.dim)).astype(np.float32)
    index.search(H, job["k"])
    searched = rss()
    W_bytes = index.layer.W.nbytes
    return {"mapped_bytes": index.mapped_nbytes(),
            "load_rss": {"before": before, "loaded": loaded, "searched": searched},
            "load_added_over_W": (loaded["rss"] - before["rss"]) / W_bytes,
            "load_added_anon_over_W": (loaded["anon"] - before["anon"]) / W_bytes,
            "first_search_added_over_W": (searched["rss"] - loaded["rss"]) / W_bytes}


def run_child(kind: str, job: dict) -> dict:
    """Run build_job or load_job in a fresh Python process; its result, or {'error': ...}."""
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(job)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path, nargs="?")
    ap.add_argument("--layers", nargs="*", help="only the layers of the config with these names")
    ap.add_argument("--methods", nargs="*", help="only the methods of the config with these labels")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--plot", action="store_true", help="only redraw scale.png from the result files in --out")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.plot:
        print(f"drew {plot(a.out)}")
        return
    if a.child:
        kind, job = a.child
        result = (build_job if kind == "build" else load_job)(json.loads(job))
        print(json.dumps(result, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
        return
    from wolindex.contrib.timing import machine_info, set_threads

    cfg = yaml.safe_load(a.config.read_text())
    set_threads(cfg["threads"])
    rows = []
    with tempfile.TemporaryDirectory(dir=cfg.get("tmp")) as tmp:
        for layer in cfg["layers"]:
            if a.layers and layer["name"] not in a.layers:
                continue
            for spec in cfg["methods"]:
                if ("layers" in spec and layer["name"] not in spec["layers"]) or \
                        (a.methods and spec.get("label", spec["method"]) not in a.methods):
                    continue
                job = {**{key: cfg[key] for key in ("threads", "k", "target_p1", "batch1_calls", "batch256_calls")},
                       **{key: layer[key] for key in ("dataset", "n_test") if key in layer},
                       "options": layer.get("options", {}), "n_train": layer.get("n_train", 10 ** 9),
                       "method": spec["method"], "build": spec.get("build", {}), "labels": spec.get("labels", True),
                       "save_to": spec.get("save_to", False),
                       "path": os.path.join(tmp, f"{layer['name']}-{spec.get('label', spec['method'])}"
                                            .replace(" ", "-"))}
                t0 = time.perf_counter()
                row = {"layer": layer["name"], "label": spec.get("label", spec["method"]), **spec,
                       **run_child("build", job)}
                if "error" not in row:
                    row.update(run_child("load", {**job, "d": row["d"]}))
                row["wall_s"] = time.perf_counter() - t0
                print(json.dumps({key: row.get(key) for key in ("layer", "label", "build_s", "build_peak_over_W",
                                                                 "index_over_W", "P@1", "candidates", "speedup_b1",
                                                                 "speedup_b256", "load_added_over_W", "error")}))
                rows.append(row)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"{cfg['name']}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    result = {"config": cfg["name"], "threads": cfg["threads"], "k": cfg["k"], "dtype": "float32",
              "target_p1": cfg["target_p1"], "machine": machine_info(),
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    path.write_text(json.dumps(result, indent=1, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
    print(f"wrote {path}")
    drawn = plot(a.out)
    if drawn:
        print(f"drew {drawn}")


def plot(results: Path = RESULTS, dim: int = 512) -> Path | None:
    """results/scale.png: milliseconds per query at batch 1 against D (the synthetic layers of width dim,
    newest_rows over every result file, those timed on the CPU most of them ran on), each method and exact,
    log-log, with sqrt(D) and D slopes through exact's first point. None when fewer than two such D have
    been measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from report import newest_rows

    found = [(r, path) for (layer, _), (r, path) in newest_rows(results).items()
             if r.get("d") == dim and layer.startswith("synthetic") and "ms_b1" in r]
    cpus = [json.loads(path.read_text())["machine"]["cpu"] for _, path in found]
    cpu = max(set(cpus), key=cpus.count)          # times from one kind of CPU only
    found = [(r, path) for (r, path), c in zip(found, cpus) if c == cpu]
    rows = [r for r, _ in found]
    if len({r["D"] for r in rows}) < 2:
        return None
    targets = sorted({json.loads(path.read_text())["target_p1"] for _, path in found})
    fig, ax = plt.subplots(figsize=(6, 4.5))
    exact = sorted({r["D"]: r["exact_ms_b1"] for r in rows}.items())
    ax.plot(*zip(*exact), "k-o", label="exact")
    for label in dict.fromkeys(r["label"] for r in rows):
        pts = sorted((r["D"], r["ms_b1"]) for r in rows if r["label"] == label)
        ax.plot(*zip(*pts), "-o", label=label)
    D0, ms0 = exact[0]
    Ds = np.array([D0, max(D for D, _ in exact)], float)
    ax.plot(Ds, ms0 * Ds / D0, "k:", lw=1, label="slope D")
    ax.plot(Ds, ms0 * np.sqrt(Ds / D0) / 10, "k--", lw=1, label="slope sqrt(D)")
    ax.set(xscale="log", yscale="log", xlabel="classes D", ylabel="ms per query (batch 1)",
           title=f"synthetic layers, d = {dim}, each tuned to P@1 >= {' / '.join(map(str, targets))}\n{cpu}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = results / "scale.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
