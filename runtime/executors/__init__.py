"""Executors behind one step interface (runtime.executors.base.Executor), loaded by name.

    rt = load_runtime("engines/tiny-cpu", executor="onnxruntime")   # a runtime.api.Runtime
    rt.generate([[1, 2, 3]], SamplingParams(max_tokens=8))

"reference": the torch reference runtime (runtime.model.ReferenceModel, any dtype and quant format it emulates).
"onnxruntime": the network exported to an fp32 ONNX graph (plugins.onnx) run by ONNX Runtime on CPU.
"tensorrt": the engine's TensorRT plan (tensorrt/ in the engine directory) on a GPU, KV cache on the device;
written against the TensorRT Python API and not yet run on a GPU (it says so when it loads).
"auto" (the default): runtime.executors.choice.choose_executor, the rule run-engine and the served model share
(the engine's TensorRT-RTX plan on a GPU of its SM; on the CPU onnxruntime, the faster by
benchmarks/bench_executors.py, when it runs the engine exactly and its graph's estimated peak memory for the
request fits; otherwise reference). load_runtime logs the choice and its reason. On ONNX Runtime chosen by
auto, a request ONNX Runtime fails (e.g. its allocator refusing a long prompt) is run again on the reference
runtime, with one line on stderr saying why (runtime/executors/auto.py).
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


def _onnxruntime_with_fallback(path: Path, dtype):
    """auto's ONNX Runtime: a graph that cannot be exported or opened, or a request it fails, goes to the
    reference runtime with one line saying why."""
    from runtime.api import RuntimeLoadError
    from runtime.executors.auto import AutoRuntime, is_executor_failure, note, one_line
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


LOADERS = {"reference": _reference, "onnxruntime": _onnxruntime, "tensorrt": _tensorrt}
EXECUTORS = ("auto",) + tuple(LOADERS)          # what --executor takes (runtime.executors.choice.CHOICES)


def load_runtime(path: str | Path, executor: str = DEFAULT_EXECUTOR, dtype=None, onnx_path=None,
                 tokens: int | None = None, log=None):
    """An engine directory or checkpoint folder -> runtime.api.Runtime driving the named executor, or the one
    choose_executor picks for "auto" (tokens: the longest forward expected, e.g. the prompt length). The
    choice is logged (log: a callable taking one line; default stderr) and kept as `runtime.executor_choice`.
    onnx_path: (onnxruntime only) run this fp32 graph, in the "onnxruntime-cpu" lowering (plugins.onnx.fp4),
    instead of exporting one."""
    import sys

    import torch
    from runtime.api import check_manifest
    from runtime.executors.choice import ExecutorChoice, choose_executor
    check_manifest(Path(path))
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    dtype = dtype or torch.float32
    if onnx_path is not None:
        if executor not in ("onnxruntime", "auto"):
            raise ValueError(f"an ONNX graph ({onnx_path}) runs with executor 'onnxruntime', not {executor!r}")
        choice = ExecutorChoice("onnxruntime", f"the ONNX graph {onnx_path} was given")
        rt = _onnxruntime(Path(path), dtype, onnx_path)
    else:
        choice = choose_executor(path, executor, dtype=dtype, tokens=tokens)
        if executor == "auto" and choice.name == "onnxruntime":
            rt = _onnxruntime_with_fallback(Path(path), dtype)
        else:
            rt = LOADERS[choice.name](Path(path), dtype)
    (log or (lambda line: print(line, file=sys.stderr, flush=True)))(choice.line())
    rt.executor_choice = choice
    return rt
