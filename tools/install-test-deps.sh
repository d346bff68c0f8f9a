#!/usr/bin/env bash
# Installs the oracles the test suite checks against into the active environment.
# They need installs pip's resolver would refuse or botch (FIELD-NOTES §4):
#  - gpt-oss (OpenAI's torch reference) declares Python >= 3.12 but its torch model runs on 3.11;
#  - nvidia-modelopt's [hf] extra would downgrade transformers, so it goes in with --no-deps;
#  - torchao likewise, to keep the pinned CPU torch.
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d "$tmp" gpt-oss==0.0.9
python -m pip install -q --no-deps --ignore-requires-python "$tmp"/gpt_oss-*.whl
python -m pip install -q --no-deps nvidia-modelopt==0.47.0 torchao==0.18.0
python -m pip install -q ninja nvidia-ml-py omegaconf "pulp<4" scipy
