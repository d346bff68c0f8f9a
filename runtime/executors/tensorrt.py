"""Run an engine's TensorRT plan on a GPU, behind the executor step interface (new_cache / forward), with
the KV cache kept on the device between steps.

    ex = TensorRTExecutor(plan_path, network)            # module: "tensorrt_rtx" or "tensorrt"
    cache = ex.new_cache(batch_size)
    logits = ex.forward(input_ids, positions, cache, logits="last")

The plan's inputs and outputs are the ONNX graph's (plugins/onnx/export.py): input_ids, position_ids
[batch, seq]; per sliding cache kind the ring's positions; per layer `past_key_i` / `past_value_i` of a fixed
capacity; outputs logits [batch, seq, vocab] and `present_*` for every `past_*`. The cache is a
runtime.executors.pieces.FixedCache of device tensors: full layers' present_* are bound to the address of
their past_* (TensorRT's KV-cache update layer, imported from the graph's TensorScatter, writes in place),
rings' into new tensors copied back into the rows the call covered; prompts run in calls of at most
max_chunk tokens. Nothing goes through the host but the token ids and the logits.

Written against the TensorRT / TensorRT-RTX Python API (Runtime.deserialize_cuda_engine,
IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3); it needs a GPU and has not run
on one in this project: constructing it says so.
"""

from __future__ import annotations

import sys
import numpy as np
import torch

from plugins.onnx.kv_cache import DEFAULT_MAX_CHUNK, present_name
from runtime.executors.pieces import FixedCache, cache_specs, last_valid, plan_chunks, right_padded, roll_rows

from spec.network import Network

UNVALIDATED = ("TensorRT executor: written against the TensorRT Python API and not yet run on a GPU by this "
               "project; compare its tokens with the reference runtime before trusting them")


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
        self.max_chunk = DEFAULT_MAX_CHUNK
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

    def new_cache(self, batch_size: int, capacity: int = 256) -> FixedCache:
        """Empty cache of the plan's fixed capacity (`capacity` is a hint its shapes already fix)."""
        full = {layer.index for layer in self.network.layers if layer.attention.cache_kind.full}
        specs = cache_specs([(n, list(self.engine.get_tensor_shape(n))) for n in self.inputs], full)

        def alloc(shape, spec):
            return torch.full(shape, -1 if spec.is_pos else 0, dtype=self._torch_dtype(spec.name), device=self.device)
        return FixedCache.empty(specs, batch_size, alloc)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: FixedCache,
                logits: str = "last", first_row: int = 0) -> torch.Tensor:
        ids = input_ids.detach().cpu().numpy().astype(np.int64)
        pos = positions.detach().cpu().numpy().astype(np.int64)
        B, T = ids.shape
        cache.check_room(pos, self.max_chunk)
        ids, pos, shift = right_padded(ids, pos)
        last = last_valid(pos)
        picked, parts = None, []
        for cols in plan_chunks(pos, self.max_chunk):
            out = self._run(ids[:, cols], pos[:, cols], cache, first_row)           # [B, t, V] on the device
            here = torch.from_numpy((last >= cols.start) & (last < cols.stop)).to(self.device)
            at = torch.from_numpy(np.clip(last - cols.start, 0, out.shape[1] - 1)).to(self.device)
            row_logits = out[torch.arange(B, device=self.device), at]
            picked = row_logits if picked is None else torch.where(here[:, None], row_logits, picked)
            if logits == "all":
                parts.append(out)
        rows = slice(first_row, first_row + B)
        cache.lengths[rows] = np.maximum(cache.lengths[rows], pos.max(axis=1) + 1)
        if logits == "all":
            full = torch.cat(parts, dim=1).cpu().numpy()
            return torch.from_numpy(roll_rows(full, shift) if shift.any() else full)
        return picked.cpu()

    def _run(self, ids: np.ndarray, pos: np.ndarray, cache: FixedCache, first_row: int) -> torch.Tensor:
        rows = slice(first_row, first_row + ids.shape[0])
        feeds = {"input_ids": torch.from_numpy(np.where(pos >= 0, ids, 0)).to(self.device),
                 "position_ids": torch.from_numpy(pos).to(self.device)}
        views = {s.name: cache.tensors[s.name][rows] for s in cache.specs}     # contiguous row ranges
        feeds.update(views)
        for name in self.inputs:
            t = feeds[name]
            self.context.set_input_shape(name, tuple(t.shape))
            self.context.set_tensor_address(name, t.data_ptr())
        outs = {}
        in_place = {present_name(s.name): views[s.name] for s in cache.specs if s.in_place}
        for name in self.outputs:
            if name in in_place:
                outs[name] = in_place[name]                     # the KV-cache update writes into past_*
            else:
                shape = tuple(self.context.get_tensor_shape(name))
                outs[name] = torch.empty(shape, dtype=self._torch_dtype(name), device=self.device)
            self.context.set_tensor_address(name, outs[name].data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
        stream.synchronize()
        for s in cache.specs:
            if not s.in_place:
                cache.tensors[s.name][rows] = outs[present_name(s.name)]
        return outs["logits"].float()


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
