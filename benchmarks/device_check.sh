#!/usr/bin/env bash
# One device call: install, GPU-tier tests, the quickstart demo, then optional extra commands ($@).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v WARNING
python3 -m pytest -q -m gpu -x --durations=5 tests/ 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
python3 examples/quickstart.py 2>&1 | tee "$OUT/quickstart.log" | tail -20
for cmd in "$@"; do echo "== $cmd"; bash -c "$cmd"; done
