#!/usr/bin/env bash
# Host-time A/B in one device call: a baseline package (a directory holding pyproject.toml,
# sparseflash/, kernels/ and grammar/, e.g. `git archive <commit> pyproject.toml sparseflash kernels
# grammar README.md | tar -x -C .baseline`), then this working tree, each measured by the host
# experiments below on the same machine minutes apart (the device's host speed varies 1.5-2x
# between machines, so compare within one call). Results: $OUT/host_ab.tar.gz.
#
#     bash benchmarks/experiments/host_ab.sh .baseline        # on a GPU, from the repository root
set -u
baseline=$1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
work=$(mktemp -d)
for side in before after; do
    if [ "$side" = before ]; then
        python3 -m pip install -q --no-build-isolation --no-deps "$baseline" 2>&1 | grep -v WARNING
    else
        python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v WARNING
    fi
    python3 -c "import sparseflash, sys; print('$side:', sparseflash.__file__)"
    for script in host_paths autograd_costs exposed_host; do
        echo "== $side $script"
        python3 benchmarks/experiments/$script.py 2>&1 | tee "$work/${script}_$side.txt" | grep -v "^ " | head -40
        cp "$OUT/$script.json" "$work/${script}_$side.json" && rm "$OUT/$script.json"
    done
done
tar -czf "$OUT/host_ab.tar.gz" -C "$work" .
