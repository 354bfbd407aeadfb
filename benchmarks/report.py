"""Markdown tables from the benchmark result files in benchmarks/results/, spliced into BENCHMARKS.md and
README.md between the markers <!-- results:NAME --> and <!-- /results:NAME -->.

    python benchmarks/report.py --write     # regenerate every block of BENCHMARKS.md and README.md
    python benchmarks/report.py --check     # exit 1 if a block differs from what the result files give

Each block is built from the newest result file of its kind (file names end in their date), so after a new
run, `--write` updates the tables and commits them with the result file; tests/test_benchmarks.py fails
while a block is stale. The prose between the blocks is written by hand.

One run's tables can also be printed, or spliced into any file holding the markers for
NAME = the result's config and dataset (e.g. full-debian-lm-100k):

    python benchmarks/report.py benchmarks/results/quick-debian-lm-100k-*.json [--readme FILE]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from pareto import best_speedup

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
THRESHOLDS = (0.9, 0.95, 0.98, 0.99)
RECALL_GAPS = (0.02, 0.01, 0.005)

# the summary table (README and BENCHMARKS.md): these configs' newest runs on this dataset, these targets
SUMMARY_DATASET = "debian-lm-100k"
SUMMARY_CONFIGS = ("full", "adaptive", "lss", "ds", "ds-more", "screen", "screen-ds")
SUMMARY_P1 = (0.9, 0.95, 0.99)
SUMMARY_RECALL_GAP = 0.005
# the sweeps of benchmarks/run.py shown in full in BENCHMARKS.md, by block name (= config-dataset)
RUN_BLOCKS = ("full-debian-lm-100k", "adaptive-debian-lm-100k", "lss-debian-lm-100k", "ds-debian-lm-100k",
              "ds-more-debian-lm-100k", "full-debian-cbow", "screen-debian-lm-100k", "screen-ds-debian-lm-100k",
              "half-debian-lm-100k")


def summary_key(row: dict) -> str:
    """The summary's name for a result row: its method, '+ screen' when its search screened with int8
    codes, the screen's certified mode apart."""
    if row["search"].get("screen"):
        return f"{row['method']} + screen"
    if row["method"] == "screen" and row["search"].get("mode") == "certified":
        return "screen (certified)"
    return row["method"]


def source_link(path: Path) -> str:
    rel = path.resolve().relative_to(ROOT).as_posix() if path.resolve().is_relative_to(ROOT) else path.as_posix()
    return f"[`{path.name}`]({rel})"


def newest(prefix: str, results: Path = RESULTS) -> Path:
    """The newest result file named `<prefix>-<date>.json` (dates sort as text)."""
    paths = sorted(p for p in results.glob(f"{prefix}-*.json") if re.fullmatch(rf"{re.escape(prefix)}-[\d-]+", p.stem))
    if not paths:
        raise SystemExit(f"no result file {results}/{prefix}-<date>.json")
    return paths[-1]


# --- one run of benchmarks/run.py ---------------------------------------------------------------------

def table(result: dict, source: str) -> str:
    m, t = result["machine"], result["timing"]
    k = result["k"]
    lines = [
        f"{result['dataset']} (D={result['n_classes']:,}, d={result['dim']}), {result['n_test']:,} test queries, "
        f"k={k}, {result['threads']} threads, {m['cpu']}, {result['dtype']}; queries/s = median per call over "
        f"{t['batch1_calls']} single queries / {t['batch256_calls']} batches of 256 after warm-up, interleaved with "
        f"exact; from {source}.", "",
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
    if "speedup_b1_after_layer" in result["rows"][0]:
        lines += ["", "The same, each call timed right after an untimed NumPy product (batch, d) @ (d, 4d), as after a "
                      "model's last layer:", ""] + floor_table(result["rows"], "P@1", THRESHOLDS, suffix="_after_layer")
    lines += build_lines(result["rows"])
    reference = result.get("reference", {}).get("R_true@1")
    if reference:
        lines += ["", f"Best speedup over exact at an R_true@1 floor (the full softmax's {reference} minus "
                      f"{', '.join(str(g) for g in RECALL_GAPS)}; batch 1 / batch 256):", ""]
        lines += floor_table(result["rows"], "R_true@1", [round(reference - gap, 4) for gap in RECALL_GAPS])
    return "\n".join(lines) + "\n"


def build_lines(rows: list) -> list[str]:
    """Where a builder recorded its time split (DS: teacher top-k and training stages), one line per label."""
    lines = []
    for r in {r["label"]: r for r in rows}.values():
        state = r.get("build_state") or {}
        if "teacher_s" in state and state.get("training"):
            stages = sum(stage["seconds"] for stage in state["training"])
            lines += ["", f"Build of {r['label']} on {state['train_queries']:,} training states: "
                          f"{state['total_s']:,.0f} s, of which the teacher's top-k {state['teacher_s']:.0f} s and "
                          f"the {len(state['training'])} training stages {stages:.0f} s."]
    return lines


def floor_table(rows: list, metric: str, floors, key: str = "label", suffix: str = "") -> list[str]:
    """Markdown lines: per method label (or `key`), the best batch-1 / batch-256 speedup (speedup_b1{suffix},
    speedup_b256{suffix}) among its rows whose metric reaches each floor."""
    lines = [f"| {'method' if key == 'label' else key} | " + " | ".join(f"{metric} >= {f}" for f in floors) + " |",
             "|---|" + "---:|" * len(floors)]
    for label in dict.fromkeys(r[key] for r in rows):
        mine = [r for r in rows if r[key] == label]
        lines.append(f"| {label} | " + " | ".join(floor_cell(mine, metric, f, suffix) for f in floors) + " |")
    return lines


def floor_cell(rows: list, metric: str, floor: float, suffix: str = "") -> str:
    best = [best_speedup(rows, metric, floor, f"speedup_b{b}{suffix}") for b in (1, 256)]
    return " / ".join(f"x{r[f'speedup_b{b}{suffix}']:.2f}" if r else "-" for r, b in zip(best, (1, 256)))


def run_block(path: Path) -> str:
    """A run's plot (when plot.py drew one beside it) and its tables."""
    result = json.loads(path.read_text())
    text = table(result, source_link(path))
    png = path.with_suffix(".png")
    if png.exists():
        alt = f"Pareto fronts of the {result['config']} config on {result['dataset']}"
        text = f"![{alt}]({png.relative_to(ROOT).as_posix()})\n\n" + text
    return text


# --- the summary: best speedup per method at the accuracy targets ------------------------------------------

def summary_block(results: Path = RESULTS) -> str:
    paths = [newest(f"{c}-{SUMMARY_DATASET}", results) for c in SUMMARY_CONFIGS]
    runs = [(p, json.loads(p.read_text())) for p in paths]
    rows, sources = [], {}
    for path, result in runs:
        for r in result["rows"]:
            if r["method"] != "exact":
                r = {**r, "method": summary_key(r)}
                rows.append(r)
                sources.setdefault(r["method"], []).append(path)
    sources = {m: list(dict.fromkeys(ps)) for m, ps in sources.items()}

    def common(key, fmt="{}") -> str:
        """The runs' value of `key` (a path of keys), or their distinct values joined by ' / '."""
        def get(result):
            for part in key.split("."):
                result = result[part]
            return fmt.format(result)
        return " / ".join(dict.fromkeys(get(result) for _, result in runs))

    reference = common("reference.R_true@1")
    recall_floor = round(float(reference) - SUMMARY_RECALL_GAP, 4)
    floors = [("P@1", f) for f in SUMMARY_P1] + [("R_true@1", recall_floor)]
    lines = [
        f"Best speedup over exact search (timed in the same run) per method, batch 1 / batch 256, at each "
        f"accuracy target; - where no setting tried reaches it. {SUMMARY_DATASET} (D={common('n_classes', '{:,}')}, "
        f"d={common('dim')}), {common('n_test', '{:,}')} test queries, k={common('k')}, {common('threads')} threads, "
        f"{common('machine.cpu')}, {common('dtype')}; R_true@1 target: the full softmax's {reference} minus "
        f"{SUMMARY_RECALL_GAP}. Each method's best over every configuration in its result files; methods that "
        f"reach none of the targets are left out.", "",
        "| method | " + " | ".join(f"{m} >= {f}" for m, f in floors) + " | result files |",
        "|---|" + "---:|" * len(floors) + "---|"]
    for method, paths in sources.items():
        mine = [r for r in rows if r["method"] == method]
        cells = [floor_cell(mine, m, f) for m, f in floors]
        if all(cell == "- / -" for cell in cells):
            continue
        lines.append(f"| {method} | " + " | ".join(cells) + " | " + ", ".join(source_link(p) for p in paths) + " |")
    return "\n".join(lines) + "\n"


# --- ours against the peers, within one run -------------------------------------------------------------

OURS = ("exact", "adaptive", "lss", "ds", "screen")
PEER_FLOORS = (0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


def peers_block(path: Path) -> str:
    """Per P@1 floor and batch: the fastest peer setting (every method but ours) and our fastest, from one
    run of benchmarks/run.py."""
    result = json.loads(path.read_text())
    ours = [r for r in result["rows"] if r["method"] in OURS and r["method"] != "exact"]
    peers = [r for r in result["rows"] if r["method"] not in OURS]

    def cell(rows, floor, batch):
        r = best_speedup(rows, "P@1", floor, f"speedup_b{batch}")
        if r is None:
            return "- | -"
        settings = ", ".join(f"{a}={b}" for a, b in r["search"].items())
        return f"{r['label']} ({settings}) | x{r[f'speedup_b{batch}']:.2f}"

    lines = [f"{result['dataset']} (D={result['n_classes']:,}, d={result['dim']}), {result['n_test']:,} test queries, "
             f"k={result['k']}, {result['threads']} threads, {result['machine']['cpu']}, {result['dtype']}: the "
             f"fastest setting reaching each P@1 floor, speedup over exact timed in the same run; from "
             f"{source_link(path)}.", "",
             "| P@1 >= | best peer, batch 1 | x exact | ours, batch 1 | x exact | best peer, batch 256 | x exact | "
             "ours, batch 256 | x exact |",
             "|---:|---|---:|---|---:|---|---:|---|---:|"]
    for floor in PEER_FLOORS:
        lines.append(f"| {floor} | " + " | ".join(cell(rows, floor, batch) for batch in (1, 256)
                                                   for rows in (peers, ours)) + " |")
    return "\n".join(lines) + "\n"


# --- the other benchmark scripts' result files ---------------------------------------------------------

def training_block(path: Path) -> str:
    """benchmarks/training.py: factored against naive SGD steps."""
    result = json.loads(path.read_text())
    lines = [f"{result['loss']} loss, batch {result['batch']}, {result['dtype']}, {result['threads']} threads, "
             f"{result['machine']['cpu']}; seconds per example = wall time of a run of steps / steps, after "
             f"warm-up; from {source_link(path)}.", "",
             "| D | d | naive ms / example | factored ms / example | speedup | predicted D/(4d) | required D/(8d) |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['D']:,} | {r['d']} | {r['naive_s_per_example'] * 1e3:.2f} | "
                     f"{r['factored_s_per_example'] * 1e3:.3f} | {r['speedup']:.1f} | {r['predicted_speedup']:.1f} | "
                     f"{r['required_speedup']:.1f} |")
    png = path.with_suffix(".png")
    if png.exists():
        lines += ["", f"![Factored against naive training]({png.relative_to(ROOT).as_posix()})"]
    return "\n".join(lines) + "\n"


def train_spherical_block(path: Path) -> str:
    """benchmarks/train_spherical.py: a real spherical-softmax training run, factored against naive."""
    r = json.loads(path.read_text())
    naive, fact, ref = r["naive"], r["factored"], r["softmax_reference"]
    lines = [f"D={r['D']:,}, d={r['d']}, {r['n_train']:,} training states (divided by their mean norm, "
             f"{r['input_scale']:.1f}), batch {r['batch']}, lr {r['lr']}, "
             f"epsilon {r['epsilon']}, {r['dtype']} state, {r['threads']} threads, {r['machine']['cpu']}; "
             f"from {source_link(path)}.", "",
             "| | epoch time | R_true@1 | R_true@5 | R_true@10 |", "|---|---:|---:|---:|---:|",
             f"| factored ({r['epochs']} epochs measured) | {fact['epoch_seconds']:.0f} s | {r['R_true']['@1']:.4f} | "
             f"{r['R_true']['@5']:.4f} | {r['R_true']['@10']:.4f} |",
             f"| naive ({naive['examples']:,} examples measured, {naive['seconds'] / naive['examples']:.2f} s each, "
             f"extrapolated) | {naive['epoch_seconds_extrapolated'] / 60:.0f} min | | | |",
             f"| the original softmax layer | | {ref['R_true@1']:.4f} | {ref['R_true@5']:.4f} | "
             f"{ref['R_true@10']:.4f} |", "",
             f"Factored over naive per epoch: x{r['speedup_epoch']:.0f} (D/(4d) predicts "
             f"x{r['D'] / (4 * r['d']):.0f})."]
    return "\n".join(lines) + "\n"


def engine_block(path: Path) -> str:
    """benchmarks/engine.py: the exact engine against NumPy and FAISS, the candidate engine's paths."""
    out = json.loads(path.read_text())
    m = out["machine"]
    lines = [f"{out['dataset']} (D={out['n_classes']:,}, d={out['dim']}), k={out['k']}, {out['threads']} threads, "
             f"{m['cpu']}, {out['dtype']}; {out['protocol']}; BLAS: {', '.join(m['blas'])}; "
             f"from {source_link(path)}.", "",
             "| method | batch 1 q/s | x exact | batch 256 q/s | x exact |", "|---|---:|---:|---:|---:|"]
    for r in out["rows"]:
        lines.append(f"| {r['method']} | {r['batch1_qps']:,.0f} | {r['batch1_vs_exact']:.2f} | "
                     f"{r['batch256_qps']:,.0f} | {r['batch256_vs_exact']:.2f} |")
    return "\n".join(lines) + "\n"


def ds_coverage_block(path: Path) -> str:
    """benchmarks/ds_coverage.py: distinct classes per query of a DS index and the speedup they allow."""
    r = json.loads(path.read_text())
    s = r["index_state"]
    lines = [f"A DS index with {s['n_experts']} experts trained on {s['train_queries']:,} states, the first "
             f"{r['n_queries']:,} validation queries; from {source_link(path)}.", "",
             "| n_probe | P@1 | distinct classes / query | rows scored / query (grouped path) | speedup ceiling "
             "D / distinct |", "|---:|---:|---:|---:|---:|"]
    for row in r["rows"]:
        lines.append(f"| {row['n_probe']} | {row['P@1']:.4f} | {row['distinct_classes']:,.0f} | "
                     f"{row['rows_with_repeats']:,.0f} | x{row['speedup_ceiling']:.1f} |")
    caught = r["misses_caught"]
    lines += ["", f"The first expert misses the exact top-1 on {r['first_expert_missed']:.1%} of the queries. Share of "
                  f"those misses among the {r['escalated_share']:.0%} of queries with the lowest value of each "
                  "confidence signal:", "", "| signal | misses caught |", "|---|---:|"]
    lines += [f"| {name.replace('_', ' ')} | {share:.1%} |" for name, share in caught.items()]
    return "\n".join(lines) + "\n"


def screen_kernel_block(results: Path = RESULTS) -> str:
    """benchmarks/screen_kernel.py: the screen's scan kernel against its tile's peak, the newest file of each
    tile (AVX-512 VNNI, AVX2, ...)."""
    newest_of = {}
    for path in sorted(results.glob("screen-kernel-*.json")):
        r = json.loads(path.read_text())
        newest_of[r["tile"]] = (path, r)
    lines = []
    for tile in sorted(newest_of):
        path, r = newest_of[tile]
        instruction, registers = r.get("dot_instruction", "vpdpbusd"), r.get("dot_registers", "zmm")
        found = r.get("dot_in_asm", r.get("vpdpbusd_zmm_in_asm"))
        gmac = f"{r['peak_gmac_per_s']:.0f}" if r["peak_gmac_per_s"] else "unknown"
        tile_text = f"peak {gmac} GMAC/s ({r['peak_rule']}, {r['nominal_ghz']} GHz); {found} `{instruction}` " \
                    f"instructions on {registers} registers in the kernel's assembly" if instruction \
            else "a plain Numba tile, no peak"
        lines += [f"{r['dataset']} (D={r['n_classes']:,}, d={r['dim']}), top-{r['candidates']} kept, "
                  f"{r['threads']} threads, {r['machine']['cpu']}, tile: {tile}; {tile_text}; "
                  f"from {source_link(path)}.",
                  "",
                  "| batch | ms per call | int8 GMAC/s | share of peak | codes GB/s |", "|---:|---:|---:|---:|---:|"]
        for row in r["rows"]:
            share = f"{row['share_of_peak']:.1%}" if row["share_of_peak"] is not None else "-"
            lines.append(f"| {row['batch']} | {row['median_ms']:.3f} | {row['gmac_per_s']:.1f} | {share} | "
                         f"{row['codes_gb_per_s']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def blas_spin_block(path: Path) -> str:
    """benchmarks/blas_spin.py: batch-1 searches clean and right after a BLAS product, per option."""
    r = json.loads(path.read_text())
    base = r["default"]
    modes = list(base["ms"])
    lines = [f"{base['dataset']}, batch 1, k=10, {base['machine']['numba_threads']} threads, {base['machine']['cpu']}, "
             f"BLAS {', '.join(base['machine']['blas'])}; the layer: {base['layer']}; median ms per search "
             f"(interleaved, after warm-up); from {source_link(path)}.", "",
             "| search | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for run, res in r.items():
        if run == "date":
            continue
        for name in res["ms"][modes[0]]:
            label = name if run == "default" else f"{name}, {run}"
            lines.append(f"| {label} | " + " | ".join(f"{res['ms'][m][name]:.2f}" for m in modes) + " |")
    lines += ["", "The layer's own product: " + ", ".join(f"{r[run]['layer_ms']:.3f} ms ({run})" for run in r
                                                        if run != "date") + "."]
    return "\n".join(lines) + "\n"


def generate_block(path: Path) -> str:
    """benchmarks/generate.py: end-to-end decoding, exact head against indexed heads; sampling distances."""
    r = json.loads(path.read_text())
    a = r["args"]
    lines = [f"{r['dataset']}, {a['prompts']} prompts x {a['new_tokens']} new tokens, greedy, {r['threads']} "
             f"threads (torch {r['torch']['version']}, Numba, BLAS), {r['machine']['cpu']}; {r['protocol']}; "
             f"indexes tuned to P@1 >= {a['target_p1']} at batch 1; from {source_link(path)}.", "",
             "| batch | head | settings | tokens/s | x exact head | head's share | identical tokens | "
             "identical prefix |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    for batch, rows in r["decoding"].items():
        for name, x in rows.items():
            index = r["indexes"].get(name, {})
            tuned = (index.get("tuned") or {}).get("settings")
            settings = ", ".join(f"{k}={v}" for k, v in tuned.items()) if tuned else "-"
            if index.get("search_exactly"):
                settings = f"exact search (the tuned {settings} was slower)"
            lines.append(f"| {batch} | {name} | {settings} | {x['tokens_per_s']:,.0f} | {x['speedup']:.2f} | "
                         f"{x['head_share']:.1%} | {x['identical_tokens']:.4f} | {x['mean_identical_prefix']:.1f} |")
    smp = r["sampling"]
    lines += ["", f"Sampling, on {smp['n_states']:,} decoding states, {smp['k']} candidates, top-p {smp['top_p']}: "
                  "total variation distance per step between wolindex.sample's distribution (the exact nucleus "
                  "where it reaches past the candidates) and exact top-p sampling, the same without that fallback, "
                  "the share of steps that took it, and |estimated - exact| log normaliser:",
              "",
              "| head | TV median | TV mean | TV p99 | TV mean without the fallback | steps sampled exactly | "
              "log Z error median | log Z error p99 |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in smp["methods"].items():
        tv, cut, err = m["tv_top_p"], m["tv_top_p_without_fallback"], m["log_normaliser_abs_error"]
        lines.append(f"| {name} | {tv['median']:.4f} | {tv['mean']:.4f} | {tv['p99']:.4f} | {cut['mean']:.4f} | "
                     f"{m['exact_fallback_share']:.1%} | {err['median']:.4f} | {err['p99']:.4f} |")
    return "\n".join(lines) + "\n"


def newest_rows(results: Path = RESULTS) -> dict:
    """(layer, label) -> (row, result file): the newest row of each pair over every scale result file in
    `results`, rows that ended in an error left out."""
    found = {}
    for path in sorted(p for p in results.glob("scale-*.json") if re.fullmatch(r"scale-[\d-]+", p.stem)):
        for r in json.loads(path.read_text())["rows"]:
            if "error" not in r:
                found[(r["layer"], r["label"])] = (r, path)
    return found


def scale_block(results: Path = RESULTS) -> str:
    """benchmarks/scale.py: memory and cost per query by layer and method, the newest row of each pair over
    every scale result file."""
    found = newest_rows(results)
    sources = dict.fromkeys(path for _, path in found.values())
    results_of = {path: json.loads(path.read_text()) for path in sources}
    result = results_of[list(sources)[-1]]
    lines = [f"{result['threads']} threads, float32, on the CPU of each row's result file; each (layer, method) "
             "in its own process; tuned to P@1 >= 0.99 on half the held-out queries, P@1 and speed on the other "
             "half, speed against exact in the same process (median after warm-up); memory over W's bytes: the "
             "build's peak resident memory above the loaded data, the index without / with its int8 screening "
             "codes, and what load(mmap=True) adds to resident memory (anonymous / all) before the first search; "
             "from " + ", ".join(source_link(p) for p in sources) + ".", "",
             "| layer | method | CPU | tuned setting | P@1 | classes scored | ms/query exact | ms/query | x exact b1 | "
             "x exact b256 | build s | build peak | index | + codes | mmap load adds |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (layer, label), (r, path) in found.items():
        tuned = r.get("tuned", {})
        if "chosen" not in tuned:
            settings = "none met the target: defaults"
        else:
            settings = ", ".join(f"{a}={b}" for a, b in tuned["chosen"]["settings"].items()) + \
                (" (exact search faster)" if tuned.get("search_exactly") else "")
        codes = r.get("screen_codes_bytes", 0) / r["W_bytes"]
        plain = r.get("index_without_codes_over_W", r["index_over_W"])
        lines.append(f"| {layer} | {label} | {results_of[path]['machine']['cpu']} | {settings} | {r['P@1']:.4f} | "
                     f"{r['candidates']:,.0f} | "
                     f"{r['exact_ms_b1']:.2f} | {r['ms_b1']:.3f} | {r['speedup_b1']:.2f} | {r['speedup_b256']:.2f} | "
                     f"{r['build_s']:.0f} | {r['build_peak_over_W']:.2f}x | {plain:.2f}x | {codes:.2f}x | "
                     f"{r['load_added_anon_over_W']:.3f}x / {r['load_added_over_W']:.3f}x |")
    png = results / "scale.png"
    if png.exists():
        lines += ["", f"![Cost per query against D]({png.relative_to(ROOT).as_posix()})"]
    return "\n".join(lines) + "\n"


# --- the documents ------------------------------------------------------------------------------------

def blocks(results: Path = RESULTS) -> dict[str, dict[str, str]]:
    """Document (relative to the repository root) -> block name -> its generated text."""
    summary = summary_block(results)
    bench = {"summary": summary}
    bench.update({name: run_block(newest(name, results)) for name in RUN_BLOCKS})
    bench["ds-coverage"] = ds_coverage_block(newest("ds-coverage", results))
    bench["training"] = training_block(newest("training", results))
    bench["train-spherical"] = train_spherical_block(newest("train-spherical", results))
    bench["engine"] = engine_block(newest(f"engine-{SUMMARY_DATASET}", results))
    bench["screen-kernel"] = screen_kernel_block(results)
    bench["blas-spin"] = blas_spin_block(newest("blas-spin", results))
    bench["generate"] = generate_block(newest(f"generate-{SUMMARY_DATASET}", results))
    for name in ("debian-lm-100k", "debian-cbow"):
        bench[f"peers-{name}"] = peers_block(newest(f"full-{name}", results))
    bench["scale"] = scale_block(results)
    return {"BENCHMARKS.md": bench,
            "README.md": {"summary": summary, "peers-debian-lm-100k": bench["peers-debian-lm-100k"]}}


MARKER = re.compile(r"<!-- results:([\w.-]+) -->\n(.*?)<!-- /results:\1 -->", re.S)


def regenerate(content: str, generated: dict[str, str], where: str = "document") -> str:
    """`content` with every block replaced by its generated text; every block must have markers, and
    every marker pair a block."""
    found = [m.group(1) for m in MARKER.finditer(content)]
    missing, unknown = set(generated) - set(found), set(found) - set(generated)
    if missing or unknown or len(found) != len(set(found)):
        raise SystemExit(f"{where}: markers without a block {sorted(unknown)}, blocks without markers "
                         f"{sorted(missing)}, or a block twice {found}")
    return MARKER.sub(lambda m: f"<!-- results:{m.group(1)} -->\n{generated[m.group(1)]}<!-- /results:{m.group(1)} -->",
                      content)


def documents(root: Path = ROOT, results: Path = RESULTS) -> dict[Path, tuple[str, str]]:
    """Document path -> (its text now, its text with regenerated blocks)."""
    out = {}
    for name, generated in blocks(results).items():
        path = root / name
        current = path.read_text()
        out[path] = (current, regenerate(current, generated, str(path)))
    return out


def splice(readme: Path, name: str, text: str) -> None:
    """Replace what lies between the file's markers for `name` (which must exist) with `text`."""
    content = readme.read_text()
    pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(<!-- /results:{re.escape(name)} -->)", re.S)
    if not pattern.search(content):
        raise SystemExit(f"{readme}: no <!-- results:{name} --> ... <!-- /results:{name} --> markers")
    readme.write_text(pattern.sub(lambda m: m.group(1) + text + m.group(2), content))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", type=Path, nargs="*", help="result files of benchmarks/run.py to print")
    ap.add_argument("--readme", type=Path, default=None, help="splice the printed tables into this file")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="regenerate BENCHMARKS.md and README.md")
    mode.add_argument("--check", action="store_true", help="exit 1 if BENCHMARKS.md or README.md is stale")
    a = ap.parse_args(argv)
    if a.write or a.check:
        stale = {path: new for path, (now, new) in documents().items() if now != new}
        for path, new in stale.items():
            if a.write:
                path.write_text(new)
            print(f"{'wrote' if a.write else 'stale:'} {path.relative_to(ROOT)}")
        if a.check and stale:
            sys.exit("run: python benchmarks/report.py --write")
        if not stale:
            print("BENCHMARKS.md and README.md match the result files")
        return
    if not a.results:
        ap.error("give result files, --write or --check")
    for path in a.results:
        result = json.loads(path.read_text())
        text = table(result, f"`benchmarks/results/{path.name}`")
        print(text)
        if a.readme:
            splice(a.readme, f"{result['config']}-{result['dataset']}", text)


if __name__ == "__main__":
    main()
