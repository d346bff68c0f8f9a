"""TensorRT's custom ONNX ops on the CPU: what `trt::TRT_FP4DynamicQuantize` computes, as an op
implementation registered with onnx.reference (for ONNX Runtime, plugins/onnx/fp4.py writes the same
arithmetic in standard ops: the "onnxruntime-cpu" lowering).

TRT_FP4DynamicQuantize(x, global_scale; axis=-1, block_size=16, scale_type=FLOAT8E4M3FN) -> (x_fp4,
block_scale_e4m3): per block of 16 along the last axis, sf8 = e4m3(min(amax / 6 / global, 448)) and
x_fp4 = e2m1(x / (sf8 * global)) rounded to nearest even, saturating at 6. The CPU implementation is
numerics.nvfp4.quantize_nvfp4_activations (TensorRT-LLM's cvt_warp_fp16_to_fp4 arithmetic), so a graph
evaluated here matches the reference runtime's W4A4 emulation bit for bit; what TensorRT's own kernel
rounds differently (reciprocal approximations) is not measured here.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from onnx import TensorProto
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_dequantize_linear import DequantizeLinear_23

from plugins.onnx.fp4 import TRT_DOMAIN


class TRT_FP4DynamicQuantize(OpRun):
    op_domain = TRT_DOMAIN

    def _run(self, x, global_scale, axis=-1, block_size=16, scale_type=TensorProto.FLOAT8E4M3FN):
        from numerics.nvfp4 import BLOCK, quantize_nvfp4_activations
        if axis not in (-1, x.ndim - 1) or block_size != BLOCK or scale_type != TensorProto.FLOAT8E4M3FN:
            raise NotImplementedError(f"TRT_FP4DynamicQuantize: only axis=-1, block_size={BLOCK}, FLOAT8E4M3FN "
                                      f"scales are implemented on the CPU (got axis={axis}, block_size="
                                      f"{block_size}, scale_type={scale_type})")
        x = np.asarray(x)
        if x.size == 0:  # an expert no token chose: zero rows
            sf_shape = x.shape[:-1] + (x.shape[-1] // block_size,) if x.ndim else (0,)
            return np.zeros(x.shape, ml_dtypes.float4_e2m1fn), np.zeros(sf_shape, ml_dtypes.float8_e4m3fn)
        codes, sf8 = quantize_nvfp4_activations(np.asarray(x, dtype=np.float32), np.float32(global_scale))
        return _fp4(codes), sf8


def _fp4(codes: np.ndarray) -> np.ndarray:
    """e2m1 codes (uint8, one per element) -> ml_dtypes.float4_e2m1fn values (onnx.reference's FP4 type)."""
    from numerics.mxfp4 import FP4_VALUES
    return FP4_VALUES[codes].astype(ml_dtypes.float4_e2m1fn)


class DequantizeLinear(DequantizeLinear_23):
    """onnx.reference's DequantizeLinear (opset 23), except that an empty input keeps its shape."""

    def _run(self, x, *args, axis=1, block_size=0, output_dtype=None):
        if np.asarray(x).size == 0:
            return (np.zeros(np.asarray(x).shape, dtype=np.asarray(args[0]).dtype),)
        return super()._run(x, *args, axis=axis, block_size=block_size, output_dtype=output_dtype)


class Gather(OpRun):
    """onnx.reference's Gather returns shape (0,) for empty indices; numpy's take keeps the right shape."""

    def _run(self, x, indices, axis=0):
        return (np.take(np.asarray(x), np.asarray(indices, dtype=np.int64), axis=axis),)


# Registered with onnx.reference: TensorRT's op, and two standard ops whose reference implementations lose the
# shape of empty tensors (the rows of an expert no token chose).
CUSTOM_OPS = [TRT_FP4DynamicQuantize, DequantizeLinear, Gather]


def reference_evaluator(model, **kw):
    """onnx.reference.ReferenceEvaluator that also runs TensorRT's trt:: ops used by our graphs."""
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(model, new_ops=CUSTOM_OPS, **kw)
