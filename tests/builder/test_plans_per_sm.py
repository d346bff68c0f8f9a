"""TensorRT-RTX builds the tiny model's plan for every RTX-class SM it targets (builder.tensorrt.targets), here,
without a GPU: the graph in the SM's compute dtype (spec.capabilities: fp16 on SM75, bf16 elsewhere) with the
islands' GEMM dtype the SM's TensorRT-RTX has (SM75 has no fp32 GEMM; the negative control shows it refuses
one). Skipped with the reason where tensorrt_rtx does not install."""

from __future__ import annotations

import functools

import onnx
import pytest

trt = pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx is not installed (./tools/bootstrap.sh installs "
                                                 "it where its wheels exist): no plans to build")

from builder.tensorrt.targets import RTX, RTX_COMPUTE_CAPABILITY  # noqa: E402

LIMITS = dict(max_batch_size=2, max_tokens=16, max_seq_len=64)


@functools.cache
def tiny():
    from builder.engine.sources import shipped_checkpoint
    from spec.registry.models import get_model
    return shipped_checkpoint(get_model("tiny"))


def export(path, sm: int, island_gemm: str | None = None):
    from checkpoint.convert import load_canonical
    from plugins.onnx.export import export_onnx
    from spec.capabilities import graph_dtype, island_gemm_dtype
    from spec.network import network_from_checkpoint
    with load_canonical(tiny()) as ck:
        return export_onnx(network_from_checkpoint(ck), ck, path, dtype=graph_dtype(sm),
                           island_gemm=island_gemm or island_gemm_dtype(sm)).path


@pytest.mark.parametrize("sm", sorted(RTX_COMPUTE_CAPABILITY))
def test_tiny_plan_builds_for_every_rtx_sm(tmp_path, sm):
    from builder.tensorrt.plan import Limits, build_plan
    from spec.capabilities import graph_dtype
    from spec.registry.models import get_model
    graph = export(tmp_path / "model.onnx", sm)
    elem = {i.name: i.type.tensor_type.elem_type for i in onnx.load(graph, load_external_data=False).graph.input}
    assert elem["past_key_0"] == {"float16": onnx.TensorProto.FLOAT16,
                                  "bfloat16": onnx.TensorProto.BFLOAT16}[graph_dtype(sm)]
    r = build_plan(graph, tmp_path / f"model.sm{sm}.plan", RTX, sm, Limits(**LIMITS))
    assert r.plan.stat().st_size == r.plan_bytes > graph.stat().st_size // 2      # the weights are in it
    assert not list(tmp_path.glob("*.partial"))
    c = get_model("tiny")
    # per layer: qkv, out, scores, probs @ V, router and the dense expert path's matmuls
    assert r.layers > r.gemm_layers >= c.num_layers * 4


def test_fp32_gemm_is_what_sm75_lacks(tmp_path):
    """Negative control: the SM75 graph with its islands' GEMMs in fp32 (as every other SM builds them) is
    refused by TensorRT-RTX for Turing, which is why spec.capabilities lists SM75's island GEMM as fp16."""
    from builder.tensorrt import PlanBuildError
    from builder.tensorrt.plan import Limits, build_plan
    graph = export(tmp_path / "model.onnx", 75, island_gemm="float32")
    with pytest.raises(PlanBuildError, match="could not build a plan for SM 75"):
        build_plan(graph, tmp_path / "model.sm75.plan", RTX, 75, Limits(**LIMITS))
    assert not list(tmp_path.glob("*.plan*"))                  # nothing half-written is left
