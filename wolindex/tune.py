"""Auto-tuning: the cheapest search setting that meets an accuracy target on held-out queries."""
from __future__ import annotations

import time
from functools import partial
from typing import Any, Callable

import numpy as np

from .arrays import as_labels, as_queries, check_k
from .engine import exact_topk
from .metrics import p_at_k, true_recall_at_k
from .params import check_int, check_number


def _metric(index, Q: np.ndarray, k: int, true_labels: bool, labels, recall_k: int):
    """(name, function of a search's labels (N, k)): R_true@recall_k on `labels` when true_labels, else P@1
    against exact search of Q."""
    if true_labels:
        if labels is None:
            raise ValueError("labels: target_recall needs the true labels of H_val")
        y = as_labels(labels, Q.shape[0], index.n_classes)
        check_k(recall_k, k)
        return f"R_true@{recall_k}", lambda lab: true_recall_at_k(lab, y, recall_k)
    _, exact_labels = exact_topk(index.layer.W, index.layer.b, Q, 1, labels=index.layer.row_class)
    return "P@1", lambda lab: p_at_k(lab, exact_labels, 1)


def _try(index, Q: np.ndarray, k: int, settings: dict, metric_name: str, accuracy) -> dict[str, Any]:
    """One grid entry: its settings, accuracy and mean classes scored on Q."""
    _, labels, n_scored = index.search(Q, k, return_n_scored=True, **settings)
    return {"settings": settings, metric_name: accuracy(labels), "candidates": float(np.mean(n_scored))}


def tune(index, H_val, k: int = 10, *, target_p1: float | None = None, target_recall: float | None = None,
         labels=None, recall_k: int = 1, grid: list[dict[str, Any]] | None = None, batch: int = 256,
         n_batches: int = 4, verbose: bool = True) -> dict[str, Any]:
    """Try each setting of `grid` (default: the method's tuning_grid, widened with its wider_grid when none
    meets the target) on H_val (N, d); among those whose P@1 against exact search reaches target_p1 (or whose
    R_true@recall_k on `labels` reaches target_recall), keep the fastest, measured at `batch` queries per
    call against exact search in the same run, as the index's default search. When exact search is faster
    still, the report says so (search_exactly) and search() without settings then searches exactly.

    Returns the report also stored in index.info["tuned"]; raises ValueError naming the best accuracy
    reached when no setting meets the target."""
    if (target_p1 is None) == (target_recall is None):
        raise ValueError("target_p1 / target_recall: give exactly one")
    target_name = "target_p1" if target_p1 is not None else "target_recall"
    target = target_p1 if target_p1 is not None else target_recall
    check_number(target_name, target)
    if not target <= 1.0:
        raise ValueError(f"{target_name}: expected a fraction in (0, 1], got {target}")
    check_int("batch", batch, 1)
    check_int("n_batches", n_batches, 1)
    if grid is not None and (not isinstance(grid, (list, tuple)) or not grid
                             or not all(isinstance(g, dict) for g in grid)):
        raise ValueError(f"grid: expected a non-empty list of dicts of search settings, got {grid!r}")
    Q = as_queries(H_val, index.dim, "H_val")
    k = check_k(k, index.n_classes)
    metric_name, accuracy = _metric(index, Q, k, target_recall is not None, labels, recall_k)

    from tqdm.auto import tqdm

    def evaluate(settings_list):
        return [_try(index, Q, k, settings, metric_name, accuracy)
                for settings in tqdm(settings_list, desc=f"tune {index.method_name}", disable=not verbose,
                                     leave=False)]

    tried = evaluate(grid if grid is not None else index.method.tuning_grid(k))
    meeting = [t for t in tried if t[metric_name] >= target]
    if not meeting and grid is None:            # widen the method's grid, up to settings as exact as search gets
        tried += evaluate(index.method.wider_grid(k))
        meeting = [t for t in tried if t[metric_name] >= target]
    if not meeting:
        best = max(tried, key=lambda t: t[metric_name])
        raise ValueError(f"{target_name}: no setting reaches {metric_name} >= {target}; the best is "
                         f"{best[metric_name]:.4f} with {best['settings']}")
    report = {"metric": metric_name, "target": target, "k": k, "n_queries": Q.shape[0],
              **_fastest(index, Q, k, meeting, min(batch, Q.shape[0]), n_batches), "tried": tried}
    index.default_search = index.search_params(**report["chosen"]["settings"]).to_dict()
    index.info["tuned"] = report
    return report


def _fastest(index, Q: np.ndarray, k: int, meeting: list[dict], batch: int, n_batches: int) -> dict[str, Any]:
    """Time the settings in `meeting` against exact search on batches of Q (each entry gets its qps); the
    report's batch, chosen entry, exact search's qps, whether exact search is faster, and a verdict."""
    runners = {str(i): partial(index.search, k=k, **t["settings"]) for i, t in enumerate(meeting)}
    runners["exact"] = partial(index.search_exact, k=k)
    speed = compare_speed(runners, Q, batch, n_batches, rounds=min(n_batches, 2), warmup=1)
    qps = f"qps_batch{batch}"
    for i, t in enumerate(meeting):
        t[qps] = speed[str(i)]["qps"]
    chosen = max(meeting, key=lambda t: t[qps])
    exact_qps = speed["exact"]["qps"]
    search_exactly = exact_qps > chosen[qps]
    verdict = (f"exact search ({exact_qps:.0f} q/s) is faster than every setting meeting the target (best "
               f"{chosen[qps]:.0f} q/s): search() without settings now searches exactly" if search_exactly else
               f"{chosen['settings']} meets the target at x{chosen[qps] / exact_qps:.2f} exact search's speed")
    return {"batch": batch, "chosen": chosen, f"exact_{qps}": exact_qps, "search_exactly": search_exactly,
            "verdict": verdict}


def _batch_starts(n: int, batch: int, count: int) -> list[int]:
    if batch > n:
        raise ValueError(f"batch: {batch} is larger than the {n} queries available")
    return [(i * batch) % (n - batch + 1) for i in range(count)]


def compare_speed(runners: dict[str, Callable[[np.ndarray], object]], H: np.ndarray, batch: int,
                  n_batches: int, rounds: int = 5, warmup: int = 2,
                  before: Callable[[np.ndarray], object] | None = None) -> dict[str, dict]:
    """Time each runner on the same distinct batches H[s:s + batch], interleaving the runners in `rounds`
    rounds so that machine noise falls on all of them alike (warm-up calls first, untimed). before: called
    on each batch right before each call, untimed (a model layer's product, as in a forward pass).

    Returns {name: {"batch", "n_batches", "median_s", "qps"}}: median seconds per call, batch / median."""
    starts = _batch_starts(H.shape[0], batch, warmup + n_batches)
    for fn in runners.values():
        for s in starts[:warmup]:
            fn(H[s:s + batch])
    times: dict[str, list[float]] = {name: [] for name in runners}
    timed = starts[warmup:]
    for r in range(rounds):
        part = timed[r::rounds]
        for name, fn in runners.items():
            for s in part:
                Hb = H[s:s + batch]
                if before is not None:
                    before(Hb)
                t0 = time.perf_counter()
                fn(Hb)
                times[name].append(time.perf_counter() - t0)
    out = {}
    for name, ts in times.items():
        median = float(np.median(ts))
        out[name] = {"batch": batch, "n_batches": len(ts), "median_s": median, "qps": batch / median}
    return out
