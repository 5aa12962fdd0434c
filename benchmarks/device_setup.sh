# Sourced at the start of every device call: carried wheels (lark), the project installed editable.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | grep -v WARNING
