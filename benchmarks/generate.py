"""End-to-end decoding with the debian-lm-100k model: the exact output layer against indexed ones.

    WOLINDEX_DATA=../shared/data python benchmarks/generate.py --methods adaptive lss
    WOLINDEX_DATA=../shared/data python benchmarks/generate.py --methods exact lss:n_buckets=256,rounds=1 \\
        --prompts 2 --new-tokens 4 --batch-size 2 --train-rows 20000 --tune-rows 256 --out /tmp   # smoke run

Prompts: --prompts windows of --prompt-len tokens drawn (--seed) from the train split's token ids, the only
text the data folder ships. Each is decoded greedily for --new-tokens tokens by the PyTorch port of the model
(wolindex.contrib.debian_torch: KV cache; a full context is re-encoded from its last 64 tokens) on the CPU with
--threads threads (torch, BLAS and Numba). Heads: `torch-exact` (torch matmul over W + argmax) and one
IndexedHead (k = --k) per method of --methods (NAME or NAME:setting=value,...: build settings), built on the
train split's hidden states and tuned to --target-p1 at batch 1 on validation states (0: the method's default
settings), saved under --cache and loaded from there when present. All heads are timed in the same run,
interleaved prompt by prompt in a rotating order, after a warm-up decoding.

Recorded per head, at batch 1 and at --batch-size: tokens/s (new tokens over decoding time, the prompt's
forward pass excluded), the head's share of the decoding time, and agreement with the exact head's tokens
(the share of identical tokens position by position, the mean identical-prefix length). On the hidden states
of the exact batch-1 decoding, per index searched for --sample-k candidates: the total variation distance per
step between its top-p (--top-p) sampling distribution (wolindex.sampling.distribution, what wolindex.sample
draws from: top_p measured against the estimated normaliser, the exact nucleus where it reaches past the
candidates; also without that fallback) and the exact top-p distribution over all classes, the share of
steps that fell back, and the normaliser estimate's |error| against the exact log-sum-exp. One JSON file in --out,
generate-debian-lm-100k-<date>.json, with threads, BLAS (threadpoolctl), machine, torch and commit."""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

import wolindex
from wolindex.contrib.datasets import cache_dir, debian_lm_100k, debian_lm_100k_path
from wolindex.contrib.debian_torch import DebianLM, decode
from wolindex.contrib.timing import machine_info, set_threads
from wolindex.layer import OutputLayer
from wolindex.sampling import candidate_probs, distribution, log_normaliser, logsumexp
from wolindex.torch import IndexedHead

RESULTS = Path(__file__).parent / "results"
EXACT = "torch-exact"
STATE_BLOCK = 256        # hidden states per block in the sampling and normaliser measurements


def parse_method(spec: str) -> tuple[str, dict]:
    """'lss:n_buckets=2048,rounds=2' -> ('lss', {'n_buckets': 2048, 'rounds': 2}) (values read as JSON)."""
    name, _, rest = spec.partition(":")
    settings = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    return name, settings


def get_index(spec: str, layer: OutputLayer, data, args, say):
    """The index of a --methods entry: loaded from --cache when built before with the same settings, else built
    on the train split, tuned at batch 1 to --target-p1 on validation states, and saved there."""
    name, settings = parse_method(spec)
    key = json.dumps([name, settings, args.train_rows, args.target_p1, args.k, args.tune_rows], sort_keys=True)
    path = args.cache / f"{name}-{hashlib.sha1(key.encode()).hexdigest()[:12]}.wol"
    if path.exists():
        say(f"{spec}: loading {path}")
        return wolindex.load(path, layer=layer)
    say(f"{spec}: building on {args.train_rows or len(data.y_train):,} training states ...")
    rows = slice(0, args.train_rows or None)
    train = {} if name == "exact" else {"train": np.ascontiguousarray(data.H_train[rows], np.float32),
                                        "labels": data.y_train[rows]}
    index = wolindex.build(layer, method=name, **train, **settings)
    if args.target_p1 > 0 and name != "exact":
        H_tune = np.ascontiguousarray(data.H_test[:args.tune_rows], np.float32)
        try:
            report = index.tune(H_tune, args.k, target_p1=args.target_p1, batch=1, n_batches=min(64, args.tune_rows))
            say(f"  tuned: {report['chosen']['settings']}")
        except ValueError as err:
            say(f"  {err}; using its last (most thorough) setting")
            index.default_search = index.search_params(**index.method.tuning_grid(args.k)[-1]).to_dict()
    args.cache.mkdir(parents=True, exist_ok=True)
    index.save(path, with_layer=False)
    return index


class TimedHead:
    """pick(hidden (B, d)) -> (B,) next ids through `fn`, adding the seconds spent to `seconds`; keeps the
    hidden states it saw when `keep_states` (outside the timed part)."""

    def __init__(self, fn, keep_states: bool = False):
        self.fn, self.seconds, self.states = fn, 0.0, [] if keep_states else None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.fn(hidden)
        self.seconds += time.perf_counter() - t0
        if self.states is not None:
            self.states.append(hidden)
        return out


def run_decoding(model, prompts: torch.Tensor, heads: dict, n_new: int, batch: int, keep_states: bool = False):
    """Decode every batch of prompts with every head, interleaved (the order rotating by batch). Returns
    {head: {"tokens" (P, n_new), "prefill_s", "decode_s", "head_s", "states" (S, d) or None}}."""
    names = list(heads)
    out = {name: {"tokens": [], "prefill_s": 0.0, "decode_s": 0.0, "head_s": 0.0, "states": []} for name in names}
    for i, lo in enumerate(range(0, len(prompts), batch)):
        for name in names[i % len(names):] + names[:i % len(names)]:
            pick = TimedHead(heads[name], keep_states and name == EXACT)
            run = decode(model, prompts[lo:lo + batch], n_new, pick)
            r = out[name]
            r["tokens"].append(run.tokens)
            r["prefill_s"] += run.prefill_s
            r["decode_s"] += run.decode_s
            r["head_s"] += pick.seconds
            if pick.states is not None:
                r["states"].extend(pick.states)
    for r in out.values():
        r["tokens"] = torch.cat(r["tokens"]).numpy()
        r["states"] = torch.cat(r["states"]).numpy() if r["states"] else None
    return out


def agreement(tokens: np.ndarray, exact: np.ndarray) -> dict:
    """Share of identical tokens (position by position) and mean length of the identical prefix."""
    same = tokens == exact
    prefix = np.where(same.all(axis=1), same.shape[1], np.argmin(same, axis=1))
    return {"identical_tokens": float(same.mean()), "mean_identical_prefix": float(prefix.mean())}


def decoding_rows(runs: dict, batch: int) -> dict:
    """Per head: tokens/s, its speedup over the exact head, the head's share of the decoding time, ms per step
    (head and all), prefill seconds and agreement with the exact head's tokens."""
    exact = runs[EXACT]
    exact_rate = exact["tokens"].size / exact["decode_s"]
    rows = {}
    for name, r in runs.items():
        steps = r["tokens"].size / batch
        rate = r["tokens"].size / r["decode_s"]
        rows[name] = {"batch": batch, "tokens_per_s": rate, "speedup": rate / exact_rate,
                      "head_share": r["head_s"] / r["decode_s"], "head_ms_per_step": 1e3 * r["head_s"] / steps,
                      "step_ms": 1e3 * r["decode_s"] / steps, "prefill_s": r["prefill_s"],
                      **agreement(r["tokens"], exact["tokens"])}
    return rows


def exact_top_p(logits: np.ndarray, top_p: float):
    """logits (B, D) float64 -> per row: the exact top-p distribution's threshold logit, the log of its kept
    mass and the log-sum-exp over all classes."""
    lse = logsumexp(logits)
    top = -np.sort(-logits, axis=1)
    kept = candidate_probs(top, 1.0, None, top_p, lse) > 0
    threshold = top[np.arange(len(top)), kept.sum(axis=1) - 1]
    return threshold, logsumexp(np.where(kept, top, -np.inf)), lse


def sampling_rows(indexes: dict, layer: OutputLayer, states: np.ndarray, k: int, top_p: float) -> dict:
    """Per index: TV distance per state between the top-p distribution wolindex.sample draws from (k
    candidates; the exact nucleus where it reaches past them) and the exact one, the same without that
    fallback, the share of states that took it, and the normaliser estimate's |error|; summarised by median,
    mean and 99th percentile."""
    kinds = ("sampled", "without_fallback")
    tv = {name: {kind: [] for kind in kinds} for name in indexes}
    err = {name: [] for name in indexes}
    fallback = {name: 0 for name in indexes}
    for lo in range(0, len(states), STATE_BLOCK):
        H = np.ascontiguousarray(states[lo:lo + STATE_BLOCK], np.float32)
        logits = (H @ layer.W.T + layer.b).astype(np.float64)
        threshold, log_kept, lse = exact_top_p(logits, top_p)
        for name, index in indexes.items():
            scores, labels = index.search(H, k)
            err[name].append(np.abs(log_normaliser(index, H, scores, labels) - lse))
            for kind in kinds:
                dist = distribution(index, H, top_p=top_p, k=k, exact_fallback=kind == "sampled")
                if kind == "sampled":
                    fallback[name] += int(dist.exact.sum())
                row = np.repeat(np.arange(len(H)), np.diff(dist.indptr))
                exact = np.where(dist.labels >= 0, logits[row, np.maximum(dist.labels, 0)], -np.inf)   # same products
                p = np.where(exact >= threshold[row], np.exp(exact - log_kept[row]), 0.0)
                gap = np.bincount(row, np.abs(dist.probs - p), len(H))
                tv[name][kind].append(0.5 * (gap + 1.0 - np.bincount(row, p, len(H))))

    def summary(values):
        v = np.concatenate(values)
        return {"median": float(np.median(v)), "mean": float(v.mean()), "p99": float(np.percentile(v, 99))}

    return {"n_states": int(len(states)), "k": k, "top_p": top_p,
            "methods": {name: {"tv_top_p": summary(tv[name]["sampled"]),
                               "tv_top_p_without_fallback": summary(tv[name]["without_fallback"]),
                               "exact_fallback_share": fallback[name] / len(states),
                               "log_normaliser_abs_error": summary(err[name])} for name in indexes}}


def commit() -> dict:
    root = Path(__file__).resolve().parents[1]

    def git(*a):
        return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def prompts_from_train(n: int, length: int, seed: int) -> torch.Tensor:
    """n windows of `length` token ids from the train split, (n, length) int64."""
    with np.load(debian_lm_100k_path() / "tokens_train.npz") as z:
        tokens = z["tokens"]
    starts = np.sort(np.random.default_rng(seed).choice(len(tokens) - length, n, replace=False))
    return torch.from_numpy(np.stack([tokens[s:s + length] for s in starts]).astype(np.int64))


def report(say, decoding: dict, sampling: dict) -> None:
    for batch, rows in decoding.items():
        for name, r in rows.items():
            say(f"batch {batch:>3s} {name:28s} {r['tokens_per_s']:8.1f} tok/s  x{r['speedup']:5.2f}  head "
                f"{100 * r['head_share']:5.1f} %  identical {r['identical_tokens']:.4f}  prefix "
                f"{r['mean_identical_prefix']:6.1f}")
    for name, r in sampling["methods"].items():
        say(f"sampling {name:28s} TV mean {r['tv_top_p']['mean']:.4f} median {r['tv_top_p']['median']:.4f} p99 "
            f"{r['tv_top_p']['p99']:.4f}  fallback {100 * r['exact_fallback_share']:.1f} %  |log Z error| median "
            f"{r['log_normaliser_abs_error']['median']:.4f} p99 {r['log_normaliser_abs_error']['p99']:.4f}")


def arguments(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", nargs="+", default=["adaptive", "lss"], help="NAME or NAME:setting=value,...")
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16, help="the second batch size (0: batch 1 only)")
    ap.add_argument("--k", type=int, default=1, help="candidates of the greedy IndexedHead (and of tuning)")
    ap.add_argument("--target-p1", type=float, default=0.99, help="tuning target (0: default settings)")
    ap.add_argument("--train-rows", type=int, default=0, help="training states to build on (0: all)")
    ap.add_argument("--tune-rows", type=int, default=2048, help="validation states to tune on")
    ap.add_argument("--sample-k", type=int, default=64)
    ap.add_argument("--top-p", type=float, default=0.9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=cache_dir() / "generate")
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args(argv)


def main(argv=None):
    args = arguments(argv)
    set_threads(args.threads)
    torch.set_num_threads(args.threads)
    say = print
    data = debian_lm_100k()
    model = DebianLM.load()
    layer = OutputLayer.from_arrays(data.W, data.b, data.class_counts)
    indexes = {spec: get_index(spec, layer, data, args, say) for spec in args.methods}
    W, b = model.W, model.b
    heads = {EXACT: lambda h: torch.argmax(torch.addmm(b, h, W.T), dim=1)}
    for spec, index in indexes.items():
        heads[spec] = (lambda head: lambda h: head(h)[1][:, 0])(IndexedHead(index, k=args.k))
    prompts = prompts_from_train(args.prompts, args.prompt_len, args.seed)

    say("warm-up ...")
    run_decoding(model, prompts[:1], heads, min(args.new_tokens, 8), 1)
    say(f"decoding {args.prompts} prompts x {args.new_tokens} tokens at batch 1 ...")
    runs = run_decoding(model, prompts, heads, args.new_tokens, 1, keep_states=True)
    decoding = {"1": decoding_rows(runs, 1)}
    if args.batch_size > 1:
        say(f"... and at batch {args.batch_size}")
        batched = run_decoding(model, prompts, heads, args.new_tokens, args.batch_size)
        decoding[str(args.batch_size)] = decoding_rows(batched, args.batch_size)
    states = runs[EXACT]["states"]
    say(f"sampling and normaliser measurements on {len(states):,} decoding states ...")
    sampling = sampling_rows(indexes, layer, states, args.sample_k, args.top_p)
    report(say, decoding, sampling)
    result = {
        "benchmark": "generate", "dataset": data.name, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "threads": args.threads, "dtype": "float32", "machine": machine_info(), **commit(),
        "torch": {"version": torch.__version__, "threads": torch.get_num_threads(),
                  "parallel_info": torch.__config__.parallel_info()},
        "indexes": {spec: {"method": ix.method_name, "build": ix.build_params.to_dict(),
                           "search": ix.default_search, "tuned": ix.info.get("tuned", {}).get("chosen"),
                           "search_exactly": bool(ix.info.get("tuned", {}).get("search_exactly"))}
                    for spec, ix in indexes.items()},
        "protocol": "greedy decoding, KV cache, context re-encoded from its last 64 tokens when full; heads "
                    "interleaved per prompt batch in a rotating order after a warm-up decoding; tokens/s over "
                    "decoding time without the prompt's forward pass",
        "decoding": decoding, "sampling": sampling}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"generate-{data.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=1, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
    say(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
