#!/usr/bin/env bash
# One device call: environment, install, block-mask build benchmark with FlexAttention.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -1
python3 -m pytest -q tests/test_blockmask.py -k gpu 2>&1 | tail -2
python3 benchmarks/bench_blockmask.py --repeats 20 --json "$OUT/bench_blockmask.json" 2>&1 | grep -v Warning
