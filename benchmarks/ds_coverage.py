"""How many classes a DS index makes each query score, and whether a query could tell when its first expert
missed: the analysis behind the DS section of BENCHMARKS.md.

    WOLINDEX_DATA=../shared/data python benchmarks/ds_coverage.py --index ds-more.wol

--index: a saved DS index of debian-lm-100k; when the file does not exist it is built with
benchmarks/configs/ds-more.yaml's settings (about 32 minutes on 2 cores) and saved there. For each n_probe:
P@1 against the exact top-1, the distinct classes scored per query (the fused path) and the rows scored
counting a class once per probed expert holding it (the grouped path), and the speedup ceiling
D / distinct classes. Then, for the queries whose first expert lacks the exact top-1, the share that falls
among the 30 % of queries with the lowest value of each confidence signal (gate probability and margin,
best exact logit found, gap to the second). Writes benchmarks/results/ds-coverage-<date>.json."""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

import wolindex
from wolindex.contrib.timing import machine_info, set_threads
from wolindex.contrib.datasets import debian_lm_100k
from wolindex.engine import exact_topk

HERE = Path(__file__).parent
ESCALATED = 0.3  # share of queries a confidence signal would send to more experts


def ds_more_index(path: Path, say):
    """The index at path, or one built with ds-more.yaml's DS settings and saved there."""
    if path.exists():
        return wolindex.load(path)
    cfg = yaml.safe_load((HERE / "configs" / "ds-more.yaml").read_text())
    spec = next(m for m in cfg["methods"] if m["method"] == "ds")
    ds = debian_lm_100k(**cfg["datasets"][0]["options"])
    say(f"building {path} with {spec['build']} on {ds.H_train.shape[0]:,} states")
    index = wolindex.build(ds.W, ds.b, method="ds", train=np.ascontiguousarray(ds.H_train, dtype=np.float32),
                           labels=ds.y_train, class_counts=ds.class_counts, **spec["build"])
    index.save(path)
    return index


def first_expert_signals(index, H: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """(N,) confidence signals known after opening the gate's first expert, whose two best exact scores are
    scores (N, 2); larger is more confident."""
    logits = np.sort(index.method.gate.forward(H)[0], axis=1)[:, ::-1]
    p = np.exp(logits - logits[:, :1])
    p /= p.sum(axis=1, keepdims=True)
    return {"gate_probability": p[:, 0], "gate_margin": logits[:, 0] - logits[:, 1],
            "best_logit": scores[:, 0], "best_gap": scores[:, 0] - scores[:, 1]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, required=True)
    ap.add_argument("--n", type=int, default=4096, help="validation queries analysed")
    ap.add_argument("--probes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    set_threads(a.threads)
    index = ds_more_index(a.index, print)
    if index.method_name != "ds":
        raise SystemExit(f"--index: expected a DS index, got method {index.method_name!r}")
    H = np.ascontiguousarray(debian_lm_100k().H_test[:a.n], dtype=np.float32)
    W, b = index.layer.W, index.layer.b
    top1 = exact_topk(W, b, H, 1, labels=index.layer.row_class)[1][:, 0]
    rows = []
    for m in a.probes:
        _, labels, distinct = index.search(H, 1, n_probe=m, path="fused", return_n_scored=True)
        _, _, repeated = index.search(H, 1, n_probe=m, path="grouped", return_n_scored=True)
        rows.append({"n_probe": m, "P@1": float(np.mean(labels[:, 0] == top1)),
                     "distinct_classes": float(distinct.mean()), "rows_with_repeats": float(repeated.mean()),
                     "speedup_ceiling": W.shape[0] / float(distinct.mean())})
        print(json.dumps(rows[-1]))
    first_scores, first_labels = index.search(H, 2, n_probe=1)
    missed = first_labels[:, 0] != top1
    caught = {}
    for name, x in first_expert_signals(index, H, first_scores).items():
        escalated = x <= np.quantile(x, ESCALATED)
        caught[name] = float((missed & escalated).sum() / max(missed.sum(), 1))
    print(f"first expert misses {missed.mean():.4f}; share of them among the {ESCALATED:.0%} least confident:",
          json.dumps(caught))
    a.out.mkdir(parents=True, exist_ok=True)
    out = a.out / f"ds-coverage-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps({"index": str(a.index), "index_state": {k: v for k, v in index.method.state.items()
                                                                      if k != "training"},
                               "n_queries": a.n, "rows": rows, "first_expert_missed": float(missed.mean()),
                               "escalated_share": ESCALATED, "misses_caught": caught,
                               "machine": machine_info(), "date": datetime.now(timezone.utc).isoformat()},
                              indent=1, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
