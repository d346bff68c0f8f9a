"""ONNX Runtime (CPU) executing the graph plugins.onnx exports from the network definition.

The executor's cache is the graph's own cache tensors (plugins/onnx/attention.py): `present_*` outputs
become the next call's `past_*` inputs. Prompts may come right-padded (the reference runtime's convention);
rows are rolled to left padding before the call and the logits rolled back, because a sliding layer keeps
the last `window` rows it is given.

Precision: ONNX Runtime's CPU provider has no bf16 GEMMs and no FP4 DequantizeLinear, so this executor runs
an fp32 graph, exported in the "onnxruntime-cpu" lowering (plugins/onnx/fp4.py: FP4 weights as e2m1 codes
decoded by a table, TensorRT's FP4 activation quantizer in standard ops; the same values). Weight-only formats
(MXFP4, NVFP4 W4A16) dequantize exactly. A graph in TensorRT's lowering (FLOAT4E2M1 initializers, trt:: ops)
is refused, naming what the CPU provider lacks.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from plugins.onnx.graph import ORT_CPU
from spec.network import Network

ELEM = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
# Quant formats this executor runs exactly: unquantized, and weight-only formats whose weights dequantize
# exactly into the fp32 graph. Activation-quantizing formats (FP8, NVFP4 W4A4) need their Q/DQ graph.
CPU_FORMATS = ("bf16", "mxfp4", "w4a16-nvfp4")


@dataclass
class OrtCache:
    """The graph's cache tensors, row = sequence. Entries carry their token position (-1 = empty, masked), so
    rows may hold different numbers of live entries; `grow_axis` names each tensor's growing axis (full
    layers add one entry per token) so rows forwarded alone can be put back beside the others."""
    batch_size: int
    tensors: dict[str, np.ndarray] = field(default_factory=dict)    # graph input name -> array
    grow_axis: dict[str, int] = field(default_factory=dict)         # name -> axis that grows (full layers)

    def reset_rows(self, rows) -> None:
        """Rows become empty sequences (the scheduler's admission of new requests)."""
        rows = list(rows)
        for t in self.tensors.values():
            t[rows] = -1 if t.dtype == np.int64 else 0

    def copy_rows_from(self, src: "OrtCache", src_rows, dst_rows) -> None:
        for name in self.tensors:
            moved = src.tensors[name][list(src_rows)]           # gathered first: src may be self
            self._fit(name, moved.shape)
            moved = _pad_to(moved, self.grow_axis.get(name), self.tensors[name].shape)
            self.tensors[name][list(dst_rows)] = moved

    def put_rows(self, first_row: int, tensors: dict[str, np.ndarray]) -> None:
        """Forwarded rows [first_row, first_row + k) written back; the other rows are padded with empty entries
        where the forward grew the cache."""
        for name, new in tensors.items():
            self._fit(name, new.shape)
            self.tensors[name][first_row:first_row + new.shape[0]] = _pad_to(new, self.grow_axis.get(name),
                                                                            self.tensors[name].shape)

    def _fit(self, name: str, shape) -> None:
        axis = self.grow_axis.get(name)
        if axis is not None and shape[axis] > self.tensors[name].shape[axis]:
            full = list(self.tensors[name].shape)
            full[axis] = shape[axis]
            self.tensors[name] = _pad_to(self.tensors[name], axis, full)


def _pad_to(a: np.ndarray, axis: int | None, shape) -> np.ndarray:
    """`a` padded at the end of `axis` with empty entries (-1 positions, zero K/V) to shape[axis]."""
    if axis is None or a.shape[axis] == shape[axis]:
        return a
    pad = [(0, 0)] * a.ndim
    pad[axis] = (0, shape[axis] - a.shape[axis])
    return np.pad(a, pad, constant_values=-1 if a.dtype == np.int64 else 0)


class OnnxRuntimeExecutor:
    def __init__(self, network: Network, onnx_path: str | Path, threads: int | None = None, workdir=None):
        import onnxruntime as ort
        self.network = network
        self.device = torch.device("cpu")
        self.path = Path(onnx_path)
        self._workdir = workdir                   # a temporary export directory this executor owns
        # The most tokens one forward may take before its estimated peak memory (plugins.onnx.memory) exceeds
        # the budget; the scheduler admits prompts within it (None: no limit known).
        self.max_forward_tokens: int | None = None
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        _check_cpu_lowering(self.path)
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.cache_inputs = [i for i in self.session.get_inputs() if i.name.startswith("past_")]
        self.output_names = [o.name for o in self.session.get_outputs()]
        for i in self.session.get_inputs():
            if i.type not in ELEM:
                raise ValueError(f"{self.path}: input {i.name} is {i.type}; the CPU executor runs fp32 graphs only "
                                 f"(export with dtype='float32')")

    def close(self) -> None:
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def __del__(self):
        try:
            self.close()
        except Exception:           # interpreter shutdown: the temporary directory may outlive us
            pass

    # -- the Executor protocol ----------------------------------------------------------------------------
    def new_cache(self, batch_size: int, capacity: int = 0) -> OrtCache:
        """Empty cache: full layers 0 rows, sliding layers `window` rows at position -1."""
        cache = OrtCache(batch_size)
        for i in self.cache_inputs:
            shape = [batch_size if d == "batch" else 0 if isinstance(d, str) else d for d in i.shape]
            grows = [a for a, d in enumerate(i.shape) if isinstance(d, str) and d != "batch"]
            if grows:
                cache.grow_axis[i.name] = grows[0]
            dt = ELEM[i.type]
            cache.tensors[i.name] = np.full(shape, -1, dt) if dt == np.int64 else np.zeros(shape, dt)
        return cache

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: OrtCache,
                logits: str = "last", first_row: int = 0) -> torch.Tensor:
        """Rows [first_row, first_row + B) of the cache, as the reference model's forward."""
        ids = input_ids.detach().cpu().numpy().astype(np.int64)
        pos = positions.detach().cpu().numpy().astype(np.int64)
        B, T = ids.shape
        if first_row < 0 or first_row + B > cache.batch_size:
            raise ValueError(f"input covers rows [{first_row}, {first_row + B}), the cache has {cache.batch_size}")
        valid = pos >= 0
        shift = T - 1 - np.where(valid.any(1), T - 1 - np.argmax(valid[:, ::-1], axis=1), T - 1)
        if shift.any():                          # right padding -> left padding (roll each row)
            ids, pos = _roll_rows(ids, shift), _roll_rows(pos, shift)
        rows = slice(first_row, first_row + B)
        feeds = {name: t[rows] for name, t in cache.tensors.items()}
        feeds["input_ids"] = np.where(pos >= 0, ids, 0)
        feeds["position_ids"] = pos
        outs = dict(zip(self.output_names, self.session.run(None, feeds)))
        cache.put_rows(first_row, {name: outs["present_" + name.removeprefix("past_")] for name in cache.tensors})
        out = outs["logits"]                     # [B, T, V], left-padded order
        if logits == "none":
            raise ValueError("the onnxruntime executor returns logits only (logits='all' or 'last')")
        if logits == "last":
            return torch.from_numpy(np.ascontiguousarray(out[:, -1]))
        if shift.any():
            out = _roll_rows(out, -shift)
        return torch.from_numpy(np.ascontiguousarray(out))


def _roll_rows(a: np.ndarray, shift: np.ndarray) -> np.ndarray:
    T = a.shape[1]
    idx = (np.arange(T)[None, :] - shift[:, None]) % T
    return np.take_along_axis(a, idx.reshape(idx.shape + (1,) * (a.ndim - 2)), axis=1)


def _check_cpu_lowering(path: Path) -> None:
    """RuntimeLoadError if the graph at `path` is in TensorRT's lowering (what the CPU provider cannot run)."""
    import onnx

    from plugins.onnx.fp4 import tensorrt_only
    from runtime.api import RuntimeLoadError
    found = tensorrt_only(onnx.load(str(path), load_external_data=False))
    if found:
        more = f" and {len(found) - 3} more" if len(found) > 3 else ""
        raise RuntimeLoadError(f"{path}: a graph in TensorRT's lowering, which ONNX Runtime's CPU provider cannot "
                               f"run ({'; '.join(found[:3])}{more}); export it with "
                               f"export_onnx(..., lowering='{ORT_CPU}'), or leave out --onnx and the executor "
                               f"exports that form of the network itself")


def _network(path: Path, ck) -> Network:
    from spec.network import NETWORK_FILE, load_network, network_from_checkpoint
    net_file = path / NETWORK_FILE
    return load_network(net_file) if net_file.is_file() else network_from_checkpoint(ck)


def engine_network(path: str | Path) -> Network:
    """The network of the engine or checkpoint at `path` (network.json, else derived from the checkpoint)."""
    from checkpoint.convert import load_canonical
    from runtime.api import find_checkpoint
    with load_canonical(find_checkpoint(Path(path))) as ck:
        return _network(Path(path), ck)


def load_onnxruntime(path: Path, dtype=None, onnx_path: str | Path | None = None, threads: int | None = None):
    """An engine directory or checkpoint folder -> runtime.api.Runtime over ONNX Runtime. Without
    onnx_path the network is exported to a temporary fp32 graph (removed when the executor is closed)."""
    from checkpoint.convert import load_canonical
    from runtime.api import Runtime, RuntimeLoadError, _check_agrees, find_checkpoint, load_tokenizer
    if dtype is not None and dtype != torch.float32:
        raise RuntimeLoadError(f"the onnxruntime executor runs float32 graphs on CPU (no bf16 GEMMs there); "
                               f"got dtype {dtype}: use --dtype float32 or --executor reference")
    path = Path(path)
    if not path.is_dir():
        raise RuntimeLoadError(f"{path}: not a directory")
    ckpt_dir = find_checkpoint(path)
    workdir = None
    with load_canonical(ckpt_dir) as ck:
        network = _network(path, ck)
        _check_agrees(network, ck.config, path)
        other = set(network.quant_formats()) - set(CPU_FORMATS)
        if onnx_path is None and other:
            raise RuntimeLoadError(f"{path}: the onnxruntime executor runs quant formats {', '.join(CPU_FORMATS)}; "
                                   f"this engine uses {', '.join(sorted(other))}: use --executor reference")
        if onnx_path is None:
            from plugins.onnx.export import export_onnx
            workdir = Path(tempfile.mkdtemp(prefix="gptoss-onnx-"))
            try:
                onnx_path = export_onnx(network, ck, workdir / "model.onnx", dtype="float32",
                                        lowering=ORT_CPU).path
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
    ex = OnnxRuntimeExecutor(network, onnx_path, threads=threads or _threads(), workdir=workdir)
    from plugins.onnx.memory import max_forward_tokens
    from runtime.executors.choice import ort_budget_bytes
    ex.max_forward_tokens = max_forward_tokens(network, ort_budget_bytes())
    return Runtime(network, None, load_tokenizer(path, ckpt_dir), source=str(path), executor=ex)


def _threads() -> int | None:
    value = os.environ.get("GPTOSS_ORT_THREADS")
    return int(value) if value else None
