"""The model registry: gpt-oss-family architectures as declared data.

Every number here is an architecture fact taken from a released config.json (sources below) or a
documented design choice. Derived figures (parameter counts, bytes) are computed in spec.params,
never typed in here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# Attention kind of a layer, as HF's `layer_types` names it.
SLIDING_ATTENTION, FULL_ATTENTION = "sliding_attention", "full_attention"
LAYER_TYPES = (SLIDING_ATTENTION, FULL_ATTENTION)


@dataclass(frozen=True)
class ModelConfig:
    name: str
    num_layers: int
    hidden_size: int
    head_dim: int
    num_q_heads: int
    num_kv_heads: int
    vocab_size: int
    # "moe": experts with a biased router; "dense": one clamped-SwiGLU MLP per layer.
    mlp: str
    intermediate_size: int
    num_experts: int = 0
    experts_per_token: int = 0
    # Clamped SwiGLU: gate clamped above at limit, up clamped to [-limit, limit],
    # out = (up + 1) * gate * sigmoid(alpha * gate).
    swiglu_alpha: float = 1.702
    swiglu_limit: float = 7.0
    # Window of the sliding-attention layers. Which layers slide: `attention_layers`, see layer_is_sliding.
    sliding_window: int = 128
    # StreamingLLM sink tokens kept visible to sliding layers beyond the window (the leak's policy);
    # 0 for the released models, which use learned per-head sink logits instead.
    sink_tokens: int = 0
    learned_sinks: bool = True
    # YaRN RoPE (half-split rotary form).
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_original_max_position: int = 4096
    rope_beta_fast: float = 32.0
    rope_beta_slow: float = 1.0
    # YaRN `truncate` (transformers' rope_parameters): floor/ceil the ramp's correction range ends. gpt-oss
    # ships false (as OpenAI's reference computes it); true checkpoints are a different RoPE, carried through.
    rope_truncate: bool = False
    max_position_embeddings: int = 131072
    rms_norm_eps: float = 1e-5
    attention_bias: bool = True
    tie_word_embeddings: bool = False
    # Where users get the released weights, if any.
    hf_repo: str | None = None
    # The registry quant format hf_repo's weights are stored in (the released gpt-oss: MXFP4 experts), so
    # `--plan` can say what `--quant auto` keeps before the checkpoint is fetched.
    hf_repo_quant: str | None = None
    source: str = ""
    notes: str = ""
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    # Per-layer attention kinds (LAYER_TYPES), when they differ from gpt-oss's alternation; empty means the
    # alternation. Always stored normalised (the alternation spelled out becomes empty), so two configs of
    # the same architecture compare equal however their checkpoint wrote it.
    attention_layers: tuple[str, ...] = ()

    def __post_init__(self):
        kinds = tuple(self.attention_layers)
        if kinds:
            bad = sorted({k for k in kinds if k not in LAYER_TYPES})
            if bad or len(kinds) != self.num_layers:
                raise ValueError(f"model {self.name!r}: attention_layers must list one of {LAYER_TYPES} per layer "
                                 f"({self.num_layers}); got {len(kinds)} entries" + (f", unknown {bad}" if bad else ""))
            if all((k == SLIDING_ATTENTION) == _alternation_is_sliding(i) for i, k in enumerate(kinds)):
                kinds = ()
        object.__setattr__(self, "attention_layers", kinds)

    def layer_is_sliding(self, layer: int) -> bool:
        """The one sliding-layer rule: `attention_layers` if given, else gpt-oss's alternation."""
        if self.attention_layers:
            return self.attention_layers[layer] == SLIDING_ATTENTION
        return _alternation_is_sliding(layer)

    @property
    def layer_types(self) -> list[str]:
        """HF's `layer_types` list for this model."""
        return [SLIDING_ATTENTION if self.layer_is_sliding(i) else FULL_ATTENTION for i in range(self.num_layers)]

    @property
    def alternating_layers(self) -> bool:
        """Whether the layers follow gpt-oss's alternation (formats without a layer-type list need it)."""
        return not self.attention_layers

    @property
    def num_sliding_layers(self) -> int:
        return sum(self.layer_is_sliding(i) for i in range(self.num_layers))

    @property
    def num_full_layers(self) -> int:
        return self.num_layers - self.num_sliding_layers

    @property
    def is_moe(self) -> bool:
        return self.mlp == "moe"

    def with_overrides(self, **kw) -> "ModelConfig":
        return replace(self, **kw)


def _alternation_is_sliding(layer: int) -> bool:
    # gpt-oss's pattern (transformers GptOssConfig's default layer_types, OpenAI's reference model.py):
    # sliding window on even layers, full attention on odd layers.
    return layer % 2 == 0


_RELEASED_SOURCE = ("config.json of huggingface.co/{repo} (Aug 2025) and OpenAI's gpt-oss model card "
                    "(arXiv:2508.10925)")

# Harmony stop tokens of o200k_harmony: <|return|> 200002 and <|call|> 200012.
_HARMONY_EOS = (200002, 200012)

MODELS: dict[str, ModelConfig] = {
    # Trained by tools/train_tiny.py on Shakespeare (public domain) and shipped in builder/assets/tiny
    # (docs/tiny-model.md). Every gpt-oss feature at CPU size: 4 layers (sliding on even layers, full on odd),
    # hidden 128 and intermediate 128 (multiples of 32, so MXFP4 blocks tile them), head_dim 32, GQA 4:2,
    # learned sinks, q/k/v/o biases, 8 experts top-2 with a biased router and clamped SwiGLU, YaRN (factor 16
    # over the 256-token training context), untied embeddings; a 4096-token byte-level BPE vocabulary whose
    # top 7 ids are the Harmony specials. About 2.8M parameters, 5.7 MB in bf16.
    "tiny": ModelConfig(
        name="tiny",
        num_layers=4, hidden_size=128, head_dim=32, num_q_heads=4, num_kv_heads=2, vocab_size=4096,
        mlp="moe", intermediate_size=128, num_experts=8, experts_per_token=2,
        # A window smaller than typical prompts, so sliding layers really slide in every test.
        sliding_window=16,
        max_position_embeddings=4096, rope_original_max_position=256, rope_scaling_factor=16.0,
        source="this project: trained on CPU by tools/train_tiny.py (Shakespeare, public domain)",
        notes="sinks, alternating sliding/full layers, YaRN, MoE top-2 with clamped SwiGLU and biases",
        # Harmony stop tokens of the tiny tokenizer: <|return|> 4094 and <|call|> 4095.
        eos_token_ids=(4094, 4095),
    ),
    "20b": ModelConfig(
        name="20b",
        num_layers=24, hidden_size=2880, head_dim=64, num_q_heads=64, num_kv_heads=8, vocab_size=201088,
        mlp="moe", intermediate_size=2880, num_experts=32, experts_per_token=4,
        hf_repo="openai/gpt-oss-20b", hf_repo_quant="mxfp4", source=_RELEASED_SOURCE.format(repo="openai/gpt-oss-20b"),
        eos_token_ids=_HARMONY_EOS,
    ),
    "120b": ModelConfig(
        name="120b",
        num_layers=36, hidden_size=2880, head_dim=64, num_q_heads=64, num_kv_heads=8, vocab_size=201088,
        mlp="moe", intermediate_size=2880, num_experts=128, experts_per_token=4,
        hf_repo="openai/gpt-oss-120b", hf_repo_quant="mxfp4", source=_RELEASED_SOURCE.format(repo="openai/gpt-oss-120b"),
        eos_token_ids=_HARMONY_EOS,
    ),
    # The leak described the small model as a dense 20B. It was never released; this is our sizing:
    # the released attention design (64 q heads x 64, 8 kv heads, sinks, SWA 128 alternating, YaRN,
    # biases, o200k vocab) on a wider, deeper trunk: 48 layers, hidden 6144 (= 96 x 64, a multiple of
    # 32 and 16 so MXFP4 and NVFP4 blocks tile it), and one clamped-SwiGLU MLP of 16896 (2.75 x hidden,
    # the usual SwiGLU ratio). That lands at about 20.1B parameters, all of them active.
    "20b-dense": ModelConfig(
        name="20b-dense",
        num_layers=48, hidden_size=6144, head_dim=64, num_q_heads=64, num_kv_heads=8, vocab_size=201088,
        mlp="dense", intermediate_size=16896,
        source="this project's reading of the leaked spec (dense 20B); not a released model",
        notes="dense MLP sized to ~20B parameters; see the comment above its entry",
        eos_token_ids=_HARMONY_EOS,
    ),
}

# A same-architecture size is one entry: an existing entry with the fields that differ. The tiny dense
# model is `tiny` with its experts replaced by one clamped-SwiGLU MLP (the 20b-dense design at CPU size);
# no weights ship for it: build it from a checkpoint (--checkpoint), e.g. one written by the tests.
MODELS["tiny-dense"] = MODELS["tiny"].with_overrides(
    name="tiny-dense", mlp="dense", num_experts=0, experts_per_token=0, intermediate_size=256,
    source="this project: the tiny architecture with a dense MLP; no shipped weights",
    notes="sinks, alternating sliding/full layers, YaRN, one clamped-SwiGLU MLP with biases per layer")


def get_model(name: str) -> ModelConfig:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}") from None
