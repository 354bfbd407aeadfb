"""Markdown tables from benchmark result files, optionally spliced into the README between the markers
<!-- results:NAME --> and <!-- /results:NAME --> (NAME = the result file's stem without its date).

    python benchmarks/report.py benchmarks/results/quick-debian-lm-100k-*.json --readme README.md
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from pareto import best_speedup

THRESHOLDS = (0.9, 0.95, 0.98, 0.99)
RECALL_GAPS = (0.02, 0.01, 0.005)


def table(result: dict, source: str) -> str:
    m, t = result["machine"], result["timing"]
    k = result["k"]
    lines = [
        f"{result['dataset']} (D={result['n_classes']:,}, d={result['dim']}), {result['n_test']:,} test queries, "
        f"k={k}, {result['threads']} threads, {m['cpu']}, {result['dtype']}; queries/s = median per call over "
        f"{t['batch1_calls']} single queries / {t['batch256_calls']} batches of 256 after warm-up, interleaved with "
        f"exact; from `{source}`.", "",
        f"| method | settings | P@1 | P@{k} | R_true@1 | R_true@10 | classes scored | batch 1 q/s | x exact | "
        f"batch 256 q/s | x exact | build s | bytes / W |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        settings = ", ".join(f"{a}={b}" for a, b in r["search"].items()) or "-"
        lines.append(f"| {r['label']} | {settings} | {r['P@1']:.4f} | {r[f'P@{k}']:.4f} | {r['R_true@1']:.4f} | "
                     f"{r.get('R_true@10', float('nan')):.4f} | {r['candidates']:,.0f} | {r['qps_b1']:,.0f} | "
                     f"{r['speedup_b1']:.2f} | {r['qps_b256']:,.0f} | {r['speedup_b256']:.2f} | {r['build_s']:.1f} | "
                     f"{r['index_over_W']:.2f} |")
    lines += ["", "Best speedup over exact at a P@1 floor (batch 1 / batch 256; - where the sweep never reaches it):",
              ""] + floor_table(result["rows"], "P@1", THRESHOLDS)
    reference = result.get("reference", {}).get("R_true@1")
    if reference:
        lines += ["", f"Best speedup over exact at an R_true@1 floor (the full softmax's {reference} minus "
                      f"{', '.join(str(g) for g in RECALL_GAPS)}; batch 1 / batch 256):", ""]
        lines += floor_table(result["rows"], "R_true@1", [round(reference - gap, 4) for gap in RECALL_GAPS])
    return "\n".join(lines) + "\n"


def floor_table(rows: list, metric: str, floors) -> list[str]:
    """Markdown lines: per method label, the best batch-1 / batch-256 speedup among its rows whose metric
    reaches each floor."""
    lines = ["| method | " + " | ".join(f"{metric} >= {f}" for f in floors) + " |", "|---|" + "---:|" * len(floors)]
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label]
        cells = []
        for f in floors:
            best = [best_speedup(mine, metric, f, f"speedup_b{b}") for b in (1, 256)]
            cells.append(" / ".join(f"x{r[f'speedup_b{b}']:.2f}" if r else "-" for r, b in zip(best, (1, 256))))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def splice(readme: Path, name: str, text: str) -> None:
    """Replace what lies between the README's markers for `name` (which must exist) with `text`."""
    content = readme.read_text()
    pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(<!-- /results:{re.escape(name)} -->)", re.S)
    if not pattern.search(content):
        raise SystemExit(f"{readme}: no <!-- results:{name} --> ... <!-- /results:{name} --> markers")
    readme.write_text(pattern.sub(lambda m: m.group(1) + text + m.group(2), content))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="+")
    ap.add_argument("--readme", type=Path, default=None)
    a = ap.parse_args(argv)
    for path in a.results:
        result = json.loads(path.read_text())
        text = table(result, f"benchmarks/results/{path.name}")
        print(text)
        if a.readme:
            splice(a.readme, f"{result['config']}-{result['dataset']}", text)


if __name__ == "__main__":
    main()
