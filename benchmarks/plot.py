"""Pareto plots of a benchmark result file: P@1 and R_true@1 against the speedup over exact, at batch 1 and
batch 256; one colour per method, its front drawn as a line.

    python benchmarks/plot.py benchmarks/results/quick-debian-lm-100k-*.json   # writes a .png beside it
    python benchmarks/plot.py A.json --with B.json --methods faiss-ivf faiss-hnsw  # B's fronts drawn too

Speedups are ratios to exact search measured within each file's own run, so fronts from another run of
the same configuration on the same machine can be drawn together; their labels name that run's file.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pareto import pareto_front  # noqa: E402

PANELS = [("P@1", "speedup_b1", "P@1 (agreement with exact top-1)", "speedup over exact, batch 1"),
          ("P@1", "speedup_b256", "P@1 (agreement with exact top-1)", "speedup over exact, batch 256"),
          ("R_true@1", "speedup_b1", "R_true@1 (true next word at rank 1)", "speedup over exact, batch 1"),
          ("R_true@1", "speedup_b256", "R_true@1 (true next word at rank 1)", "speedup over exact, batch 256")]


OURS = ("exact", "adaptive", "lss", "ds", "screen")   # drawn solid with dots; the peers dashed with crosses


def plot(result: dict, out: Path, extra_rows: list | None = None) -> None:
    rows_all = result["rows"] + (extra_rows or [])
    methods = list(dict.fromkeys(r["label"] for r in rows_all))
    ours = {r["label"] for r in rows_all if r["method"] in OURS}
    colours = plt.get_cmap("tab20" if len(methods) > 10 else "tab10")
    fig, axes = plt.subplots(2, 2, figsize=(12, 9 + 0.15 * len(methods)))
    for ax, (acc, speed, xlabel, ylabel) in zip(axes.flat, PANELS):
        for i, method in enumerate(methods):
            rows = [r for r in rows_all if r["label"] == method]
            colour = colours(i % colours.N)
            style = "-o" if method in ours else "--x"
            ax.scatter([r[acc] for r in rows], [r[speed] for r in rows], color=colour, s=14, alpha=0.6)
            front = pareto_front(rows, acc, speed)
            ax.plot([r[acc] for r in front], [r[speed] for r in front], style, color=colour, ms=4, label=method)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8)
    m = result["machine"]
    fig.suptitle(f"{result['dataset']} (D={result['n_classes']:,}, d={result['dim']}), {result['n_test']:,} queries, "
                 f"k={result['k']}, {result['threads']} threads, {m['cpu']}, {result['dtype']}")
    fig.tight_layout(rect=(0, 0.03 * (1 + len(methods) // 4), 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("--with", dest="others", type=Path, nargs="*", default=[],
                    help="other result files on the same data set whose methods are drawn too")
    ap.add_argument("--methods", nargs="*", help="only these method labels from the --with files")
    a = ap.parse_args(argv)
    extra = []
    for other in a.others:
        for r in json.loads(other.read_text())["rows"]:
            if r["label"] != "exact" and (not a.methods or r["label"] in a.methods):
                extra.append({**r, "label": f"{r['label']} ({other.stem})"})
    for path in a.results:
        out = path.with_suffix(".png")
        plot(json.loads(path.read_text()), out, extra)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
