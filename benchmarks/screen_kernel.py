"""The screen's integer throughput against the machine's peak, and proof that its kernel vectorises.

    WOLINDEX_DATA=../shared/data python benchmarks/screen_kernel.py

Times the scan kernel alone (wolindex.engine.screen_cpu.screen_kernel: codes of every class against the
queries, top-C kept; no rescoring) on debian-lm-100k's codes (the synthetic layer without it) at several
batch sizes, median of repeated calls after warm-up, 2 threads. Reports int8 multiply-adds per second, bytes
of codes streamed per second, and the share of the tile's peak: threads x the multiply-adds of one dot
instruction per cycle (AVX-512 VNNI: a 512-bit vpdpbusd, 64; AVX2: a 256-bit vpmaddwd, 16) x the nominal
clock of /proc/cpuinfo. Also counts that instruction in the compiled kernel, which shows the tile in use."""
from __future__ import annotations

import argparse
import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
BATCHES = (1, 4, 16, 64, 256)
DOT = {"avx512-vnni": ("vpdpbusd", "zmm", 64), "avx2": ("vpmaddwd", "ymm", 16)}   # tile: instruction, registers, MACs


def nominal_ghz() -> float | None:
    try:
        with open("/proc/cpuinfo") as f:
            return next(float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")) / 1000
    except (OSError, StopIteration, ValueError):
        return None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--candidates", type=int, default=16)
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)

    import numba

    import wolindex
    from wolindex.contrib.datasets import debian_lm_100k_or_synthetic
    from wolindex.contrib.timing import machine_info, set_threads
    from wolindex.engine import screen as S
    from wolindex.engine import vnni

    set_threads(a.threads)
    ds = debian_lm_100k_or_synthetic()
    W, b = np.asarray(ds.W, np.float32), np.asarray(ds.b, np.float32)
    H = np.ascontiguousarray(ds.H_test[:4096], np.float32)
    index = wolindex.build(W, b, method="screen", verbose=False)
    codes = index.method.codes
    kernel = S._kernels().screen_kernel
    D, d = W.shape
    ghz = nominal_ghz()
    instruction, registers, macs_per_instruction = DOT.get(vnni.KIND, (None, None, None))
    peak = numba.get_num_threads() * macs_per_instruction * ghz * 1e9 if ghz and instruction else None
    rows = []
    for batch in BATCHES:
        quads, qscale, qconst, _ = codes.queries(H[:batch])
        n_ranges, run = S._split(batch, codes.blocks.shape[0])
        out_l = np.empty((batch, a.candidates), np.int64)
        out_s = np.empty((batch, a.candidates), np.float32)

        def call(q=quads, qs=qscale, qc=qconst, nr=n_ranges, ru=run, ol=out_l, os_=out_s):
            kernel(codes.blocks, codes.scan_corr, codes.scan_scale, codes.scan_bias, q, qs, qc, D, a.candidates, nr, ru,
                   ol, os_)

        for _ in range(3):
            call()
        calls = max(5, 400 // batch)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        median = float(np.median(times))
        macs = batch * D * codes.blocks.shape[1] * 4 / median
        rows.append({"batch": batch, "median_ms": median * 1e3, "gmac_per_s": macs / 1e9,
                     "share_of_peak": macs / peak if peak else None,
                     "codes_gb_per_s": codes.blocks.nbytes / median / 1e9})
        print(f"batch {batch:4d}: {median * 1e3:8.3f} ms  {macs / 1e9:7.1f} GMAC/s  "
              f"{'' if not peak else f'{macs / peak:6.1%} of peak  '}{codes.blocks.nbytes / median / 1e9:6.1f} GB/s")
    @numba.njit
    def probe(blocks, quads, out):   # the 4-query x 2-block tile the kernels inline, compiled on its own
        vnni.tile(4, 2, blocks, 0, quads, 0, out)

    probe(codes.blocks, codes.queries(H[:4])[0], np.empty((8, 16), np.int32))
    asm = "\n".join(list(kernel.inspect_asm().values()) + list(probe.inspect_asm().values()))
    found = len(re.findall(rf"^\s+{instruction}\s+[^\n]*{registers}", asm, re.M)) if instruction else 0
    result = {"dataset": ds.name, "n_classes": D, "dim": d, "candidates": a.candidates, "threads": a.threads,
              "tile": vnni.KIND, "nominal_ghz": ghz, "peak_gmac_per_s": peak / 1e9 if peak else None,
              "peak_rule": f"threads x {macs_per_instruction} int8 multiply-adds per cycle (one {instruction} on "
                           f"{registers} registers) x nominal clock" if instruction else "none for a plain Numba tile",
              "dot_instruction": instruction, "dot_registers": registers, "dot_in_asm": found,
              "rows": rows, "machine": machine_info(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    print(f"kernel: {vnni.KIND}" + (f", {found} {instruction} instructions on {registers} registers in the assembly "
                                    "of the scan kernel and of the 4 x 2 tile" if instruction else ""))
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / f"screen-kernel-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
