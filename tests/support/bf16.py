"""Run a bf16 (or fp16) ONNX graph on a CPU provider that lacks its kernels, by emulation.

ONNX Runtime's CPU provider has no bf16 Gemm/MatMul/Softmax, so a bf16 graph TensorRT would build cannot run
there as it is. `emulate(model)` rewrites it into an fp32 graph that computes the same values as a GPU
running it op by op: every op computes in fp32 (as TensorRT's bf16 kernels accumulate in fp32) and every
value the original graph types as bf16 is rounded to bf16 (round to nearest even, through a real Cast to
BFLOAT16 and back, which ONNX Runtime's CPU provider has) where it is produced. The fp32 islands of the
original (attention scores and the sink softmax, RMSNorm statistics, the router) are not rounded, because
the original does not round them. Initializers and graph inputs in bf16 become fp32 holding the same
(bf16-representable) values.

`extra_rounding` names nodes whose fp32 outputs (integer ones are left alone) are rounded too: a negative control that removes an fp32
island (the numerics a graph without that island would have), edited on the emulation, never in the
exporter.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Ops that move or select values without computing new ones: their outputs are already representable in
# the input's dtype, so rounding them again changes nothing (skipped to keep the emulation small).
EXACT_OPS = {"Reshape", "Transpose", "Gather", "Split", "Concat", "Slice", "Identity", "Squeeze", "Unsqueeze",
             "Expand", "Shape", "Max", "Min", "Clip", "Where", "GatherElements", "GatherND", "TopK"}

# graph dtype name -> (ONNX elem type, unit roundoff u = 2^-(mantissa bits + 1))
HALF_TYPES = {"bfloat16": (TensorProto.BFLOAT16, 2.0 ** -8), "float16": (TensorProto.FLOAT16, 2.0 ** -11)}


def unit_roundoff(dtype: str) -> float:
    return HALF_TYPES[dtype][1]


def _typed_values(model: onnx.ModelProto) -> dict[str, int]:
    """Value name -> ONNX elem type, by strict shape inference on the original graph."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    g = inferred.graph
    types = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    for t in g.initializer:
        types[t.name] = t.data_type
    return types


def _as_fp32_initializer(t: onnx.TensorProto) -> onnx.TensorProto:
    return numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)


def emulate(model: onnx.ModelProto, dtype: str = "bfloat16", extra_rounding=()) -> onnx.ModelProto:
    """The fp32 emulation of a `dtype` graph (weights inline). extra_rounding: names of nodes whose outputs
    are rounded to `dtype` as well (a removed fp32 island, for negative controls)."""
    half, _ = HALF_TYPES[dtype]
    types = _typed_values(model)
    extra = set(extra_rounding)
    src = model.graph
    nodes, count = [], 0

    def rounded(value: str) -> tuple[str, list]:
        nonlocal count
        count += 1
        raw = f"{value}__unrounded{count}"
        down = helper.make_node("Cast", [raw], [f"{raw}_half"], to=half, name=f"{raw}_to_half")
        up = helper.make_node("Cast", [f"{raw}_half"], [value], to=TensorProto.FLOAT, name=f"{raw}_to_fp32")
        return raw, [down, up]

    for n in src.node:
        n = onnx.NodeProto.FromString(n.SerializeToString())
        for a in n.attribute:        # Cast(to=half) computes in fp32 and rounds below, as every half output
            if a.name == "to" and a.i == half:
                a.i = TensorProto.FLOAT
        after = []
        for k, out in enumerate(n.output):
            is_half = types.get(out) == half
            island = n.name in extra and types.get(out) == TensorProto.FLOAT
            if out and ((is_half and n.op_type not in EXACT_OPS) or island):
                raw, fix = rounded(out)
                n.output[k] = raw
                after += fix
        nodes.append(n)
        nodes += after
    inits = [_as_fp32_initializer(t) if t.data_type == half else t for t in src.initializer]

    def fp32_io(vi):
        vi = onnx.ValueInfoProto.FromString(vi.SerializeToString())
        if vi.type.tensor_type.elem_type == half:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
        return vi
    graph = helper.make_graph(nodes, src.name + "-emulated", [fp32_io(v) for v in src.input],
                              [fp32_io(v) for v in src.output], inits)
    out = helper.make_model(graph, opset_imports=list(model.opset_import), producer_name="bf16-emulation")
    out.ir_version = model.ir_version
    return out


def nodes_named(model: onnx.ModelProto, *fragments: str) -> list[str]:
    """Names of the nodes whose name contains any of `fragments` (to pick an fp32 island to remove)."""
    return [n.name for n in model.graph.node if any(f in n.name for f in fragments)]
