#!/usr/bin/env bash
# One device call: install, GPU-tier tests, the quickstart demo, then optional extra commands ($@).
set -u
source benchmarks/device_setup.sh
python3 -m pytest -q -m gpu -x --durations=5 tests/ 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
python3 examples/quickstart.py 2>&1 | tee "$OUT/quickstart.log" | tail -20
for cmd in "$@"; do echo "== $cmd"; bash -c "$cmd"; done
