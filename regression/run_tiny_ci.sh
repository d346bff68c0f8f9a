#!/usr/bin/env bash
# CI: the tiny regression gate (see regression/ci.py). Builds the tiny bf16, fp8, mxfp4 and nvfp4 engines,
# runs the `tiny` suite on them (reference runtime) and once through a real Triton server; reports under
# engines/regression/. Extra arguments go to regression.ci (e.g. --formats bf16,mxfp4).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m regression.ci --out engines/regression "$@"
