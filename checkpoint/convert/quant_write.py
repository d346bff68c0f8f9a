"""What convert_checkpoint needs beyond copying names when the target is quantized (hf-nvfp4, hf-fp8):
the registry format a target holds, the calibrated scales, one shared scale per quantizing rule, and
ModelOpt's quant configs.
"""

from __future__ import annotations

import torch

import spec
from spec.canonical import INPUT_SCALE_SUFFIX
from checkpoint.calibration import Calibration
from checkpoint.config_io import hf_config_dict, openai_config_dict
from checkpoint.errors import CheckpointError
from checkpoint.modelopt_config import quant_configs
from checkpoint.convert import quant_quirks as qq
from checkpoint.convert.load import CanonicalCheckpoint
from checkpoint.convert.mapping import Expanded
from checkpoint.quant_policy import QuantPolicy, format_for_checkpoint, kv_scale
from spec.registry.quant_formats import get_quant

# Targets in ModelOpt's HF layout (hf_quant_config.json + quantization_config).
MODELOPT_TARGETS = ("hf-nvfp4", "hf-fp8")
KV_SUFFIXES = (".k_scale", ".v_scale")
_TORCH_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


class Inputs:
    """The canonical values a conversion writes from: the source checkpoint's, plus calibrated scales
    (canonical name -> float32 0-d tensor), which take precedence over the source's own."""

    def __init__(self, ck: CanonicalCheckpoint, extra: dict[str, torch.Tensor] | None = None):
        self.ck, self.extra, self.config = ck, dict(extra or {}), ck.config
        self._names = set(ck.names())

    def has(self, name: str) -> bool:
        return name in self.extra or name in self._names

    def get(self, name: str, rows: slice | None = None):
        return self.extra[name] if name in self.extra else self.ck.get(name, rows)

    def dtype(self, name: str):
        return torch.float32 if name in self.extra else self.ck.dtype(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return () if name in self.extra else self.ck.shape(name)


def quant_format(to: str, calibration) -> str | None:
    """The registry format a ModelOpt target holds given the calibration (None for the other targets)."""
    if to not in MODELOPT_TARGETS:
        if calibration is not None:
            raise CheckpointError(f"--to {to} stores no activation scales, so a calibration has nothing to "
                                  f"calibrate; fix: drop it, or convert to {' or '.join(MODELOPT_TARGETS)}")
        return None
    try:
        return format_for_checkpoint(to, calibrated=calibration is not None)
    except ValueError:
        raise CheckpointError(f"--to {to} holds W8A8 FP8, whose activation scales must be calibrated (an FP8 "
                              f"checkpoint without input_scale is loaded by neither TensorRT-LLM nor vLLM); fix: "
                              f"pass calibration='default' (built-in texts) or a text file (--calib-file FILE)") from None


def shared_scale(src: Inputs, inputs, pieces, codec: str) -> qq.SharedScale:
    """One scale for every input of a quantizing rule, agreed before any piece is written: MXFP4 -> NVFP4
    keeps the MXFP4 exponents (exact transcode); inputs already in `codec` with one common scale keep it
    (bit-exact pass-through); otherwise the amax over all inputs and all row pieces (a streaming pass)."""
    kinds = {src.dtype(n) for n in inputs}
    if codec == "nvfp4" and kinds == {"mxfp4"}:
        ks = [k for n in inputs for p in pieces if (k := qq.mxfp4_piece_kmax(src.get(n, p))) is not None]
        return qq.mxfp4_shared(max(ks) if ks else 0)
    if kinds == {codec}:
        scales = {qq.value_scale(src.get(n, pieces[0])) for n in inputs}
        if len(scales) == 1:
            return qq.SharedScale(codec, scales.pop())
    return qq.scale_from_amax(codec, max(qq.value_amax(src.get(n, p)) for n in inputs for p in pieces))


def wanted_scales(ex: Expanded) -> list[str]:
    """Canonical calibrated-scale names the target's write rules read."""
    return sorted({n for _, (_, ins) in ex.write.items() for n in ins
                   if n.endswith(INPUT_SCALE_SUFFIX) or n.endswith(KV_SUFFIXES)})


def calibrated_scales(ex: Expanded, pol: QuantPolicy, cal: Calibration) -> dict[str, torch.Tensor]:
    """Turn each calibrated amax into the scale the target stores."""
    missing = [n for n in wanted_scales(ex) if n not in (cal.kv_amax if n.endswith(KV_SUFFIXES) else cal.amax)]
    if missing:
        raise CheckpointError(f"the calibration holds no amax for {len(missing)} scale(s) the target needs, e.g. "
                              f"{', '.join(missing[:3])}; fix: calibrate this very model (builder.calibrate)")
    out = {}
    for name in wanted_scales(ex):
        if name.endswith(INPUT_SCALE_SUFFIX):
            value = pol.input_scale(cal.amax[name])
        else:
            value = kv_scale(cal.kv_amax[name])
        out[name] = torch.tensor(float(value), dtype=torch.float32)
    return out


def config_dicts(to: str, ck: CanonicalCheckpoint, quant: str | None, kv_cache: str | None) -> tuple[dict, dict | None]:
    """(config.json, hf_quant_config.json or None) of the target."""
    if to == "openai":
        return openai_config_dict(ck.config), None
    embed = ck.dtype("embed.weight")
    config = hf_config_dict(ck.config, mxfp4=(to == "hf-mxfp4"), dtype=_TORCH_DTYPE_NAMES.get(embed, "bfloat16"))
    if quant is None:
        return config, None
    from checkpoint.quant_policy import policy
    # A dense model has no routers to list as unquantized.
    groups = {g: f for g, f in policy(quant).groups.items() if ck.config.is_moe or g != "router"}
    hf_quant, qc = quant_configs(get_quant(quant).trtllm_quant_algo, groups, ck.config.num_layers,
                                 "FP8" if kv_cache == "fp8" else None,
                                 writer=f"gptoss-trt {spec.__version__} (ModelOpt 0.47 HF layout)")
    config["quantization_config"] = qc
    return config, hf_quant
