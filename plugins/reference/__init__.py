"""Reference torch implementations of the ops the network definition (builder/network.py) names.

Pure functions, CPU or GPU, each gpt-oss quirk a few visible lines with a comment. They are the oracle the
engines are compared against and what the reference runtime (runtime/) executes.
"""

from plugins.reference.attention import sink_attention, attention_mask  # noqa: F401
from plugins.reference.linear import PreparedLinear, prepare_linear, prepare_expert_weights  # noqa: F401
from plugins.reference.moe import clamped_swiglu, moe, route  # noqa: F401
from plugins.reference.norm import rms_norm  # noqa: F401
from plugins.reference.rope import apply_rope, rope_cos_sin, yarn_inv_freq  # noqa: F401
