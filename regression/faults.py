"""Negative controls, in one place: deliberately broken variants that a regression gate or a test must notice,
as edits of the network definition or of the weights. Nothing else breaks a model on purpose (the exporter and
the runtimes have no fault switches: they compute what the network and the weights say).

Pure edits, no files:
    Network -> Network (spec.network, validated; FaultError when the edit changes nothing)
        drop_sinks               every layer's learned sink logits dropped (the sink tensors stay unread)
        disable_sliding_window   every sliding-window layer attends to the full context
        unclamp_swiglu           SwiGLU without its clamps
        drop_router_bias         router logits without the router bias
    checkpoint tensors -> the tensors they replace (stored names; FaultError when nothing matches)
        zero_sinks               every learned attention-sink logit set to 0
        wrong_quant_scale        one quantized tensor's scale off by 2x, layer 1's experts' down projection:
                                 MXFP4 e8m0 scale bytes +1 (the whole tensor, or one expert's slice);
                                 NVFP4 weight_scale_2 x2; FP8 weight_scale x2

Exported ONNX graphs (the KV cache's negative controls: a graph computes what its network says, so a wrong cache
layout can only be made by editing the graph itself; ModelProto -> ModelProto copy, FaultError when nothing matches):
        ring_modulus_short       sliding layers' ring row = position mod (W - 2) instead of mod W: a key still
                                 inside the window is overwritten before its last query (mod W - 1 would go
                                 unnoticed, rightly: a step attends over the past ring and its own new key)

Engine directories (engine-regression's negative controls): `break_engine(fault, src, dst)` copies `src` to
`dst` (the manifest stays: same model, quant and source checkpoint, so it is compared with the same golden and
thresholds) and applies one edit to the copy's network.json (through spec.network) or its safetensors files
(through the safetensors library: safe, no pickle); it returns a dict saying what it changed.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

from safetensors import safe_open
from safetensors.torch import save_file

from spec.network import (KERNEL_SINK_ATTENTION, KERNEL_SINK_TOKENS, KERNEL_SLIDING_WINDOW, NETWORK_FILE, MoE, Network,
                          load_network, network_from_dict)


class FaultError(ValueError):
    pass


# -- network edits ---------------------------------------------------------------------------------------
def _edit_layers(net: Network, fault: str, attention=None, mlp=None) -> Network:
    layers = []
    for layer in net.layers:
        a = attention(layer.attention) if attention else layer.attention
        m = mlp(layer.mlp) if mlp else layer.mlp
        layers.append(dataclasses.replace(layer, attention=a, mlp=m))
    edited = dataclasses.replace(net, layers=tuple(layers))
    if edited == net:
        raise FaultError(f"{fault} changes nothing in network {net.name!r}")
    return network_from_dict(edited.to_dict())            # a valid network.json, as every loader would see it


def drop_sinks(net: Network) -> Network:
    def edit(a):
        if not a.learned_sinks:
            return a
        return dataclasses.replace(a, learned_sinks=False, sinks=None,
                                   kernels=tuple(k for k in a.kernels if k != KERNEL_SINK_ATTENTION))
    return _edit_layers(net, "drop_sinks", attention=edit)


def disable_sliding_window(net: Network) -> Network:
    def edit(a):
        if a.cache_kind.full:
            return a
        kernels = tuple(k for k in a.kernels if k not in (KERNEL_SLIDING_WINDOW, KERNEL_SINK_TOKENS))
        return dataclasses.replace(a, kind="full", window=None, sink_tokens=0, kernels=kernels)
    return _edit_layers(net, "disable_sliding_window", attention=edit)


def unclamp_swiglu(net: Network) -> Network:
    return _edit_layers(net, "unclamp_swiglu", mlp=lambda m: dataclasses.replace(m, swiglu_limit=None))


def drop_router_bias(net: Network) -> Network:
    def edit(m):
        return dataclasses.replace(m, router=dataclasses.replace(m.router, bias=None)) if isinstance(m, MoE) else m
    return _edit_layers(net, "drop_router_bias", mlp=edit)


NETWORK_FAULTS: dict[str, Callable[[Network], Network]] = {
    "drop_sinks": drop_sinks, "disable_sliding_window": disable_sliding_window,
    "unclamp_swiglu": unclamp_swiglu, "drop_router_bias": drop_router_bias,
}


# -- graph edits -----------------------------------------------------------------------------------------
def ring_modulus_short(model):
    """Every Mod node of the graph (only the ring row computes one: plugins/onnx/kv_cache.py) divides by its
    constant divisor - 2 (at least 1)."""
    import copy

    import numpy as np
    from onnx import numpy_helper
    model = copy.deepcopy(model)
    inits = {t.name: t for t in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type == "Mod" and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]])
            name = node.input[1] + "_fault"
            model.graph.initializer.append(numpy_helper.from_array(np.maximum(w - 2, 1), name))
            node.input[1] = name
            changed += 1
    if not changed:
        raise FaultError("ring_modulus_short: the graph has no ring (no Mod node with a constant divisor)")
    return model


GRAPH_FAULTS = {"ring_modulus_short": ring_modulus_short}


# -- weight edits ----------------------------------------------------------------------------------------
class Replaced(NamedTuple):
    tensors: dict                     # stored name -> its replacement
    what: list[str]                   # what each replacement is, for the report


def zero_sinks(tensors: Mapping) -> Replaced:
    names = [n for n in tensors if n.endswith(".sinks")]
    if not names:
        raise FaultError("no sinks tensors found")
    return Replaced({n: tensors[n].new_zeros(tensors[n].shape) for n in names}, names)


def wrong_quant_scale(tensors: Mapping, quant: str, layer: int = 1, expert: int | None = None) -> Replaced:
    """expert None: the whole tensor (every expert of the layer's down projection), else one expert's slice."""
    if quant == "mxfp4":
        # HF MXFP4: ...experts.down_proj_scales uint8 e8m0 [E, out, in/32]; +1 doubles each block's scale.
        suffix = f"layers.{layer}.mlp.experts.down_proj_scales"
    elif quant in ("nvfp4", "fp8", "w4a16-nvfp4"):
        # ModelOpt layout: the experts' down projection has one fp32 global scale (NVFP4 weight_scale_2, FP8
        # weight_scale) for all experts.
        suffix = f"layers.{layer}.mlp.experts.down_proj_{'weight_scale_2' if 'nvfp4' in quant else 'weight_scale'}"
    else:
        suffix = None
    name = next((n for n in tensors if suffix and n.endswith(suffix)), None)
    if name is None:
        raise FaultError(f"no quantized tensor scale found for quant {quant!r} in layer {layer}")
    if quant != "mxfp4":
        return Replaced({name: tensors[name] * 2}, [f"{name} x2"])
    out = tensors[name].clone()
    part = out if expert is None else out[expert]
    if int(part.max()) >= 254:
        raise FaultError(f"{name}: scale bytes already at the top of e8m0")
    part += 1
    return Replaced({name: out}, [f"{name}{'' if expert is None else f'[{expert}]'}: e8m0 bytes +1 (x2)"])


WEIGHT_FAULTS = {"zero_sinks": zero_sinks, "wrong_quant_scale": wrong_quant_scale}


# -- engine directories ----------------------------------------------------------------------------------
def _copy(src, dst) -> Path:
    src, dst = Path(src), Path(dst)
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("triton"))
    return dst


class _Checkpoint(Mapping):
    """An engine's safetensors tensors by name, read on first use (an edit reads only what it matches)."""

    def __init__(self, engine: Path):
        self.files = sorted(engine.glob("*.safetensors"))
        if not self.files:
            raise FaultError(f"{engine}: no *.safetensors")
        self.file_of = {}
        for f in self.files:
            with safe_open(str(f), framework="pt") as g:
                self.file_of.update({k: f for k in g.keys()})

    def __getitem__(self, name):
        with safe_open(str(self.file_of[name]), framework="pt") as g:
            return g.get_tensor(name)

    def __iter__(self):
        return iter(self.file_of)

    def __len__(self):
        return len(self.file_of)


def _rewrite(ck: _Checkpoint, replaced: dict) -> None:
    """Each file holding a replaced tensor, written again with it (a temporary file renamed over it)."""
    for f in ck.files:
        names = [n for n in replaced if ck.file_of[n] == f]
        if not names:
            continue
        with safe_open(str(f), framework="pt") as g:
            meta = g.metadata()
            tensors = {k: g.get_tensor(k) for k in g.keys()}
        tensors.update({n: replaced[n].contiguous() for n in names})
        tmp = f.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(f)


def _engine_quant(engine: Path) -> str:
    from spec.manifest import EngineManifest, is_engine_dir
    return EngineManifest.read(engine).quant if is_engine_dir(engine) else "bf16"


def break_engine(fault: str, src, dst, **options) -> dict:
    """A copy of engine `src` at `dst` with one fault (NETWORK_FAULTS on network.json, WEIGHT_FAULTS on the
    checkpoint) -> what it changed. Targets that execute network.json (the reference runtime, the ONNX/TensorRT
    graphs) run an edited network; those that read config.json instead (TensorRT-LLM) refuse the engine as
    inconsistent."""
    if fault not in NETWORK_FAULTS and fault not in WEIGHT_FAULTS:
        raise FaultError(f"unknown fault {fault!r}; known: {', '.join([*NETWORK_FAULTS, *WEIGHT_FAULTS])}")
    engine = _copy(src, dst)
    if fault in NETWORK_FAULTS:
        net_file = engine / NETWORK_FILE
        if not net_file.is_file():
            raise FaultError(f"{src}: no {NETWORK_FILE} (not an engine built by build-engine)")
        net = load_network(net_file)
        try:
            edited = NETWORK_FAULTS[fault](net, **options)
        except FaultError as e:
            raise FaultError(f"{src}: {e}") from None
        edited.save(net_file)
        changed = [f"{NETWORK_FILE} layers[{a.index}]" for a, b in zip(net.layers, edited.layers) if a != b]
        return {"fault": fault, "changed": changed}
    ck = _Checkpoint(engine)
    if fault == "wrong_quant_scale":
        options = {"quant": _engine_quant(engine), **options}
    try:
        replaced = WEIGHT_FAULTS[fault](ck, **options)
    except FaultError as e:
        raise FaultError(f"{src}: {e}") from None
    _rewrite(ck, replaced.tensors)
    return {"fault": fault, "tensors": replaced.what, **({"quant": options["quant"]} if "quant" in options else {})}


FAULTS = (*NETWORK_FAULTS, *WEIGHT_FAULTS)
