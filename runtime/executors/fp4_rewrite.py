"""Make an FP4 (NVFP4) ONNX graph runnable by ONNX Runtime's CPU provider, which has no FLOAT4E2M1 tensors.

The rewrite (exact; no rounding happens in it):
- a FLOAT4E2M1 initializer becomes a uint8 initializer of its codes (one per byte), decoded by a Gather
  on the 16-entry e2m1 table (indices cast to int32): the fp32 values the codes stand for. ONNX Runtime
  folds this constant subgraph once at session start, so the session holds the weights in fp32; ops that
  only move elements (Gather of the selected experts, Reshape, Transpose, ...) run on those values, and FP8
  block scales they move are cast to fp32 first (exact), their DequantizeLinear becoming a Mul;
- a DequantizeLinear whose input is such a tensor, blocked on the last axis, becomes
  reshape(values, [..., K/block, block]) * unsqueeze(scale, -1), reshaped back (its scale input, an FP8
  block scale through DequantizeLinear with the global scale, runs on ORT as it is).
- TensorRT's `trt::TRT_FP4DynamicQuantize(x, global_scale; axis=-1, block_size=16)` (W4A4 activations)
  becomes its arithmetic in plain ops: per-block amax, the e4m3 block scale (a real FLOAT8E4M3FN Cast, which
  ORT runs), and e2m1 rounding (nearest, ties to even, saturating) as threshold counts into the value table,
  the arithmetic of numerics.nvfp4.fake_quantize_nvfp4_activations (the reference runtime's W4A4 emulation).
  Not modelled: the GPU's approximate reciprocals, and scales whose reciprocal overflows fp32.
Other `trt::` ops raise a clear error; onnx.reference.ReferenceEvaluator runs plain FP4 graphs for small models.
"""

from __future__ import annotations

import numpy as np

E2M1_VALUES = np.array([0, .5, 1, 1.5, 2, 3, 4, 6, -0., -.5, -1, -1.5, -2, -3, -4, -6], dtype=np.float32)


def _fp4():
    from onnx import TensorProto
    return TensorProto.FLOAT4E2M1


# Ops that only move FP4 elements (e.g. gathering the selected experts' weights): they run on the decoded
# values and their output stays "FP4 values" for the DequantizeLinear that follows.
LAYOUT_OPS = ("Gather", "Reshape", "Transpose", "Slice", "Squeeze", "Unsqueeze", "Identity", "Flatten", "Expand")


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
    """The model, rewritten in place so that no FP4 tensor remains (see the module docstring)."""
    from onnx import TensorProto, helper, numpy_helper
    g = model.graph
    fp4 = {t.name: t for t in g.initializer if t.data_type == _fp4()}
    keep = [t for t in g.initializer if t.name not in fp4]
    new_inits = [numpy_helper.from_array(E2M1_VALUES, "fp4_e2m1_table"),
                 numpy_helper.from_array(E2M1_VALUES[:8], "fp4_e2m1_magnitudes")]
    nodes = []
    decoded = {}                       # FP4 tensor name -> fp32 tensor of the values its codes stand for
    for name, t in fp4.items():
        new_inits.append(numpy_helper.from_array(_codes(t), name + "_codes"))
        decoded[name] = name + "_values"
        nodes.append(helper.make_node("Cast", [name + "_codes"], [name + "_index"], to=6, name=name + "_int"))
        nodes.append(helper.make_node("Gather", ["fp4_e2m1_table", name + "_index"], [decoded[name]], axis=0,
                                      name=name + "_decode"))
    # FP8 initializers that layout ops move (ORT's Gather takes no FP8): cast to fp32 first, exactly.
    fp8 = {t.name for t in keep if t.data_type in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2)}
    for n in g.node:
        if n.op_type in LAYOUT_OPS and n.input and n.input[0] in fp8 and n.input[0] not in decoded:
            decoded[n.input[0]] = n.input[0] + "_values"
            nodes.append(helper.make_node("Cast", [n.input[0]], [decoded[n.input[0]]], to=TensorProto.FLOAT,
                                          name=n.input[0] + "_to_f32"))
    scalars = {t.name for t in keep if int(np.prod(t.dims, dtype=np.int64)) == 1}
    for n in g.node:
        if n.domain == "trt" and n.op_type == "TRT_FP4DynamicQuantize":
            nodes.extend(_dynamic_quantize(n, new_inits, {t.name: t for t in keep}))
            decoded[n.output[0]] = n.output[0] + "_values"
        elif n.domain == "trt":
            raise NotImplementedError(f"node {n.name}: TensorRT-only op trt::{n.op_type} has no CPU rewrite; run "
                                      f"the graph with --executor reference")
        elif n.op_type in LAYOUT_OPS and n.input and n.input[0] in decoded:
            moved = helper.make_node(n.op_type, [decoded[n.input[0]]] + list(n.input[1:]), [n.output[0] + "_values"],
                                     name=n.name, **_attrs(n))
            decoded[n.output[0]] = n.output[0] + "_values"
            nodes.append(moved)
        elif n.op_type == "DequantizeLinear" and n.input[0] in decoded:
            rank = len(fp4[n.input[0]].dims) if n.input[0] in fp4 else None
            if int(_attrs(n).get("block_size", 0)) == 0 and n.input[1] in scalars:
                nodes.extend(_per_tensor_dq(n, decoded[n.input[0]]))
            else:
                nodes.extend(_blocked_dq(n, decoded[n.input[0]], new_inits, rank))
        else:
            for x in n.input:
                if x in decoded:
                    raise NotImplementedError(f"node {n.name} ({n.op_type}) reads FP4 tensor {x} directly; only "
                                              f"DequantizeLinear consumers are rewritten")
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    fp4_types = [v for v in list(g.value_info) if v.type.tensor_type.elem_type == _fp4()]
    for v in fp4_types:
        g.value_info.remove(v)
    while len(model.opset_import) and any(o.domain == "trt" for o in model.opset_import):
        model.opset_import.remove(next(o for o in model.opset_import if o.domain == "trt"))
    return model


def _attrs(node) -> dict:
    from onnx import helper
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _blocks(base: str, x: str, block: int, inits) -> tuple[list, str, str]:
    """Nodes reshaping x [..., K] to [..., K/block, block]; -> (nodes, blocked name, x's shape name).
    K/block comes from x's shape, not -1: x may have zero rows (an expert no token chose)."""
    from onnx import helper, numpy_helper
    inits.append(numpy_helper.from_array(np.array([block], np.int64), base + "_tail"))
    inits.append(numpy_helper.from_array(np.array([0], np.int64), base + "_0"))
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), base + "_m1"))
    inits.append(numpy_helper.from_array(np.array([2 ** 62], np.int64), base + "_end"))
    nodes = [helper.make_node("Shape", [x], [base + "_shape"], name=base + "_shape"),
             helper.make_node("Slice", [base + "_shape", base + "_0", base + "_m1"], [base + "_lead"],
                              name=base + "_lead"),
             helper.make_node("Slice", [base + "_shape", base + "_m1", base + "_end"], [base + "_k"], name=base + "_k"),
             helper.make_node("Div", [base + "_k", base + "_tail"], [base + "_nb"], name=base + "_nb"),
             helper.make_node("Concat", [base + "_lead", base + "_nb", base + "_tail"], [base + "_bshape"], axis=0,
                              name=base + "_cat"),
             helper.make_node("Reshape", [x, base + "_bshape"], [base + "_blocked"], name=base + "_rs")]
    return nodes, base + "_blocked", base + "_shape"


def _per_tensor_dq(node, values: str) -> list:
    """DequantizeLinear(x, scalar scale) on values already in fp32: values * scale."""
    from onnx import helper
    if len(node.input) > 2 and node.input[2]:
        raise NotImplementedError(f"{node.name}: DequantizeLinear with a zero point on moved FP8 values")
    base = (node.name or node.output[0]) + "_dq"
    to = _attrs(node).get("output_dtype", 0)
    nodes = [helper.make_node("Cast", [node.input[1]], [base + "_s32"], to=1, name=base + "_cast"),
             helper.make_node("Mul", [values, base + "_s32"], [node.output[0] if to in (0, 1) else base + "_m"],
                              name=base + "_mul")]
    if to not in (0, 1):
        nodes.append(helper.make_node("Cast", [base + "_m"], [node.output[0]], to=to, name=base + "_out"))
    return nodes


def _blocked_dq(node, values: str, inits, rank: int | None = None) -> list:
    """DequantizeLinear(fp4, scale, axis=-1, block_size=B) on decoded values: values * scale per block."""
    from onnx import helper
    attrs = _attrs(node)
    block = int(attrs.get("block_size", 0))
    axis = int(attrs.get("axis", 1))
    if block == 0 or not (axis == -1 or (rank is not None and axis == rank - 1)):
        raise NotImplementedError(f"{node.name}: the FP4 DequantizeLinear rewrite handles scales blocked on the "
                                  f"last axis only (got axis={axis}, block_size={block})")
    if len(node.input) > 2 and node.input[2]:
        raise NotImplementedError(f"{node.name}: FP4 DequantizeLinear with a zero point")
    base = (node.name or node.output[0]) + "_fp4dq"
    nodes, blocked, shape = _blocks(base, values, block, inits)
    to = attrs.get("output_dtype", 0)
    mul_out = base + "_mul"
    nodes += [helper.make_node("Cast", [node.input[1]], [base + "_s32"], to=1, name=base + "_cast"),
              helper.make_node("Unsqueeze", [base + "_s32", base + "_m1"], [base + "_s"], name=base + "_us"),
              helper.make_node("Mul", [blocked, base + "_s"], [mul_out], name=base + "_mul"),
              helper.make_node("Reshape", [mul_out, shape], [node.output[0] if to in (0, 1) else base + "_flat"],
                               name=base + "_back")]
    if to not in (0, 1):
        nodes.append(helper.make_node("Cast", [base + "_flat"], [node.output[0]], to=to, name=base + "_out"))
    return nodes


# e2m1 rounding, nearest with ties to even, saturating at 6: a magnitude's code is the number of these
# thresholds it passes ("ge": a tie rounds up to the even code; "gt": a tie stays on the even code below).
_THRESHOLDS = ((0.25, "gt"), (0.75, "ge"), (1.25, "gt"), (1.75, "ge"), (2.5, "gt"), (3.5, "ge"), (5.0, "gt"))


def _dynamic_quantize(node, inits, constants: dict) -> list:
    """trt::TRT_FP4DynamicQuantize(x, global_scale; block 16) -> (e2m1 values as fp32, FP8 block scales),
    with TensorRT-LLM's arithmetic as numerics.nvfp4.fake_quantize_nvfp4_activations emulates it:
    sf8 = e4m3(min((1/g) * (amax/6), 448)); codes = e2m1(x / (sf8 * (1/(1/g))))."""
    from onnx import TensorProto, helper, numpy_helper
    attrs = _attrs(node)
    block = int(attrs.get("block_size", 16))
    if int(attrs.get("axis", -1)) != -1:
        raise NotImplementedError(f"{node.name}: TRT_FP4DynamicQuantize rewrite handles axis=-1 only")
    base = (node.name or node.output[0]) + "_fp4q"
    x, gscale = node.input[0], node.input[1]
    c = {k: base + "_" + k for k in ("one", "sixth", "max", "zero")}
    for k, v in (("one", 1.0), ("sixth", np.float32(1.0) / np.float32(6.0)), ("max", 448.0), ("zero", 0.0)):
        inits.append(numpy_helper.from_array(np.array(v, np.float32), c[k]))
    mk = helper.make_node
    nodes = [mk("Cast", [x], [base + "_x32"], to=1, name=base + "_x32")]
    bnodes, blocked, shape = _blocks(base, base + "_x32", block, inits)
    nodes += bnodes
    n = lambda *a, **k: nodes.append(mk(*a, name=base + "_" + a[2][0].rsplit("_", 1)[-1], **k))  # noqa: E731
    n("Abs", [blocked], [base + "_abs"])
    n("ReduceMax", [base + "_abs", base + "_m1"], [base + "_amax"], keepdims=0)
    if gscale in constants:
        # The global scale is a build-time constant: fold 1/g and 1/(1/g) here, so ONNX Runtime's Div/Mul
        # fusion cannot re-associate (1/g) * (amax/6) into amax/6/g, which rounds differently.
        g = np.float32(numpy_helper.to_array(constants[gscale]).reshape(()))
        sf_scale = np.float32(1.0) / g
        inits.append(numpy_helper.from_array(np.array(sf_scale, np.float32), base + "_sfscale"))
        inits.append(numpy_helper.from_array(np.array(np.float32(1.0) / sf_scale, np.float32), base + "_invsf"))
    else:
        n("Div", [c["one"], gscale], [base + "_sfscale"])
        n("Div", [c["one"], base + "_sfscale"], [base + "_invsf"])
    n("Mul", [base + "_amax", c["sixth"]], [base + "_amax6"])
    n("Mul", [base + "_sfscale", base + "_amax6"], [base + "_sf"])
    n("Min", [base + "_sf", c["max"]], [base + "_sfmin"])
    nodes.append(mk("Cast", [base + "_sfmin"], [node.output[1]], to=TensorProto.FLOAT8E4M3FN, name=base + "_sf8"))
    n("Cast", [node.output[1]], [base + "_sf8f"], to=1)
    n("Mul", [base + "_sf8f", base + "_invsf"], [base + "_denom"])
    n("Div", [c["one"], base + "_denom"], [base + "_recip"])
    n("Equal", [base + "_sf8f", c["zero"]], [base + "_iszero"])
    n("Where", [base + "_iszero", c["zero"], base + "_recip"], [base + "_scale"])
    n("Unsqueeze", [base + "_scale", base + "_m1"], [base + "_scaleu"])
    n("Mul", [blocked, base + "_scaleu"], [base + "_q"])
    n("Abs", [base + "_q"], [base + "_mag"])
    counts = []
    for i, (t, how) in enumerate(_THRESHOLDS):
        tname = f"{base}_t{i}"
        inits.append(numpy_helper.from_array(np.array(t, np.float32), tname))
        n("Greater" if how == "gt" else "GreaterOrEqual", [base + "_mag", tname], [f"{base}_c{i}"])
        n("Cast", [f"{base}_c{i}"], [f"{base}_ci{i}"], to=6)
        counts.append(f"{base}_ci{i}")
    total = counts[0]
    for i, part in enumerate(counts[1:]):                    # Add chain: ORT's Sum takes no integers
        n("Add", [total, part], [f"{base}_acc{i}"])
        total = f"{base}_acc{i}"
    n("Identity", [total], [base + "_code"])
    n("Gather", ["fp4_e2m1_magnitudes", base + "_code"], [base + "_absval"], axis=0)
    n("Sign", [base + "_q"], [base + "_sign"])
    n("Mul", [base + "_absval", base + "_sign"], [base + "_vals"])
    nodes.append(mk("Reshape", [base + "_vals", shape], [node.output[0] + "_values"], name=base + "_out"))
    return nodes
