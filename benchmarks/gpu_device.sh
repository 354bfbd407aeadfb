#!/usr/bin/env bash
# The GPU check in one call of the device tool, from the repository root, with the bundle carried:
#   run(command="bash benchmarks/gpu_device.sh", carry=["gpu-bundle"], timeout_s=560)
# after `WOLINDEX_DATA=../shared/data python benchmarks/gpu_bundle.py gpu-bundle` here. The device image has
# numpy, numba, scikit-learn, tqdm, threadpoolctl, pytest and CuPy; wolindex runs from the checkout.
# The image has no pytest-xdist: `-o addopts=` runs the tests in one process.
# Writes the device name, the GPU tests' log, the benchmark's log and its result JSON to $OUT.
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
out="${OUT:-gpu-results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/device.txt"
timeout 120 python3 -m pytest -q -x -p no:cacheprovider -o addopts= tests/gpu 2>&1 | tee "$out/tests-gpu.log"
timeout 400 python3 benchmarks/gpu.py --bundle gpu-bundle --out "$out" 2>&1 | tee "$out/benchmark.log"
