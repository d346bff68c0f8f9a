"""Helpers for the serving tests and benchmarks: a tiny engine-like directory and a served repository.

make_tiny_engine(dest) copies the shipped tiny checkpoint (builder/assets/tiny: HF config + safetensors +
tokenizer.json with the Harmony specials) and writes an engine.json manifest, which is what build-engine makes for
`--model tiny --gpu cpu` minus the build records; tests do not depend on the build pipeline.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "builder" / "assets" / "tiny"


def make_tiny_engine(dest: str | Path, max_seq_len: int = 512, max_batch_size: int = 16) -> Path:
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(ASSETS / f, dest / f)
    (dest / "engine.json").write_text(json.dumps({
        "schema_version": 1, "model": "tiny", "gpu": "cpu", "quant": "bf16", "tp": 1, "ep": 1,
        "max_seq_len": max_seq_len, "max_batch_size": max_batch_size}, indent=2) + "\n", encoding="utf-8")
    return dest
