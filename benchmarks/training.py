"""Time per example of sparse-target training: naive O(D d) SGD against the factored O(d^2) update of
Vincent et al. (2015), for D in {1e4, 1e5, 2e5, 1e6} and d in {128, 256, 512}, batch 1 (the paper's
setting), float32, one target per example.

    python benchmarks/training.py --threads 2
    python benchmarks/training.py --plot benchmarks/results/training-*.json   # redraw plot and table

Each cell: warm-up steps, then the wall time of `naive_steps` naive and `factored_steps` factored steps
(condition-number checks and any refactorisation included), divided by the step count. The paper predicts a
speedup of D / (4 d); the issue asks for at least D / (8 d) at D = 2e5, d = 512."""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from wolindex.contrib.timing import machine_info, set_threads
from wolindex.training import FactoredLayer, NaiveLayer
from report import training_block

RESULTS = Path(__file__).parent / "results"


def time_steps(layer, H, ids, y, lr, n_steps: int, warmup: int) -> float:
    """Seconds per example over n_steps single-example steps, after warmup steps."""
    for i in range(warmup):
        layer.step(H[i:i + 1], ids[i:i + 1], y[i:i + 1], lr)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + n_steps):
        layer.step(H[i:i + 1], ids[i:i + 1], y[i:i + 1], lr)
    return (time.perf_counter() - t0) / n_steps


def measure(D: int, d: int, loss: str, naive_steps: int, factored_steps: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    W = (rng.standard_normal((D, d), np.float32) / np.sqrt(d)).astype(np.float32)
    b = np.zeros(D, np.float32)
    n = 2 + max(naive_steps, factored_steps)
    H = rng.standard_normal((n, d), np.float32)
    ids = rng.integers(0, D, (n, 1))
    y = np.ones((n, 1))
    naive = NaiveLayer(W, b, loss, 1e-3, np.float32)
    naive_s = time_steps(naive, H, ids, y, 1e-3, naive_steps, 2)
    del naive
    fact = FactoredLayer(W, b, loss, 1e-3, np.float32)
    fact_s = time_steps(fact, H, ids, y, 1e-3, factored_steps, 2)
    return {"D": D, "d": d, "loss": loss, "naive_s_per_example": naive_s, "factored_s_per_example": fact_s,
            "speedup": naive_s / fact_s, "predicted_speedup": D / (4 * d), "required_speedup": D / (8 * d),
            "naive_steps": naive_steps, "factored_steps": factored_steps, "refactors": fact.refactors}


def plot(path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    result = json.loads(path.read_text())
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for d in sorted({r["d"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["d"] == d]
        Ds = [r["D"] for r in rows]
        line, = ax.plot(Ds, [r["speedup"] for r in rows], "o-", label=f"measured, d={d}")
        ax.plot(Ds, [r["predicted_speedup"] for r in rows], "--", color=line.get_color(), alpha=0.6,
                label=f"predicted D/(4d), d={d}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("D (classes)")
    ax.set_ylabel("speedup of the factored update over naive")
    ax.set_title(f"{result['loss']} loss, batch 1, float32, {result['threads']} threads")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    out = path.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 200_000, 1_000_000])
    ap.add_argument("--dims", type=int, nargs="*", default=[128, 256, 512])
    ap.add_argument("--loss", default="spherical")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--factored-steps", type=int, default=300)
    ap.add_argument("--naive-work", type=float, default=2e9,
                    help="naive steps per cell: about this many multiply-adds in all (at least 3 steps)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--plot", type=Path, help="only draw the plot of this result file")
    a = ap.parse_args(argv)
    if a.plot:
        print(f"wrote {plot(a.plot)}")
        return
    set_threads(a.threads)
    rows = []
    for D in a.sizes:
        for d in a.dims:
            naive_steps = max(3, int(a.naive_work / (3 * D * d)))
            row = measure(D, d, a.loss, naive_steps, a.factored_steps)
            print(f"D={D:>9,} d={d:>3}: naive {row['naive_s_per_example'] * 1e3:9.3f} ms  factored "
                  f"{row['factored_s_per_example'] * 1e3:7.3f} ms  x{row['speedup']:8.1f}  "
                  f"(predicted x{row['predicted_speedup']:.1f}, required x{row['required_speedup']:.1f})", flush=True)
            rows.append(row)
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"training-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"loss": a.loss, "threads": a.threads, "dtype": "float32", "batch": 1,
                                "machine": machine_info(), "rows": rows,
                                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}, indent=1))
    print(training_block(path))
    print(f"wrote {path} and {plot(path)}")


if __name__ == "__main__":
    main()
