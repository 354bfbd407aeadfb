"""The recall / speed benchmark: build each index once, sweep its search settings, record accuracy and
speed against exact search measured in the same run.

    WOLINDEX_DATA=../shared/data python benchmarks/run.py benchmarks/configs/quick.yaml
    python benchmarks/plot.py benchmarks/results/quick-debian-lm-100k-*.json

For every sweep point: P@1, P@10 (against exact top-10), R_true@1/5/10, classes scored per query,
queries/s at batch 1 and 256 and the speedup over `exact` timed interleaved with it over the same
distinct batches (median per call after warm-up) and, with `timing: {after_layer: true}`, the same with each
call right after a NumPy product like a model's last layer (*_after_layer); build seconds and index bytes;
machine, threads, BLAS kernel and dtype are recorded. One JSON file per data set in benchmarks/results/."""
from __future__ import annotations

import argparse
import itertools
import json
import time
from functools import partial
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

import wolindex
from wolindex.contrib.timing import compare_speed, machine_info, model_layer, set_threads
from wolindex.contrib.datasets import load_dataset
from wolindex.metrics import p_at_k, true_recall_at_k

RESULTS = Path(__file__).parent / "results"
BATCHES = (1, 256)


def sweep_points(sweep: dict | list | None) -> list[dict]:
    """{'n_probe': [1, 4], 'k_factor': [1]} -> [{'n_probe': 1, 'k_factor': 1}, {'n_probe': 4, 'k_factor': 1}];
    a list of such dicts gives the points of each, in order."""
    if not sweep:
        return [{}]
    if isinstance(sweep, list):
        return [point for part in sweep for point in sweep_points(part)]
    keys = list(sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))]


def accuracy(index, H, y, k, exact_labels, settings) -> dict:
    _, labels, n_scored = index.search(H, k, return_n_scored=True, **settings)
    return {"P@1": p_at_k(labels, exact_labels, 1), f"P@{k}": p_at_k(labels, exact_labels, k),
            **{f"R_true@{r}": true_recall_at_k(labels, y, r) for r in (1, 5, 10) if r <= k},
            "candidates": float(np.mean(n_scored))}


def run_dataset(cfg: dict, entry: dict, say) -> dict | None:
    try:
        ds = load_dataset(entry["name"], **entry.get("options", {}))
    except FileNotFoundError as err:
        say(f"skipping {entry['name']}: {err}")
        return None
    k = cfg["k"]
    n_test = entry.get("n_test", len(ds.y_test))
    W = np.ascontiguousarray(ds.W, dtype=np.float32)
    b = np.asarray(ds.b, np.float32)
    H = np.ascontiguousarray(ds.H_test[:n_test], dtype=np.float32)
    y = np.asarray(ds.y_test[:n_test])
    H_train = np.ascontiguousarray(ds.H_train, dtype=np.float32)
    timing = cfg["timing"]
    exact = wolindex.build(W, b, class_counts=ds.class_counts)
    _, exact_labels = exact.search(H, k)
    say(f"{ds.name}: D={W.shape[0]:,}, d={W.shape[1]}, {n_test:,} test queries")
    rows = []
    for spec in cfg["methods"]:
        name = spec["method"]
        if name == "exact" and not spec.get("build"):
            index, build_s = exact, 0.0
        else:
            t0 = time.perf_counter()
            index = wolindex.build(W, b, method=name, train=H_train, labels=ds.y_train, class_counts=ds.class_counts,
                                   verbose=False, **spec.get("build", {}))
            build_s = time.perf_counter() - t0
        points = sweep_points(spec.get("sweep"))
        state = index.method.state  # what the builder recorded: supports, training history, stage times
        method_rows = []
        for settings in tqdm(points, desc=f"{ds.name} {name}", leave=False):
            method_rows.append({"method": name, "label": spec.get("label", name), "build": spec.get("build", {}),
                                "search": settings,
                                "build_s": build_s, "index_bytes": index.nbytes(), "row_dtype": index.layer.row_dtype,
                                "index_over_W": index.nbytes() / W.nbytes, "build_state": state,
                                **accuracy(index, H, y, k, exact_labels, settings)})
        modes = [("", None)] + ([("_after_layer", model_layer(W.shape[1]))] if timing.get("after_layer") else [])
        for (suffix, before), (batch, calls) in itertools.product(
                modes, zip(BATCHES, (timing["batch1_calls"], timing["batch256_calls"]))):
            runners = {"exact": partial(exact.search, k=k)}
            for i, settings in enumerate(points):
                runners[i] = partial(index.search, k=k, **settings)
            speed = compare_speed(runners, H, batch, calls, warmup=1 if batch > 1 else 3, before=before)
            for i, row in enumerate(method_rows):
                row[f"qps_b{batch}{suffix}"] = speed[i]["qps"]
                row[f"exact_qps_b{batch}{suffix}"] = speed["exact"]["qps"]
                row[f"speedup_b{batch}{suffix}"] = speed[i]["qps"] / speed["exact"]["qps"]
        for row in method_rows:
            say(f"  {row['label']:16s} {json.dumps(row['search']):34s} P@1 {row['P@1']:.4f}  "
                f"R@1 {row['R_true@1']:.4f}  "
                f"cand {row['candidates']:9.1f}  x{row['speedup_b1']:6.2f} (b1)  x{row['speedup_b256']:6.2f} (b256)")
        rows.extend(method_rows)
    return {"config": cfg["name"], "dataset": ds.name, "description": ds.description, "n_classes": W.shape[0],
            "dim": W.shape[1], "n_test": n_test, "k": k, "threads": cfg["threads"], "dtype": "float32",
            "timing": {"batches": list(BATCHES), **timing,
                       "protocol": "median per call over distinct batches, each method's sweep points "
                                   "interleaved with exact in 5 rounds, after warm-up calls; *_after_layer: "
                                   "each call right after an untimed NumPy product (batch, d) @ (d, 4d)"},
            "reference": ds.reference, "machine": machine_info(),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}


def _numpy_to_json(x):
    """json.dumps default: NumPy scalars and arrays (in builders' states) as Python numbers and lists."""
    if hasattr(x, "tolist"):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", type=Path)
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder for the result files")
    ap.add_argument("--datasets", nargs="*", help="only these data sets of the config")
    a = ap.parse_args(argv)
    cfg = yaml.safe_load(a.config.read_text())
    set_threads(cfg["threads"])
    a.out.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in cfg["datasets"]:
        if a.datasets and entry["name"] not in a.datasets:
            continue
        result = run_dataset(cfg, entry, say=print)
        if result is None:
            continue
        path = a.out / f"{cfg['name']}-{result['dataset']}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
        path.write_text(json.dumps(result, indent=1, default=_numpy_to_json))
        print(f"wrote {path}")
        written.append(path)
    return written


if __name__ == "__main__":
    main()
