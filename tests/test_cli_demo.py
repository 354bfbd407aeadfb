"""The command line and the demo, end to end on small data."""
import numpy as np
import pytest

from wolindex import cli
from wolindex.data import load_dataset, synthetic
from wolindex.demo import run_demo
from conftest import random_layer, random_queries


def test_build_search_info(tmp_path, capsys):
    W, b = random_layer(200, 8)
    np.savez(tmp_path / "layer.npz", weight=W, bias=b)
    np.save(tmp_path / "H.npy", random_queries(30, 8))
    cli.main(["build", str(tmp_path / "layer.npz"), str(tmp_path / "idx.wol"), "--weight-key", "weight",
              "--bias-key", "bias"])
    assert '"method": "exact"' in capsys.readouterr().out
    cli.main(["search", str(tmp_path / "idx.wol"), str(tmp_path / "H.npy"), "-k", "3",
              "--out", str(tmp_path / "r.npz")])
    with np.load(tmp_path / "r.npz") as r:
        ref = np.argsort(-(random_queries(30, 8) @ W.T + b), axis=1)[:, :3]
        np.testing.assert_array_equal(r["labels"], ref)
    cli.main(["info", str(tmp_path / "idx.wol")])
    assert '"n_classes": 200' in capsys.readouterr().out


def test_cli_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["info", str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    assert "wolindex info: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["search", "x", "y", "--set", "novalue"])


def test_demo_on_synthetic_data(monkeypatch, tmp_path):
    """Without real data the demo says it fell back to synthetic data; exact search is exact and the tuned
    methods are measured beside it."""
    monkeypatch.delenv("WOLINDEX_DATA", raising=False)
    monkeypatch.setenv("WOLINDEX_CACHE", str(tmp_path))
    lines = []
    result = run_demo(data="synthetic", threads=1, n_queries=300, n_tune=300, batch_large=64, say=lines.append,
                      synthetic_classes=3000, methods=["faiss-flat", "faiss-ivf"], target_p1=0.9)
    assert any("SYNTHETIC" in line for line in lines)
    rows = result["rows"]
    assert rows["exact"]["P@1"] == 1.0 and rows["exact"]["P@10"] == 1.0 and rows["faiss-flat"]["P@10"] == 1.0
    assert rows["faiss-ivf"]["P@1"] >= 0.8 and "nprobe" in rows["faiss-ivf"]["settings"]
    assert set(rows) == {"numpy matmul + argpartition", "exact", "faiss-flat", "faiss-ivf"}
    assert all(r["qps_b1"] > 0 and r["qps_b64"] > 0 for r in rows.values())


def test_synthetic_is_seeded_and_zipfian():
    a, b = synthetic(n_classes=500, dim=8, n_train=2000, n_test=10, seed=4), load_dataset(
        "synthetic", n_classes=500, dim=8, n_train=2000, n_test=10, seed=4)
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.H_test, b.H_test)
    assert a.class_counts[:10].sum() > a.class_counts[-250:].sum()
    with pytest.raises(ValueError, match="name: expected one of"):
        load_dataset("imagenet")
