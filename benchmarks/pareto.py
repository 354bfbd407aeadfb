"""Pareto fronts of benchmark rows (shared by plot.py and report.py)."""
from __future__ import annotations


def pareto_front(rows: list[dict], acc: str, speed: str) -> list[dict]:
    """Rows not beaten on both `acc` and `speed` by another row, by increasing accuracy."""
    front = []
    for r in sorted(rows, key=lambda r: (-r[speed], -r[acc])):
        if not front or r[acc] > front[-1][acc]:
            front.append(r)
    return sorted(front, key=lambda r: r[acc])


def best_speedup(rows: list[dict], acc: str, threshold: float, speed: str) -> dict | None:
    """The fastest row whose `acc` reaches `threshold`, or None."""
    ok = [r for r in rows if r[acc] >= threshold]
    return max(ok, key=lambda r: r[speed]) if ok else None
