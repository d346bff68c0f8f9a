"""Deliberately broken copies of an engine directory: the negative controls a regression gate must catch.

    zero_sinks(src, dst)               every learned attention-sink logit set to 0
    wrong_quant_scale(src, dst)        one quantized tensor's scale off by 2x, layer 1's experts' down projection:
                                       MXFP4 e8m0 scale bytes +1 (the whole tensor, or one expert's slice);
                                       NVFP4 weight_scale_2 x2; FP8 weight_scale x2
    disable_sliding_window(src, dst)   every sliding-window layer attends to the full context

Each copies `src` to `dst` (the manifest stays: same model, quant and source checkpoint, so it is compared with the
same golden and thresholds) and rewrites the engine's own files: safetensors through the safetensors library
(safe, no pickle), network.json through spec.network (validated), config.json as JSON. Each returns a dict
saying what it changed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file


class FaultError(ValueError):
    pass


def _copy(src, dst) -> Path:
    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("triton"))
    return dst


def _files(engine: Path) -> list[Path]:
    files = sorted(engine.glob("*.safetensors"))
    if not files:
        raise FaultError(f"{engine}: no *.safetensors")
    return files


def _rewrite(engine: Path, edit) -> list[str]:
    """edit(name, tensor) -> new tensor or None (unchanged). Rewrites each file that had an edit."""
    changed = []
    for f in _files(engine):
        with safe_open(str(f), framework="pt") as g:
            meta = g.metadata()
            tensors = {k: g.get_tensor(k) for k in g.keys()}
        hit = False
        for name in list(tensors):
            new = edit(name, tensors[name])
            if new is not None:
                tensors[name] = new.contiguous()
                changed.append(name)
                hit = True
        if hit:
            tmp = f.with_suffix(".tmp")
            save_file(tensors, str(tmp), metadata=meta)
            tmp.replace(f)
    return changed


def zero_sinks(src, dst) -> dict:
    engine = _copy(src, dst)

    def edit(name, t):
        if name.endswith(".sinks") or name.endswith("attn.sinks"):
            return t.new_zeros(t.shape)
        return None
    changed = _rewrite(engine, edit)
    if not changed:
        raise FaultError(f"{src}: no sinks tensors found")
    return {"fault": "zero_sinks", "tensors": changed}


def _engine_quant(engine: Path) -> str:
    f = engine / "engine.json"
    return json.loads(f.read_text())["quant"] if f.is_file() else "bf16"


def wrong_quant_scale(src, dst, layer: int = 1, expert: int | None = None) -> dict:
    """expert None: the whole tensor (every expert of the layer's down projection), else one expert's slice."""
    engine = _copy(src, dst)
    quant = _engine_quant(engine)
    done: list[str] = []

    def edit(name, t):
        if done:
            return None
        if quant in ("mxfp4", "w4a8-mxfp4-mxfp8"):
            # HF MXFP4: ...experts.down_proj_scales uint8 e8m0 [E, out, in/32]; +1 doubles each block's scale.
            if name.endswith(f"layers.{layer}.mlp.experts.down_proj_scales"):
                out = t.clone()
                part = out if expert is None else out[expert]
                if int(part.max()) >= 254:
                    raise FaultError(f"{name}: scale bytes already at the top of e8m0")
                part += 1
                done.append(f"{name}{'' if expert is None else f'[{expert}]'}: e8m0 bytes +1 (x2)")
                return out
        elif quant in ("nvfp4", "fp8", "w4a16-nvfp4"):
            # ModelOpt layout: the experts' down projection has one fp32 global scale (NVFP4 weight_scale_2, FP8
            # weight_scale) for all experts.
            key = "weight_scale_2" if "nvfp4" in quant else "weight_scale"
            if name.endswith(f"layers.{layer}.mlp.experts.down_proj_{key}"):
                done.append(f"{name} x2")
                return t * 2
        return None
    _rewrite(engine, edit)
    if not done:
        raise FaultError(f"{src}: no quantized tensor scale found for quant {quant!r} in layer {layer}")
    return {"fault": "wrong_quant_scale", "quant": quant, "tensors": done}


def disable_sliding_window(src, dst) -> dict:
    """Sliding layers become full-attention layers in network.json (what every target executes), and the HF
    config's window (what TensorRT-LLM reads) covers the whole context; the weights are untouched."""
    import dataclasses

    from spec.network import PLUGIN_SINK_TOKENS, PLUGIN_SLIDING_WINDOW, Network
    engine = _copy(src, dst)
    changed = []
    net_file = engine / "network.json"
    if net_file.is_file():
        net = Network.load(net_file)
        layers = []
        for layer in net.layers:
            a = layer.attention
            if a.kind == "sliding":
                plugins = tuple(p for p in a.plugins if p not in (PLUGIN_SLIDING_WINDOW, PLUGIN_SINK_TOKENS))
                a = dataclasses.replace(a, kind="full", window=None, sink_tokens=0, plugins=plugins)
                changed.append(f"network.json layers[{layer.index}]")
            layers.append(dataclasses.replace(layer, attention=a))
        Network.from_dict(dataclasses.replace(net, layers=tuple(layers)).to_dict()).save(net_file)
    # The checkpoint config must keep gpt-oss's sliding/full alternation (checkpoint refuses anything
    # else), so its window grows to the whole context instead: a window that covers every position is none.
    cfg_file = engine / "config.json"
    cfg = json.loads(cfg_file.read_text())
    if cfg.get("sliding_window"):
        cfg["sliding_window"] = int(cfg.get("max_position_embeddings") or 131072)
        changed.append(f"config.json sliding_window -> {cfg['sliding_window']}")
    cfg_file.write_text(json.dumps(cfg, indent=2) + "\n")
    if not changed:
        raise FaultError(f"{src}: no sliding-window layers to disable")
    return {"fault": "disable_sliding_window", "changed": changed}


FAULTS = {"zero_sinks": zero_sinks, "wrong_quant_scale": wrong_quant_scale,
          "disable_sliding_window": disable_sliding_window}
