"""The benchmark harness end to end on a tiny synthetic config (run, plot, report), and the generated
documents: BENCHMARKS.md and the README's summary must match the committed result files, and every link and
path they cite must exist."""
import difflib
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import report  # noqa: E402  (standard library and pareto.py only: no data set, no wolindex)

DOCS = ("README.md", "BENCHMARKS.md")
CONFIG = """
name: tiny
threads: 1
k: 10
timing: {batch1_calls: 6, batch256_calls: 2}
datasets:
  - name: synthetic
    options: {n_classes: 1500, dim: 16, n_train: 300, n_test: 600}
    n_test: 512
  - name: debian-cbow-that-is-not-there
methods:
  - method: exact
  - method: faiss-ivf
    build: {nlist: 30}
    sweep: {n_probe: [1, 30]}
"""


def test_run_plot_report(tmp_path, monkeypatch, capsys):
    pytest.importorskip("faiss")
    pytest.importorskip("yaml")
    pytest.importorskip("matplotlib")
    import plot
    import run

    monkeypatch.setattr(run, "load_dataset", _only_synthetic(run.load_dataset))
    (tmp_path / "tiny.yaml").write_text(CONFIG)
    [path] = run.main([str(tmp_path / "tiny.yaml"), "--out", str(tmp_path)])
    result = json.loads(path.read_text())
    assert "skipping debian-cbow-that-is-not-there" in capsys.readouterr().out
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["exact", "faiss-ivf", "faiss-ivf"]
    assert rows[0]["P@1"] == 1.0 and rows[0]["P@10"] == 1.0 and rows[2]["P@10"] == 1.0
    assert rows[1]["P@10"] <= rows[2]["P@10"]
    for r in rows:
        assert r["qps_b1"] > 0 and r["qps_b256"] > 0 and r["speedup_b1"] > 0 and r["index_bytes"] > 0
    plot.main([str(path)])
    assert path.with_suffix(".png").stat().st_size > 10_000
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:tiny-synthetic -->\nold\n<!-- /results:tiny-synthetic -->\nb\n")
    report.main([str(path), "--readme", str(readme)])
    text = readme.read_text()
    assert "old" not in text and "| faiss-ivf | n_probe=30 |" in text and text.endswith("b\n")


def _only_synthetic(load):
    def loader(name, **options):
        if name != "synthetic":
            raise FileNotFoundError(f"{name}: not available in this test")
        return load(name, **options)
    return loader


def test_generated_docs_match_result_files():
    """Each block between <!-- results:NAME --> markers in BENCHMARKS.md and README.md is what
    `python benchmarks/report.py --write` makes of the result files in benchmarks/results/ now."""
    documents = report.documents()
    assert {p.name for p in documents} == set(DOCS)
    for path, (current, expected) in documents.items():
        diff = "".join(list(difflib.unified_diff(current.splitlines(True), expected.splitlines(True), str(path),
                                                 "regenerated"))[:40])
        assert current == expected, f"{path.name} is stale: run python benchmarks/report.py --write\n{diff}"


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def _slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


@pytest.mark.parametrize("doc", DOCS)
def test_doc_links_and_paths_exist(doc):
    """Every relative link (and its #anchor), and every repository path or result file named in the text
    (globs must match something), exists."""
    text = (ROOT / doc).read_text()
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = ROOT / file if file else ROOT / doc
        if not path.exists():
            missing.append(target)
        elif anchor and anchor not in _anchors(path.read_text()):
            missing.append(target)
    for token in re.findall(r"(?<![\w./-])((?:wolindex|tests|benchmarks|datasets|\.ci)/[\w./*-]*)", text):
        token = token.rstrip(".")
        if not any(ROOT.glob(token)) and not (ROOT / token).exists():
            missing.append(token)
    for name in re.findall(r"[\w.-]+-\d{8}-\d+\.(?:json|png|md)", text):
        if not (ROOT / "benchmarks" / "results" / name).exists():
            missing.append(name)
    assert not missing, f"{doc} cites what does not exist: {sorted(set(missing))}"
