"""Run an engine's TensorRT plan on a GPU, behind the executor step interface (new_cache / forward), with
the KV cache kept on the device between steps.

    ex = TensorRTExecutor(plan_path, network)            # module: "tensorrt_rtx" or "tensorrt"
    cache = ex.new_cache(batch_size)
    logits = ex.forward(input_ids, positions, cache, logits="last")

The plan's inputs and outputs are the ONNX graph's (plugins/onnx/export.py): input_ids, position_ids
[batch, seq]; per cache kind the slot positions (`past_full_pos` [batch, past], `past_window{W}_pos`
[batch, W]); per layer `past_key_i` / `past_value_i`; outputs logits [batch, seq, vocab] and `present_*`
for every `past_*`. Each step binds the device tensors of the cache as inputs, allocates the outputs on
the device, runs `execute_async_v3` on the current CUDA stream, and keeps the `present_*` tensors as the
next step's `past_*`: nothing goes through the host but the token ids and the logits.

Written against the TensorRT / TensorRT-RTX Python API (Runtime.deserialize_cuda_engine,
IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3); it needs a GPU and has not run
on one in this project: constructing it says so.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from spec.network import Network

UNVALIDATED = ("TensorRT executor: written against the TensorRT Python API and not yet run on a GPU by this "
               "project; compare its tokens with the reference runtime before trusting them")


@dataclass
class DeviceCache:
    """The graph's past_* inputs as device tensors, replaced by the present_* outputs after every step. Entries
    carry their positions (-1 = empty, masked); `grow_axis` is each growing tensor's axis, so the rows the
    scheduler forwards alone are put back beside the others (as runtime.executors.onnxruntime.OrtCache)."""
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    grow_axis: dict[str, int] = field(default_factory=dict)

    def reset_rows(self, rows) -> None:
        rows = list(rows)
        for name, t in self.tensors.items():
            t[rows] = -1 if name.endswith("_pos") else 0

    def copy_rows_from(self, src: "DeviceCache", src_rows, dst_rows) -> None:
        for name in self.tensors:
            self._put(name, list(dst_rows), src.tensors[name][list(src_rows)].clone())

    def put_rows(self, first_row: int, tensors: dict[str, torch.Tensor]) -> None:
        for name, new in tensors.items():
            self._put(name, slice(first_row, first_row + new.shape[0]), new)

    def _put(self, name: str, rows, new: torch.Tensor) -> None:
        axis, old = self.grow_axis.get(name), self.tensors[name]
        fill = -1 if name.endswith("_pos") else 0
        if axis is not None and new.shape[axis] != old.shape[axis]:
            longer, shorter = (new, old) if new.shape[axis] > old.shape[axis] else (old, new)
            pad = list(shorter.shape)
            pad[axis] = longer.shape[axis] - shorter.shape[axis]
            grown = torch.cat([shorter, torch.full(pad, fill, dtype=shorter.dtype, device=shorter.device)], axis)
            old, new = (grown, new) if shorter is old else (old, grown)
            self.tensors[name] = old
        old[rows] = new


class TensorRTExecutor:
    def __init__(self, plan_path, network: Network, module: str = "tensorrt_rtx", device: str = "cuda"):
        import importlib
        from runtime.api import RuntimeLoadError
        print(UNVALIDATED, file=sys.stderr, flush=True)
        if not torch.cuda.is_available():
            raise RuntimeLoadError("the TensorRT executor needs a CUDA GPU; use --executor reference or onnxruntime "
                                   "here")
        try:
            trt = importlib.import_module(module)
        except ImportError:
            raise RuntimeLoadError(f"the plan needs the {module} Python package, which is not installed") from None
        self.trt, self.network, self.device = trt, network, torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with open(plan_path, "rb") as f:
            self.engine = self._runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeLoadError(f"{plan_path}: {module} could not deserialize the plan (built for another GPU or "
                               f"TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]

    def _torch_dtype(self, name: str) -> torch.dtype:
        import numpy as np
        np_dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(name)))
        return torch.from_numpy(np.zeros((), np_dtype)).dtype

    def new_cache(self, batch_size: int, capacity: int = 256) -> DeviceCache:
        """Empty cache: full-attention inputs with 0 rows, sliding ones with `window` rows at position -1.
        (`capacity` is a hint the graph's growing full-attention inputs do not need.)"""
        cache = DeviceCache()
        for name in self.inputs:
            if not name.startswith("past_"):
                continue
            dims = list(self.engine.get_tensor_shape(name))
            shape = [batch_size if d == -1 and i == 0 else (0 if d == -1 else d) for i, d in enumerate(dims)]
            grows = [i for i, d in enumerate(dims) if d == -1 and i > 0]
            if grows:
                cache.grow_axis[name] = grows[0]
            fill = -1 if name.endswith("_pos") else 0
            cache.tensors[name] = torch.full(shape, fill, dtype=self._torch_dtype(name), device=self.device)
        return cache

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: DeviceCache,
                logits: str = "last", first_row: int = 0) -> torch.Tensor:
        rows = slice(first_row, first_row + input_ids.shape[0])
        feeds = {"input_ids": input_ids.to(self.device, torch.int64).contiguous(),
                 "position_ids": positions.to(self.device, torch.int64).contiguous(),
                 **{name: t[rows].contiguous() for name, t in cache.tensors.items()}}
        for name in self.inputs:
            t = feeds[name]
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outs[name] = torch.empty(shape, dtype=self._torch_dtype(name), device=self.device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        stream.synchronize()
        cache.put_rows(first_row, {"past_" + name.removeprefix("present_"): t for name, t in outs.items()
                                   if name.startswith("present_")})
        all_logits = outs["logits"].float()
        if logits == "all":
            return all_logits.cpu()
        last = (positions >= 0).sum(dim=1).clamp(min=1) - 1                     # right-padded sequences
        return all_logits[torch.arange(all_logits.shape[0]), last.to(self.device)].cpu()


def load_tensorrt(path, dtype=None):
    """An engine directory with a TensorRT plan (engine.json "tensorrt".plan) -> runtime.api.Runtime over
    the TensorRT executor. GPU only; see UNVALIDATED."""
    from pathlib import Path
    from runtime.api import Runtime, RuntimeLoadError, load_tokenizer
    from spec.engine_values import ENGINE_ERRORS, read_engine
    path = Path(path)
    try:
        values = read_engine(path, need_network=True)
    except ENGINE_ERRORS as e:
        raise RuntimeLoadError(str(e)) from None
    section = values.manifest.tensorrt or {}
    if not section.get("plan"):
        raise RuntimeLoadError(f"{path}: no TensorRT plan in engine.json ({section.get('note', 'no tensorrt section')});"
                               f" build one with build-engine (RTX-class GPUs) or build-engine --validate on the GPU")
    module = "tensorrt_rtx" if section.get("builder") == "tensorrt-rtx" else "tensorrt"
    network = values.network
    ex = TensorRTExecutor(path / section["plan"], network, module=module)
    return Runtime(network, None, tokenizer=load_tokenizer(path), source=str(path), executor=ex)
