"""Reference torch implementations of the ops the network definition (spec/network.py) names.

Pure functions, CPU or GPU, each gpt-oss quirk a few visible lines with a comment. They are the oracle the
engines are compared against and what the reference runtime (runtime/) executes.
"""

from plugins.reference.attention import attention_mask, mask_bias, sink_attention, sink_attention_fused  # noqa: F401
from plugins.reference.linear import PreparedLinear, prepare_linear, prepare_expert_weights  # noqa: F401
from plugins.reference.moe import clamped_swiglu, dense_mlp, route  # noqa: F401  (the op `moe` lives in plugins.reference.moe)
from plugins.reference.norm import rms_norm  # noqa: F401
from plugins.reference.rope import apply_rope, rope_cos_sin, yarn_inv_freq  # noqa: F401
