"""Executors behind one step interface (runtime.executors.base.Executor), loaded by name.

    rt = load_runtime("engines/tiny-cpu", executor="onnxruntime")   # a runtime.api.Runtime
    rt.generate([[1, 2, 3]], SamplingParams(max_tokens=8))

"reference": the torch reference runtime (runtime.model.ReferenceModel, any dtype and quant format it emulates).
"onnxruntime": the network exported to an fp32 ONNX graph (plugins.onnx) run by ONNX Runtime on CPU.
"tensorrt": the engine's TensorRT plan (tensorrt/ in the engine directory) on a GPU, KV cache on the device;
written against the TensorRT Python API and not yet run on a GPU (it says so when it loads).
"auto" (the default): onnxruntime, the faster on CPU by benchmarks/bench_executors.py, when it can run the
engine exactly (float32, formats in runtime.executors.onnxruntime.CPU_FORMATS) and its fp32 graph fits in half
the memory; otherwise reference. A request ONNX Runtime fails (e.g. its allocator refusing a long prompt) is
run again on the reference runtime, with one line on stderr saying why (runtime/executors/auto.py).
"""

from __future__ import annotations

from pathlib import Path

from runtime.executors.base import Executor  # noqa: F401

DEFAULT_EXECUTOR = "auto"


def _reference(path: Path, dtype):
    from runtime.api import Runtime
    return Runtime.from_dir(path, dtype=dtype)


def _onnxruntime(path: Path, dtype, onnx_path=None):
    from runtime.executors.onnxruntime import load_onnxruntime
    return load_onnxruntime(path, dtype, onnx_path=onnx_path)


def _auto(path: Path, dtype):
    import torch
    from runtime.api import RuntimeLoadError
    from runtime.executors.auto import AutoRuntime, is_executor_failure, note, one_line
    from runtime.executors.onnxruntime import cpu_can_run
    if not (dtype == torch.float32 and cpu_can_run(path)):
        return _reference(path, dtype)
    try:
        primary = _onnxruntime(path, dtype)
    except Exception as e:                    # exporting or opening the graph failed: say why in one line
        if not (is_executor_failure(e) or isinstance(e, (RuntimeLoadError, OSError))):
            raise
        note(f"executor auto: onnxruntime cannot run {path} ({type(e).__name__}: {one_line(e)}); "
             f"using the reference runtime")
        return _reference(path, dtype)
    return AutoRuntime(primary, lambda: _reference(path, dtype))


def _tensorrt(path: Path, dtype):
    from runtime.executors.tensorrt import load_tensorrt
    return load_tensorrt(path, dtype)


EXECUTORS = {"auto": _auto, "reference": _reference, "onnxruntime": _onnxruntime, "tensorrt": _tensorrt}


def load_runtime(path: str | Path, executor: str = DEFAULT_EXECUTOR, dtype=None, onnx_path=None):
    """An engine directory or checkpoint folder -> runtime.api.Runtime driving the named executor.
    onnx_path: (onnxruntime only) run this fp32 graph, in the "onnxruntime-cpu" lowering (plugins.onnx.fp4),
    instead of exporting one."""
    import torch
    from runtime.api import check_manifest
    check_manifest(Path(path))
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if onnx_path is not None:
        if executor not in ("onnxruntime", "auto"):
            raise ValueError(f"an ONNX graph ({onnx_path}) runs with executor 'onnxruntime', not {executor!r}")
        return _onnxruntime(Path(path), dtype or torch.float32, onnx_path)
    return EXECUTORS[executor](Path(path), dtype or torch.float32)
