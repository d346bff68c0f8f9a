"""Deliberately broken copies of an engine directory: the negative controls a regression gate must catch.

    zero_sinks(src, dst)               every learned attention-sink logit set to 0
    wrong_quant_scale(src, dst)        one quantized tensor's scale off by 2x, layer 1's experts' down projection:
                                       MXFP4 e8m0 scale bytes +1 (the whole tensor, or one expert's slice);
                                       NVFP4 weight_scale_2 x2; FP8 weight_scale x2
    disable_sliding_window(src, dst)   every sliding-window layer attends to the full context (network.json only)
    drop_sinks(src, dst)               every layer's learned sink logits dropped (network.json only)

Each copies `src` to `dst` (the manifest stays: same model, quant and source checkpoint, so it is compared with the
same golden and thresholds) and rewrites the engine's own files: safetensors through the safetensors library
(safe, no pickle), network.json through spec.network (validated). Each returns a dict saying what it changed.
"""

from __future__ import annotations

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
    from spec.manifest import EngineManifest, is_engine_dir
    return EngineManifest.read(engine).quant if is_engine_dir(engine) else "bf16"


def wrong_quant_scale(src, dst, layer: int = 1, expert: int | None = None) -> dict:
    """expert None: the whole tensor (every expert of the layer's down projection), else one expert's slice."""
    engine = _copy(src, dst)
    quant = _engine_quant(engine)
    done: list[str] = []

    def edit(name, t):
        if done:
            return None
        if quant == "mxfp4":
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


def _edit_network(src, dst, fault: str, edit_attention) -> dict:
    """Copy the engine and rewrite only network.json, layer by layer: the declared structure every target
    derives from. Targets that execute network.json (the reference runtime, the ONNX/TensorRT graphs) run the
    edited network; those that read config.json instead (TensorRT-LLM) refuse the engine as inconsistent."""
    import dataclasses

    from spec.network import load_network, network_from_dict
    engine = _copy(src, dst)
    net_file = engine / "network.json"
    if not net_file.is_file():
        raise FaultError(f"{src}: no network.json (not an engine built by build-engine)")
    net = load_network(net_file)
    layers, changed = [], []
    for layer in net.layers:
        new = edit_attention(layer.attention)
        if new != layer.attention:
            changed.append(f"network.json layers[{layer.index}]")
        layers.append(dataclasses.replace(layer, attention=new))
    if not changed:
        raise FaultError(f"{src}: {fault} changes nothing in this network")
    network_from_dict(dataclasses.replace(net, layers=tuple(layers)).to_dict()).save(net_file)
    return {"fault": fault, "changed": changed}


def disable_sliding_window(src, dst) -> dict:
    """Sliding layers become full-attention layers in network.json; the weights are untouched."""
    import dataclasses

    from spec.network import KERNEL_SINK_TOKENS, KERNEL_SLIDING_WINDOW

    def edit(a):
        if a.kind != "sliding":
            return a
        kernels = tuple(p for p in a.kernels if p not in (KERNEL_SLIDING_WINDOW, KERNEL_SINK_TOKENS))
        return dataclasses.replace(a, kind="full", window=None, sink_tokens=0, kernels=kernels)
    return _edit_network(src, dst, "disable_sliding_window", edit)


def drop_sinks(src, dst) -> dict:
    """Every layer's learned sink logits dropped from network.json (the sinks tensors stay in the checkpoint)."""
    import dataclasses

    from spec.network import KERNEL_SINK_ATTENTION

    def edit(a):
        if not a.learned_sinks:
            return a
        return dataclasses.replace(a, learned_sinks=False, sinks=None,
                                   kernels=tuple(p for p in a.kernels if p != KERNEL_SINK_ATTENTION))
    return _edit_network(src, dst, "drop_sinks", edit)


FAULTS = {"zero_sinks": zero_sinks, "wrong_quant_scale": wrong_quant_scale,
          "disable_sliding_window": disable_sliding_window, "drop_sinks": drop_sinks}
