"""Which executor runs an engine here: the one rule run-engine and the served model share.

    c = choose_executor(engine_dir, "auto", tokens=len(prompt))      # ExecutorChoice(name, reason)
    print(c.line())                                                  # "executor onnxruntime: ..."

`auto`:
1. a GPU engine on a machine with a GPU of its SM: the engine's TensorRT-RTX plan when it has one for that SM
   (RTX-class GPUs: build-engine writes plans only for the SMs TensorRT-RTX targets), else TensorRT-LLM (datacenter
   GPUs; the served model only: run-engine has no TensorRT-LLM path and goes on to the CPU rule);
2. on the CPU: ONNX Runtime when it runs the engine exactly (float32, quant formats in
   runtime.executors.onnxruntime.CPU_FORMATS) and the graph's estimated peak memory for the request size
   (plugins.onnx.memory: `tokens` in one forward) fits in half this machine's memory; else the reference runtime.
A served GPU engine on a machine without its GPU is refused (ExecutorChoiceError says what to pass instead):
the reference runtime emulates its numerics on the CPU only when asked for by name. A named executor is taken
as asked (loading it says what is wrong, if anything).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHOICES = ("auto", "onnxruntime", "reference", "tensorrt")     # run-engine and serve-engine --executor
SERVED_ONLY = ("trtllm",)                                      # TensorRT-LLM's LLM API runs only in Triton
EXECUTOR_NAMES = ("onnxruntime", "reference", "tensorrt") + SERVED_ONLY


class ExecutorChoiceError(ValueError):
    pass


@dataclass(frozen=True)
class ExecutorChoice:
    name: str            # one of EXECUTOR_NAMES
    reason: str          # one line: why this one

    def line(self) -> str:
        return f"executor {self.name}: {self.reason}"


def choose_executor(path: str | Path, requested: str = "auto", *, dtype=None, tokens: int | None = None,
                    served: bool = False, present=None) -> ExecutorChoice:
    """path: an engine directory or checkpoint folder. tokens: the most tokens one forward takes (the prompt
    length; the served model passes max_seq_len). served: choosing for the Triton model (TensorRT-LLM allowed,
    GPU engines held to their GPU). present: the GPUs to assume (default: runtime.devices.detect_gpus())."""
    allowed = CHOICES + (SERVED_ONLY if served else ())
    if requested not in allowed:
        raise ExecutorChoiceError(f"unknown executor {requested!r}; choose one of {', '.join(allowed)}")
    path = Path(path)
    manifest = _manifest(path)
    if served:
        _check_target(path, manifest, requested, present)
    if requested != "auto":
        return ExecutorChoice(requested, f"asked for (--executor {requested})")
    why_not_gpu = ""
    if manifest is not None and manifest.runs_on_gpu:
        gpu = _gpu_of_sm(manifest.sm, present)
        if gpu is not None:
            plan = manifest.tensorrt or {}
            if plan.get("plan") and plan.get("builder") == "tensorrt-rtx" and plan.get("sm") in (None, manifest.sm):
                return ExecutorChoice("tensorrt", f"{gpu.name} (SM {gpu.sm}) and the engine's TensorRT-RTX plan "
                                                  f"for it ({plan['plan']})")
            if served:
                return ExecutorChoice("trtllm", f"{gpu.name} (SM {gpu.sm}), no TensorRT-RTX plan for it: "
                                                f"TensorRT-LLM's LLM API")
            why_not_gpu = (f"{gpu.name} has no TensorRT-RTX plan in this engine and run-engine has no "
                           f"TensorRT-LLM path; ")
        else:
            why_not_gpu = f"no SM {manifest.sm} GPU here ({manifest.gpu} engine); "
    return _cpu_choice(path, dtype, tokens, why_not_gpu)


def _cpu_choice(path: Path, dtype, tokens: int | None, prefix: str) -> ExecutorChoice:
    import torch

    from runtime.executors.onnxruntime import CPU_FORMATS, engine_network
    if dtype is not None and dtype != torch.float32:
        return ExecutorChoice("reference", prefix + f"{dtype} asked for; ONNX Runtime runs float32 graphs on CPU")
    network = engine_network(path)
    other = sorted(set(network.quant_formats()) - set(CPU_FORMATS))
    if other:
        return ExecutorChoice("reference", prefix + f"quant format(s) {', '.join(other)} need their Q/DQ graph, "
                                                    f"which ONNX Runtime's CPU provider does not run exactly")
    from plugins.onnx.memory import max_forward_tokens, ort_budget_for, ort_peak_bytes
    from runtime.executors.onnxruntime import packed_weight_bytes
    budget = ort_budget_for(network)
    weights = packed_weight_bytes(path)
    est = ort_peak_bytes(network, max(1, int(tokens or 1)), weights=weights)
    if est.total > budget:
        fits = max_forward_tokens(network, budget, weights=weights)
        return ExecutorChoice("reference", prefix + f"ONNX Runtime's graph would need {est.describe()}, over "
                                                    f"{budget / 2**30:.1f} GiB (its share of this machine's memory; it "
                                                    f"fits {fits} tokens in one forward)")
    return ExecutorChoice("onnxruntime", prefix + f"ONNX Runtime runs this engine exactly on CPU, the fastest here, "
                                                  f"{est.describe()} of {budget / 2**30:.1f} GiB")


def _manifest(path: Path):
    from spec.manifest import EngineManifest, ManifestError, is_engine_dir
    if not is_engine_dir(path):
        return None
    try:
        return EngineManifest.read(path)
    except ManifestError as e:
        raise ExecutorChoiceError(str(e)) from None


def _gpu_of_sm(sm, present):
    from runtime.devices import detect_gpus
    present = detect_gpus() if present is None else present
    return next((g for g in present if g.sm == sm), None)


def _check_target(path: Path, manifest, requested: str, present) -> None:
    """The served model honours the target the engine was built for (architecture.md, "One resolved target")."""
    if manifest is None or requested == "reference":
        return
    if not manifest.runs_on_gpu:
        if requested in ("trtllm", "tensorrt"):
            raise ExecutorChoiceError(f"{path} was built for the CPU (--gpu cpu, {manifest.quant}); {requested} "
                                      f"serves GPU engines: rebuild with build-engine --gpu <your GPU>, or serve "
                                      f"with --executor onnxruntime or reference")
        return
    if requested == "onnxruntime":
        return
    from runtime.devices import detect_gpus, trtllm_importable
    present = detect_gpus() if present is None else present
    here = ", ".join(sorted({f"{g.name} (SM {g.sm})" for g in present})) or "no NVIDIA GPU"
    if _gpu_of_sm(manifest.sm, present) is None:
        raise ExecutorChoiceError(
            f"{path} was built for {manifest.gpu} (SM {manifest.sm}) and this machine has {here}: its GPU "
            f"executors cannot run it here. Serve it on a {manifest.gpu} box, rebuild for this machine "
            f"(build-engine --gpu ...), or pass --executor reference to emulate its {manifest.quant} numerics "
            f"with the reference runtime on the CPU")
    rtx_plan = (manifest.tensorrt or {}).get("builder") == "tensorrt-rtx" and (manifest.tensorrt or {}).get("plan")
    if requested == "trtllm" or (requested == "auto" and not rtx_plan):
        if not trtllm_importable():
            raise ExecutorChoiceError(
                f"{path} is a {manifest.gpu} engine and this machine has the GPU, but tensorrt_llm is not "
                f"importable: install TensorRT-LLM (or NVIDIA's Triton TensorRT-LLM container), or pass "
                f"--executor reference")
