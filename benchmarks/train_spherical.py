"""A real run of wolindex.train: a spherical-softmax output layer (D = 100,000) trained on debian-lm-100k's
frozen hidden states for next-word prediction, factored (O(d^2) per example) against naive (O(D d)).

    WOLINDEX_DATA=../shared/data python benchmarks/train_spherical.py --threads 2

The factored run trains the whole schedule; the naive run trains the same steps on the first
`--naive-examples` examples only (a whole naive epoch takes hours at batch 1) and its epoch time is that
rate times the epoch length, stated as extrapolated. Hidden states are divided by their mean norm (so the
SGD step size does not depend on the model's scale); the trained layer is mapped back to the raw states.
R_true@k on the validation split comes from a spherical exact index over the trained layer."""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import wolindex
from wolindex.contrib.timing import machine_info, set_threads
from wolindex.contrib.datasets import debian_lm_100k
from wolindex.metrics import true_recall_at_k
from wolindex.training import FactoredLayer, NaiveLayer, sparse_targets

RESULTS = Path(__file__).parent / "results"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--epsilon", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--naive-examples", type=int, default=300)
    ap.add_argument("--n-train", type=int, default=0, help="use only the first n training queries (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    set_threads(a.threads)
    ds = debian_lm_100k()
    H = np.asarray(ds.H_train if not a.n_train else ds.H_train[:a.n_train], np.float32)
    y = np.asarray(ds.y_train[:H.shape[0]], np.int64)
    scale = float(np.linalg.norm(H, axis=1).mean())
    H /= scale
    D, d = ds.n_classes, ds.dim
    rng = np.random.default_rng(a.seed)
    W0 = (rng.standard_normal((D, d)) / np.sqrt(d)).astype(np.float32)
    b0 = np.zeros(D, np.float32)
    ids, vals = sparse_targets(y, None, H.shape[0], D)
    order = np.concatenate([rng.permutation(H.shape[0]) for _ in range(a.epochs)])
    n_steps = -(-H.shape[0] // a.batch)
    report = {"D": D, "d": d, "n_train": int(H.shape[0]), "epochs": a.epochs, "lr": a.lr, "epsilon": a.epsilon,
              "batch": a.batch, "input_scale": scale, "threads": a.threads, "dtype": "float64",
              "machine": machine_info(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def run(layer, n_examples):
        t0, losses = time.perf_counter(), []
        for lo in range(0, n_examples, a.batch):
            rows = order[lo:lo + a.batch]
            losses.append(layer.step(H[rows], ids[rows], vals[rows], a.lr)[0].sum())
        return time.perf_counter() - t0, float(np.sum(losses)) / n_examples

    naive = NaiveLayer(W0, b0, "spherical", a.epsilon)
    naive_s, naive_loss = run(naive, a.naive_examples)
    del naive
    report["naive"] = {"examples": a.naive_examples, "seconds": naive_s, "mean_loss": naive_loss,
                       "epoch_seconds_extrapolated": naive_s / a.naive_examples * H.shape[0]}
    epoch_min = report["naive"]["epoch_seconds_extrapolated"] / 60
    print(f"naive: {a.naive_examples} examples in {naive_s:.1f} s -> epoch ~{epoch_min:.0f} min (extrapolated)")
    fact = FactoredLayer(W0, b0, "spherical", a.epsilon)
    fact_s, fact_loss = run(fact, len(order))
    report["factored"] = {"examples": len(order), "seconds": fact_s, "mean_loss": fact_loss,
                          "epoch_seconds": fact_s / a.epochs, "refactors": fact.refactors, "steps": n_steps * a.epochs}
    print(f"factored: {a.epochs} epoch(s) in {fact_s:.1f} s, mean loss {fact_loss:.3f}, "
          f"{fact.refactors} refactorisations")
    W, b = fact.weights()
    index = wolindex.build((W / scale).astype(np.float32), b.astype(np.float32), scoring="spherical",
                           epsilon=a.epsilon, verbose=False)
    _, labels = index.search(np.asarray(ds.H_test, np.float32), 10)
    report["R_true"] = {f"@{r}": true_recall_at_k(labels, ds.y_test, r) for r in (1, 5, 10)}
    report["softmax_reference"] = ds.reference
    report["speedup_epoch"] = report["naive"]["epoch_seconds_extrapolated"] / report["factored"]["epoch_seconds"]
    print(f"R_true@1 {report['R_true']['@1']:.4f} (softmax layer: {ds.reference['R_true@1']}); "
          f"epoch speedup x{report['speedup_epoch']:.0f}")
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"train-spherical-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
