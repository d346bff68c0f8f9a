#!/usr/bin/env bash
# Creates .venv (Python 3.11) and installs the project; with --test also the test oracles.
# Idempotent: a second run only checks what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' || { echo "bootstrap: needs Python >= 3.11" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
log=$(mktemp)
python -m pip install -q --disable-pip-version-check -e ".${extras}" >"$log" 2>&1 || { cat "$log" >&2; rm -f "$log"; exit 1; }
python -c "import builder" # fails loudly if the install did not take
# TensorRT-RTX builds plans for RTX/L40S-class GPUs without a GPU. Optional: where its wheels do not
# install, build-engine still writes the ONNX graph and records that no plan was built.
if ! python -c "import tensorrt_rtx" 2>/dev/null; then
  python -m pip install -q --disable-pip-version-check -e ".[tensorrt-rtx]" >"$log" 2>&1 \
    || echo "bootstrap: tensorrt-rtx did not install (engines will have no TensorRT plan): $(tail -1 "$log")" >&2
fi
rm -f "$log"
if [ -n "$extras" ]; then
  python -c "import gpt_oss.torch.model, modelopt, torchao" 2>/dev/null || bash tools/install-test-deps.sh
fi
