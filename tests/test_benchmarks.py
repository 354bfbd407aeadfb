"""The benchmark harness end to end on a tiny synthetic config: run, plot, report."""
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("faiss")
pytest.importorskip("yaml")
pytest.importorskip("matplotlib")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import plot  # noqa: E402
import report  # noqa: E402
import run  # noqa: E402

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
    sweep: {nprobe: [1, 30]}
"""


def test_run_plot_report(tmp_path, monkeypatch, capsys):
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
    assert "old" not in text and "| faiss-ivf | nprobe=30 |" in text and text.endswith("b\n")


def _only_synthetic(load):
    def loader(name, **options):
        if name != "synthetic":
            raise FileNotFoundError(f"{name}: not available in this test")
        return load(name, **options)
    return loader
