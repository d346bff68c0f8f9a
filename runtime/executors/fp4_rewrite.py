"""Make an FP4 (NVFP4) ONNX graph runnable by ONNX Runtime's CPU provider, which has no FLOAT4E2M1 tensors.

The rewrite (exact; no rounding happens in it):
- a FLOAT4E2M1 initializer becomes a uint8 initializer of its codes (one per byte), decoded by a Gather
  on the 16-entry e2m1 table (indices cast to int32): the fp32 values the codes stand for. ONNX Runtime
  folds this constant subgraph once at session start, so the session holds the weights in fp32;
- a DequantizeLinear whose input is such a tensor, blocked on the last axis, becomes
  reshape(values, [..., K/block, block]) * unsqueeze(scale, -1), reshaped back (its scale input, an FP8
  block scale through DequantizeLinear with the global scale, runs on ORT as it is).
What it does not do: TensorRT's `trt::TRT_FP4DynamicQuantize` (W4A4 activations) has no CPU kernel and no
rewrite here; such graphs raise a clear error, and onnx.reference runs them for small models instead.
"""

from __future__ import annotations

import numpy as np

E2M1_VALUES = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def _fp4():
    from onnx import TensorProto
    return TensorProto.FLOAT4E2M1


def needs_rewrite(model) -> bool:
    return any(t.data_type == _fp4() for t in model.graph.initializer) or \
        any(n.domain == "trt" for n in model.graph.node)


def _codes(tensor) -> np.ndarray:
    """A FLOAT4E2M1 TensorProto (two codes per byte, low nibble first) -> uint8 codes in its shape."""
    packed = np.frombuffer(tensor.raw_data, dtype=np.uint8)
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(-1)
    n = int(np.prod(tensor.dims, dtype=np.int64))
    return codes[:n].reshape(tuple(tensor.dims))


def rewrite_fp4(model):
    from onnx import helper, numpy_helper
    trt_nodes = [n.op_type for n in model.graph.node if n.domain == "trt"]
    if trt_nodes:
        raise NotImplementedError(f"the graph has TensorRT-only nodes {sorted(set(trt_nodes))} (W4A4 activation "
                                  f"quantization), which ONNX Runtime cannot run and this rewrite does not "
                                  f"replace; run it with onnx.reference.ReferenceEvaluator (small graphs) or use "
                                  f"--executor reference")
    g = model.graph
    fp4 = {t.name: t for t in g.initializer if t.data_type == _fp4()}
    keep = [t for t in g.initializer if t.name not in fp4]
    new_inits = [numpy_helper.from_array(E2M1_VALUES, "fp4_e2m1_table")]
    nodes = []
    decoded = {}
    for name, t in fp4.items():
        new_inits.append(numpy_helper.from_array(_codes(t), name + "_codes"))
        decoded[name] = name + "_values"
        nodes.append(helper.make_node("Cast", [name + "_codes"], [name + "_index"], to=6, name=name + "_int"))
        nodes.append(helper.make_node("Gather", ["fp4_e2m1_table", name + "_index"], [decoded[name]], axis=0,
                                      name=name + "_decode"))
    for n in g.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in decoded:
            nodes.extend(_blocked_dq(n, decoded[n.input[0]], fp4[n.input[0]].dims, new_inits))
        else:
            for i, x in enumerate(n.input):
                if x in decoded:
                    raise NotImplementedError(f"node {n.name} ({n.op_type}) reads FP4 tensor {x} directly; only "
                                              f"DequantizeLinear consumers are rewritten")
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    return model


def _blocked_dq(node, values: str, dims, inits) -> list:
    from onnx import helper, numpy_helper
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    block = int(attrs.get("block_size", 0))
    axis = int(attrs.get("axis", -1)) % len(dims)
    if block == 0 or axis != len(dims) - 1:
        raise NotImplementedError(f"{node.name}: FP4 DequantizeLinear rewrite handles blocks on the last axis "
                                  f"only (got axis={attrs.get('axis')}, block_size={block})")
    if len(node.input) > 2 and node.input[2]:
        raise NotImplementedError(f"{node.name}: FP4 DequantizeLinear with a zero point")
    base = node.name or node.output[0]
    blocked = list(dims[:-1]) + [dims[-1] // block, block]
    inits.append(numpy_helper.from_array(np.array(blocked, np.int64), base + "_blocked_shape"))
    inits.append(numpy_helper.from_array(np.array(list(dims), np.int64), base + "_shape"))
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), base + "_last_axis"))
    out = [
        helper.make_node("Reshape", [values, base + "_blocked_shape"], [base + "_v"], name=base + "_rs"),
        helper.make_node("Unsqueeze", [node.input[1], base + "_last_axis"], [base + "_s"], name=base + "_us"),
        helper.make_node("Cast", [base + "_s"], [base + "_s32"], to=1, name=base + "_cast"),
        helper.make_node("Mul", [base + "_v", base + "_s32"], [base + "_m"], name=base + "_mul"),
    ]
    to = attrs.get("output_dtype", 0)
    tail = base + "_flat"
    out.append(helper.make_node("Reshape", [base + "_m", base + "_shape"], [tail if to not in (0, 1) else node.output[0]],
                                name=base + "_back"))
    if to not in (0, 1):
        out.append(helper.make_node("Cast", [tail], [node.output[0]], to=to, name=base + "_out"))
    return out
