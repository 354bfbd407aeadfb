#!/usr/bin/env python3
"""Build the debian-cbow data set (see wolindex/contrib/debian_cbow.py for every step).

    python datasets/debian_cbow.py                     # into WOLINDEX_CACHE (default ~/.cache/wolindex)
    python datasets/debian_cbow.py --out DIR/debian-cbow
"""
import argparse
from pathlib import Path

from wolindex.contrib.datasets import cache_dir
from wolindex.contrib.debian_cbow import build_debian_cbow


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=cache_dir() / "debian-cbow")
    ap.add_argument("--train-queries", type=int, default=200_000)
    ap.add_argument("--test-queries", type=int, default=50_000)
    a = ap.parse_args()
    if (a.out / "W.npy").exists():
        raise SystemExit(f"{a.out} already holds a data set")
    build_debian_cbow(a.out, a.train_queries, a.test_queries)


if __name__ == "__main__":
    main()
