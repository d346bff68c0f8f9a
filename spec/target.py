"""The build target: everything `--gpu` (and `--quant`) decide, looked up once and passed along as one object.

    target = resolve_target("b200", quant="auto")
    target.gpu, target.sm, target.serving, target.quant, target.kv_cache_dtype, target.kernel_status("gemm_nvfp4")

The fit planner, LLM-API options, checkpoint writing, the manifest, the Triton repository and serving all take this
object; none of them looks the GPU up again. `target_of_manifest` rebuilds it from an engine's manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

from spec.capabilities import kernel_status, moe_backend
from spec.registry.gpus import GpuProfile, get_gpu
from spec.registry.quant_formats import AUTO_KEEPS_SOURCE_BY_ARCH, AUTO_QUANT_BY_ARCH, QuantFormat, get_quant
from spec.registry.serving import SERVING_BY_ARCH, ServingProfile


@dataclass(frozen=True)
class Target:
    gpu: GpuProfile
    serving: ServingProfile
    quant: QuantFormat
    # The KV-cache dtype this target serves with ("bf16" or "fp8"): the planner sizes the cache with it,
    # calibrated checkpoints carry K/V scales for it, the LLM-API options ask for it.
    kv_cache_dtype: str

    @property
    def name(self) -> str:
        return self.gpu.name

    @property
    def sm(self) -> int | None:
        return self.gpu.sm

    @property
    def is_gpu(self) -> bool:
        return self.gpu.sm is not None

    def kernel_status(self, kernel: str) -> str | None:
        return kernel_status(self.gpu.sm, kernel)

    def moe_backend(self) -> str:
        return moe_backend(self.gpu.sm, self.quant.name)

    @property
    def trtllm_kv_cache_dtype(self) -> str:
        """kv_cache_config.dtype in TensorRT-LLM's terms: "auto" means the model's dtype."""
        return "auto" if self.kv_cache_dtype == "bf16" else self.kv_cache_dtype

    def to_dict(self) -> dict:
        return {"gpu": self.gpu.name, "arch": self.gpu.arch, "sm": self.gpu.sm, "quant": self.quant.name,
                "kv_cache_dtype": self.kv_cache_dtype, "serving_source": self.serving.source}


def quant_for(gpu: GpuProfile, quant: str = "auto", source_quant: str | None = None) -> QuantFormat:
    """The quant format: `auto` is the architecture's default (Blackwell nvfp4, Hopper mxfp4, ...), or the
    source checkpoint's own format (`source_quant`) where the architecture keeps it (AUTO_KEEPS_SOURCE_BY_ARCH)."""
    if quant != "auto":
        return get_quant(quant)
    if source_quant in AUTO_KEEPS_SOURCE_BY_ARCH.get(gpu.arch, ()):
        return get_quant(source_quant)
    return get_quant(AUTO_QUANT_BY_ARCH[gpu.arch])


def auto_quant_note(gpu: GpuProfile, quant: str, source_quant: str | None) -> str:
    """What `--quant auto` chose and why, in words, for `--plan` ("" for an explicit --quant or an
    architecture that never keeps the source's format)."""
    keeps = AUTO_KEEPS_SOURCE_BY_ARCH.get(gpu.arch, ())
    if quant != "auto" or not keeps:
        return ""
    default = AUTO_QUANT_BY_ARCH[gpu.arch]
    if source_quant is None:
        return (f"auto: keeps the source's format if it is {' or '.join(keeps)}, as the released checkpoints are, "
                f"else {default}; this source's format is known only once the build reads it")
    if source_quant in keeps:
        return f"auto keeps the source's {source_quant} on {gpu.name}"
    return f"auto: the source is {source_quant}, and {gpu.name} keeps only {' or '.join(keeps)} sources"


def resolve_target(gpu: str, quant: str = "auto", kv_dtype: str | None = None,
                   source_quant: str | None = None) -> Target:
    """The one lookup of `--gpu`: its profile, its architecture's serving profile, the quant format (for
    `auto`, given the source checkpoint's format when known) and the KV-cache dtype (None: the serving
    profile's). KeyError (naming the valid choices) for unknown names."""
    profile = get_gpu(gpu)
    serving = SERVING_BY_ARCH[profile.arch]
    return Target(profile, serving, quant_for(profile, quant, source_quant), kv_dtype or serving.kv_cache_dtype)


def target_of_manifest(manifest) -> Target:
    """The Target an engine was built for (spec.manifest.EngineManifest)."""
    return resolve_target(manifest.gpu, manifest.quant, manifest.target.get("kv_cache_dtype"))
