"""Pure numerics for the quantized formats (MXFP4, NVFP4, FP8). Knows nothing of files or models.

Every function takes numpy arrays (float32, float16, ml_dtypes.bfloat16) or torch tensors and returns
numpy arrays; conventions (scale rule, rounding, saturation, zeros, NaN) are in each module's docstring.
"""

from numerics.fp8 import (FP8Tensor, dequantize_fp8, fp8_kv_scale, fp8_scale, quantize_fp8,
                               quantize_fp8_per_tensor)
from numerics.mxfp4 import (E2M1_BOUNDS, E2M1_TIES_UP, FP4_VALUES, SCALE_RULES, dequantize_mxfp4, fp4_codes, pack_nibbles,
                                 quantize_mxfp4, unpack_nibbles)
from numerics.nvfp4 import (NVFP4Tensor, dequantize_nvfp4, fake_quantize_nvfp4_activations,
                                 iter_quantize_nvfp4, nvfp4_global_scale, quantize_nvfp4,
                                 quantize_nvfp4_with_scales)
from numerics.transcode import LossyTranscodeError, lossy_blocks, mxfp4_kmax, mxfp4_to_nvfp4_lossless

__all__ = [
    "FP4_VALUES", "E2M1_BOUNDS", "E2M1_TIES_UP", "SCALE_RULES", "quantize_mxfp4", "dequantize_mxfp4", "fp4_codes", "pack_nibbles",
    "unpack_nibbles",
    "NVFP4Tensor", "quantize_nvfp4", "iter_quantize_nvfp4", "quantize_nvfp4_with_scales", "dequantize_nvfp4",
    "nvfp4_global_scale", "fake_quantize_nvfp4_activations",
    "FP8Tensor", "quantize_fp8_per_tensor", "quantize_fp8", "dequantize_fp8", "fp8_scale", "fp8_kv_scale",
    "LossyTranscodeError", "mxfp4_to_nvfp4_lossless", "mxfp4_kmax", "lossy_blocks",
]
