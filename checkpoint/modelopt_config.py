"""ModelOpt's quantization configs: `hf_quant_config.json` and config.json's `quantization_config`.

What nvidia-modelopt 0.47's export_hf_checkpoint writes (modelopt/torch/export/unified_export_hf.py,
quant_utils.process_layer_quant_config, convert_hf_config.convert_hf_quant_config_format), checked against a
real export in tests/checkpoint/test_quant_export.py:

  hf_quant_config.json  {"producer": {"name": "modelopt", "version": "0.47.0"},
                         "quantization": {"quant_algo": "NVFP4" | "W4A16_NVFP4" | "FP8",
                                          "kv_cache_quant_algo": null | "FP8",
                                          "group_size": 16,                      (NVFP4 algos only)
                                          "exclude_modules": [sorted HF module names / wildcards]}}
  config.json           "quantization_config": {"config_groups": {"group_0": {[input_activations,] weights,
                         "targets": ["Linear"]}}, "ignore": <exclude_modules>, "quant_algo": ...,
                         ["kv_cache_scheme": {"dynamic": false, "num_bits": 8, "type": "float"},]
                         "producer": {...}, "quant_method": "modelopt"}

TensorRT-LLM reads hf_quant_config.json; vLLM reads either; transformers 5.x has no "modelopt" loader.
We write ModelOpt 0.47's producer block because consumers key on that layout; `writer` (an extra
top-level key of hf_quant_config.json, ignored by loaders) records that this project wrote the file.
"""

from __future__ import annotations

import json
from pathlib import Path

from checkpoint.config_io import read_json
from checkpoint.errors import CheckpointError

HF_QUANT_CONFIG = "hf_quant_config.json"
PRODUCER = {"name": "modelopt", "version": "0.47.0"}
NVFP4_GROUP = 16
KV_ALGOS = (None, "FP8")

_FP4 = {"dynamic": False, "num_bits": 4, "type": "float", "group_size": NVFP4_GROUP}
_FP8 = {"dynamic": False, "num_bits": 8, "type": "float"}
# quant_algo -> its config group (convert_hf_quant_config_format) and whether it carries group_size.
ALGOS = {
    "NVFP4": ({"input_activations": dict(_FP4), "weights": dict(_FP4)}, True),
    "W4A16_NVFP4": ({"weights": dict(_FP4)}, True),
    "FP8": ({"input_activations": dict(_FP8), "weights": dict(_FP8)}, False),
}

# Module group (spec.network.QUANT_GROUPS) -> the HF modules ModelOpt lists in exclude_modules when the
# group stays unquantized (its summariser turns a whole unquantized attention block into "self_attn*").
EXCLUDED_MODULES = {
    "embed": ("model.embed_tokens",),
    "lm_head": ("lm_head",),
    "router": ("model.layers.{layer}.mlp.router",),
    "attention": ("model.layers.{layer}.self_attn*",),
}


def exclude_modules(groups: dict[str, str], num_layers: int) -> list[str]:
    """The HF modules of every unquantized group; a group missing from `groups` (the routers of a dense
    model) has no modules to list."""
    out = []
    for group, modules in EXCLUDED_MODULES.items():
        if groups.get(group) == "bf16":
            for m in modules:
                out += [m.format(layer=i) for i in range(num_layers)] if "{layer}" in m else [m]
    return sorted(out)


def quant_configs(quant_algo: str, groups: dict[str, str], num_layers: int, kv_cache_quant_algo: str | None = None,
                  writer: str | None = None) -> tuple[dict, dict]:
    """(hf_quant_config.json, config.json quantization_config) for a checkpoint of `quant_algo`."""
    if quant_algo not in ALGOS:
        raise ValueError(f"unsupported quant_algo {quant_algo!r}; supported: {', '.join(ALGOS)}")
    group, has_group_size = ALGOS[quant_algo]
    excluded = exclude_modules(groups, num_layers)
    quantization = {"quant_algo": quant_algo, "kv_cache_quant_algo": kv_cache_quant_algo}
    if has_group_size:
        quantization["group_size"] = NVFP4_GROUP
    quantization["exclude_modules"] = excluded
    hf_quant = {"producer": dict(PRODUCER), "quantization": quantization}
    if writer:
        hf_quant["writer"] = writer
    qc = {"config_groups": {"group_0": {**json.loads(json.dumps(group)), "targets": ["Linear"]}},
          "ignore": list(excluded), "quant_algo": quant_algo}
    if kv_cache_quant_algo == "FP8":
        qc["kv_cache_scheme"] = dict(_FP8)
    qc["producer"] = dict(PRODUCER)
    qc["quant_method"] = "modelopt"
    return hf_quant, qc


def read_quant_config(folder: Path, raw_config: dict) -> dict | None:
    """The `quantization` block of a ModelOpt checkpoint ({quant_algo, kv_cache_quant_algo, group_size,
    exclude_modules}), from hf_quant_config.json or else config.json's quantization_config; None if the
    checkpoint is not a ModelOpt one. Unsupported algorithms are an error naming the file and the fix."""
    path = Path(folder) / HF_QUANT_CONFIG
    qc = raw_config.get("quantization_config") or {}
    if path.is_file():
        data = read_json(path)
        q = data.get("quantization")
        where = path
        if not isinstance(q, dict):
            raise CheckpointError(f"{path}: no \"quantization\" object; fix: restore the file ModelOpt exported")
    elif qc.get("quant_method") == "modelopt":
        q = {"quant_algo": qc.get("quant_algo"), "kv_cache_quant_algo": "FP8" if qc.get("kv_cache_scheme") else None,
             "group_size": qc.get("config_groups", {}).get("group_0", {}).get("weights", {}).get("group_size"),
             "exclude_modules": qc.get("ignore", [])}
        where = Path(folder) / "config.json"
    else:
        return None
    algo, kv = q.get("quant_algo"), q.get("kv_cache_quant_algo")
    if algo not in ALGOS:
        raise CheckpointError(f"{where}: quant_algo {algo!r} is not supported; fix: export with one of "
                              f"{', '.join(ALGOS)} (NVFP4 experts, weight-only NVFP4, or FP8)")
    if kv not in KV_ALGOS:
        raise CheckpointError(f"{where}: kv_cache_quant_algo {kv!r} is not supported; fix: use FP8 or none")
    if ALGOS[algo][1] and q.get("group_size", NVFP4_GROUP) != NVFP4_GROUP:
        raise CheckpointError(f"{where}: group_size {q.get('group_size')} for {algo}; NVFP4 blocks hold "
                              f"{NVFP4_GROUP}; fix: re-export with group_size 16")
    return {"quant_algo": algo, "kv_cache_quant_algo": kv, "group_size": q.get("group_size"),
            "exclude_modules": list(q.get("exclude_modules") or [])}


def source_quant(folder: str | Path) -> str:
    """The registry quant format a checkpoint folder stores, from its config files alone (no tensors read, no
    torch): HF with quantization_config mxfp4 and OpenAI original -> "mxfp4"; a ModelOpt export -> its
    format (nvfp4, w4a16-nvfp4, fp8); plain HF -> "bf16". Loading checks the tensors agree
    (checkpoint.convert.load_canonical)."""
    from checkpoint.config_io import config_kind
    from spec.registry.quant_formats import QUANT_FORMATS
    folder = Path(folder)
    raw = read_json(folder / "config.json")
    kind = config_kind(raw)
    if kind == "openai":
        return "mxfp4"
    if (raw.get("quantization_config") or {}).get("quant_method") == "mxfp4":
        return "mxfp4"
    modelopt = read_quant_config(folder, raw)
    if modelopt is not None:
        return next(name for name, q in QUANT_FORMATS.items()
                    if q.trtllm_quant_algo == modelopt["quant_algo"] and q.checkpoint in ("hf-nvfp4", "hf-fp8"))
    return "bf16"
