"""Mutation testing: how many small, seeded changes to the library does the test suite catch?

Copies the checkout (or another git revision) to a temporary folder, applies one mutation at a time to a
module there (a comparison, arithmetic or boolean operator swapped, min/max swapped, a `not` dropped, an
integer constant moved by one), runs that module's test files with `pytest -x`, and records whether a test
failed (killed) or all passed (survived). A small seeded mutator of our own rather than mutmut: the engine's
Numba kernels are compiled from source, and a mutant must be judged by the tests that cover its module only
to keep a run within minutes.

    python benchmarks/mutation.py --mutants 60 --seed 0 [--rev <git revision>] [--jobs 2]

Writes benchmarks/results/mutation-<rev>-<time>.json (every mutant: module, line, change, outcome, seconds)
and prints the mutation score (killed / mutants). Not part of CI."""
from __future__ import annotations

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_GLOBS = ("wolindex/engine/**/*.py", "wolindex/methods/**/*.py", "wolindex/tune.py", "wolindex/gpu/**/*.py")
# test files that cover each area; those missing from a revision are skipped
AREA_TESTS = {
    "engine": ["test_exact.py", "test_candidates.py", "test_engine_hardening.py", "test_inputs.py"],
    "adaptive": ["test_adaptive.py", "test_spherical.py"],
    "ds": ["test_ds.py"],
    "lss": ["test_lss.py"],
    "faiss": ["test_faiss_methods.py"],
    "methods": ["test_method_hardening.py", "test_io.py", "test_exact.py", "test_index_fuzz.py"],
    "tune": ["test_tune.py", "test_faiss_methods.py", "test_ds.py"],
    "gpu": ["test_gpu_emulated.py"],
}
SWAPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
         ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.FloorDiv, ast.FloorDiv: ast.Mult,
         ast.And: ast.Or, ast.Or: ast.And}


def area_of(path: str) -> str:
    if "/engine/" in path:
        return "engine"
    if path.endswith("tune.py"):
        return "tune"
    if "/gpu/" in path:
        return "gpu"
    for area in ("adaptive", "ds", "lss", "faiss"):
        if f"/{area}" in path:
            return area
    return "methods"


def sites(tree: ast.AST) -> list[tuple[int, str, str]]:
    """Mutation sites of a module: (node index in ast.walk order, kind, description)."""
    out = []
    for i, node in enumerate(ast.walk(tree)):
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAPS:
            out.append((i, "compare", f"{type(node.ops[0]).__name__} -> {SWAPS[type(node.ops[0])].__name__}"))
        elif isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in SWAPS:
            out.append((i, "arith", f"{type(node.op).__name__} -> {SWAPS[type(node.op)].__name__}"))
        elif isinstance(node, ast.BoolOp):
            out.append((i, "bool", f"{type(node.op).__name__} -> {SWAPS[type(node.op)].__name__}"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            out.append((i, "not", "drop not"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("min", "max"):
            out.append((i, "minmax", f"{node.func.id} -> {'max' if node.func.id == 'min' else 'min'}"))
        elif isinstance(node, ast.Constant) and type(node.value) is int and not isinstance(node.value, bool):
            out.append((i, "const", f"{node.value} -> {node.value + 1}"))
    return out


def mutate(source: str, index: int) -> tuple[str, int]:
    """The module's source with the site at ast.walk position `index` changed; and its line."""
    tree = ast.parse(source)
    for i, node in enumerate(ast.walk(tree)):
        if i != index:
            continue
        if isinstance(node, ast.Compare):
            node.ops = [SWAPS[type(node.ops[0])]()]
        elif isinstance(node, (ast.BinOp, ast.AugAssign, ast.BoolOp)):
            node.op = SWAPS[type(node.op)]()
        elif isinstance(node, ast.UnaryOp):
            return _drop_not(tree, node), node.lineno
        elif isinstance(node, ast.Call):
            node.func.id = "max" if node.func.id == "min" else "min"
        elif isinstance(node, ast.Constant):
            node.value = node.value + 1
        return ast.unparse(tree), node.lineno
    raise IndexError(index)


def _drop_not(tree: ast.AST, target: ast.UnaryOp) -> str:
    class Drop(ast.NodeTransformer):
        def visit_UnaryOp(self, node):
            self.generic_visit(node)
            return node.operand if node is target else node

    return ast.unparse(Drop().visit(tree))


def run_tests(workdir: Path, tests: list[str], timeout: int) -> tuple[str, float]:
    env = {**os.environ, "PYTHONPATH": str(workdir), "NUMBA_CACHE_DIR": str(workdir / ".numba-cache")}
    env.pop("WOLINDEX_DATA", None)
    t0 = time.perf_counter()
    try:
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests]
        done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, timeout=timeout)
        outcome = "survived" if done.returncode == 0 else ("killed" if done.returncode in (1, 2) or done.returncode < 0
                                                          else f"error rc={done.returncode}")
    except subprocess.TimeoutExpired:
        outcome = "killed (timeout)"
    return outcome, time.perf_counter() - t0


def checkout(rev: str | None, dest: Path) -> None:
    if rev is None:
        shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info",
                                                                  "results", "gpu-bundle"))
    else:
        dest.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mutants", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rev", default=None, help="git revision to test (default: the working tree)")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--timeout", type=int, default=300, help="seconds per mutant (a timeout counts as killed)")
    a = p.parse_args()
    base = Path(tempfile.mkdtemp(prefix="wolindex-mutation-"))
    tree = base / "tree"
    checkout(a.rev, tree)
    modules = sorted({str(m.relative_to(tree)) for g in MODULE_GLOBS for m in tree.glob(g)})
    all_sites = [(m, s) for m in modules for s in sites(ast.parse((tree / m).read_text()))]
    rng = random.Random(a.seed)
    chosen = rng.sample(all_sites, min(a.mutants, len(all_sites)))
    print(f"{len(all_sites)} mutation sites in {len(modules)} modules; testing {len(chosen)}", flush=True)

    def one(job):
        j, (module, (index, kind, change)) = job
        work = base / f"m{j}"
        shutil.copytree(tree, work, symlinks=True)
        source = (work / module).read_text()
        mutated, line = mutate(source, index)
        (work / module).write_text(mutated)
        tests = [f"tests/{t}" for t in AREA_TESTS[area_of(module)] if (work / "tests" / t).exists()]
        outcome, seconds = run_tests(work, tests, a.timeout) if tests else ("no tests", 0.0)
        shutil.rmtree(work, ignore_errors=True)
        row = {"module": module, "line": line, "kind": kind, "change": change, "tests": tests, "outcome": outcome,
               "seconds": round(seconds, 1)}
        print(f"{outcome:>16}  {module}:{line}  {change}  ({seconds:.0f} s)", flush=True)
        return row

    t0 = time.perf_counter()
    with ThreadPoolExecutor(a.jobs) as pool:
        rows = list(pool.map(one, enumerate(chosen)))
    killed = sum(r["outcome"].startswith("killed") for r in rows)
    rev = a.rev or subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip() + "+tree"
    result = {"rev": rev, "seed": a.seed, "n_sites": len(all_sites), "n_mutants": len(rows), "killed": killed,
              "score": killed / max(1, len(rows)), "seconds": round(time.perf_counter() - t0), "mutants": rows}
    out = ROOT / "benchmarks" / "results" / f"mutation-{rev.replace('+', '-')}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    shutil.rmtree(base, ignore_errors=True)
    print(f"mutation score {killed}/{len(rows)} = {result['score']:.3f}; {out}")


if __name__ == "__main__":
    main()
