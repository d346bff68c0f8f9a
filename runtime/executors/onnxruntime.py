"""ONNX Runtime (CPU) executing the graph plugins.onnx exports from the network definition.

The executor's cache is the graph's own fixed-capacity cache tensors (plugins/onnx/kv_cache.py), held as numpy
arrays and bound by pointer through IO binding (runtime/executors/pieces.py): full layers' `present_*` are
bound to the same memory as their `past_*`, so the graph's TensorScatter writes the new rows in place and no
step copies or pads a whole cache; rings (window + sinks + 1 rows) come back as small new tensors. Prompts
run in calls of at most `max_chunk` tokens (GPTOSS_MAX_CHUNK, default plugins.onnx.kv_cache.DEFAULT_MAX_CHUNK)
against the cache, so no intermediate grows with prompt length x context beyond a chunk's. Rows come
right-padded (the reference runtime's convention); left-padded rows are rolled to the right first.

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
import weakref
from pathlib import Path

import numpy as np
import torch

from plugins.onnx.graph import ORT_CPU, ORT_CPU_PACKED
from plugins.onnx.kv_cache import DEFAULT_MAX_CHUNK, present_name
from runtime.executors.pieces import FixedCache, cache_specs, last_valid, plan_chunks, right_padded, roll_rows
from spec.network import Network

ELEM = {"tensor(float)": np.float32, "tensor(int64)": np.int64}
# Quant formats this executor runs exactly: unquantized, and weight-only formats whose weights dequantize
# exactly into the fp32 graph. Activation-quantizing formats (FP8, NVFP4 W4A4) need their Q/DQ graph.
CPU_FORMATS = ("bf16", "mxfp4", "w4a16-nvfp4")


class OnnxRuntimeExecutor:
    def __init__(self, network: Network, onnx_path: str | Path, threads: int | None = None, workdir=None,
                 max_chunk: int | None = None):
        import onnxruntime as ort
        self.network = network
        self.device = torch.device("cpu")
        self.path = Path(onnx_path)
        self.max_chunk = max_chunk or _max_chunk()
        self._workdir = workdir                   # a temporary export directory this executor owns
        # Removed by close(), else when the executor is collected or the interpreter exits (weakref.finalize runs
        # at exit too, where __del__ may never be called); a process killed outright leaves it to the next
        # load_onnxruntime on this machine (sweep_dead_exports).
        self._remove_workdir = weakref.finalize(self, shutil.rmtree, workdir, True) if workdir is not None else None
        # The most tokens one forward may take before its estimated peak memory (plugins.onnx.memory) exceeds
        # the budget; the scheduler admits prompts within it (None: no limit known).
        self.max_forward_tokens: int | None = None
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        _cap_memory(opts)
        from runtime.api import RuntimeLoadError
        try:
            _check_cpu_lowering(self.path)
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except RuntimeLoadError:
            raise
        except Exception as e:  # noqa: BLE001 - protobuf's DecodeError, onnx's and ONNX Runtime's own error classes
            text = str(e).strip().splitlines()
            raise RuntimeLoadError(f"{self.path}: not an ONNX graph ONNX Runtime can load ({type(e).__name__}: "
                                   f"{text[0][:300] if text else ''}); export it again with plugins.onnx.export_onnx"
                                   f"(..., lowering='{ORT_CPU}'), or leave out --onnx and the executor exports the "
                                   f"network itself") from None
        missing = sorted({"input_ids", "position_ids"} - {i.name for i in self.session.get_inputs()}) + sorted(
            {"logits"} - {o.name for o in self.session.get_outputs()})
        if missing:
            raise RuntimeLoadError(f"{self.path}: the graph has no {', '.join(missing)}; it is not a graph "
                                   f"export_onnx wrote for this engine's network")
        for i in self.session.get_inputs():
            if i.type not in ELEM:
                raise ValueError(f"{self.path}: input {i.name} is {i.type}; the CPU executor runs fp32 graphs only "
                                 f"(export with dtype='float32')")
        full = {layer.index for layer in network.layers if layer.attention.cache_kind.full}
        self.specs = cache_specs([(i.name, i.shape) for i in self.session.get_inputs()], full)
        self._elem = {i.name: ELEM[i.type] for i in self.session.get_inputs()}

    def close(self) -> None:
        if self._remove_workdir is not None:
            self._remove_workdir()
        self._workdir = None

    # -- the Executor protocol ----------------------------------------------------------------------------
    def new_cache(self, batch_size: int, capacity: int = 0) -> FixedCache:
        """Empty cache of the graph's fixed capacity (`capacity` is a hint the graph's shapes already fix)."""
        def alloc(shape, spec):
            dt = self._elem[spec.name]
            return np.full(shape, -1, dt) if spec.is_pos else np.zeros(shape, dt)
        return FixedCache.empty(self.specs, batch_size, alloc)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: FixedCache,
                logits: str = "last", first_row: int = 0) -> torch.Tensor:
        """Rows [first_row, first_row + B) of the cache, as the reference model's forward; a prompt longer than
        max_chunk runs as several calls against the cache."""
        if logits == "none":
            raise ValueError("the onnxruntime executor returns logits only (logits='all' or 'last')")
        ids = input_ids.detach().cpu().numpy().astype(np.int64)
        pos = positions.detach().cpu().numpy().astype(np.int64)
        B, T = ids.shape
        if first_row < 0 or first_row + B > cache.batch_size:
            raise ValueError(f"input covers rows [{first_row}, {first_row + B}), the cache has {cache.batch_size}")
        cache.check_room(pos, self.max_chunk)
        ids, pos, shift = right_padded(ids, pos)
        last = last_valid(pos)
        picked = np.zeros((B, self.network.vocab_size), np.float32)
        parts = []
        for cols in plan_chunks(pos, self.max_chunk):
            out = self._run(ids[:, cols], pos[:, cols], cache, first_row)          # [B, t, V]
            if logits == "all":
                parts.append((cols, out))
            here = (last >= cols.start) & (last < cols.stop)
            picked[here] = out[here, last[here] - cols.start]
        rows = slice(first_row, first_row + B)
        cache.lengths[rows] = np.maximum(cache.lengths[rows], pos.max(axis=1) + 1)
        if logits == "last":
            return torch.from_numpy(picked)
        full = np.zeros((B, T, self.network.vocab_size), np.float32)
        for cols, out in parts:
            full[:, cols] = out
        return torch.from_numpy(roll_rows(full, shift) if shift.any() else full)

    def _run(self, ids: np.ndarray, pos: np.ndarray, cache: FixedCache, first_row: int) -> np.ndarray:
        """One call over cache rows [first_row, first_row + B): full caches bound as both past_* and present_*
        (written in place), rings' present_* into scratch arrays copied back into those rows."""
        B = ids.shape[0]
        rows = slice(first_row, first_row + B)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(np.where(pos >= 0, ids, 0)))
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(pos))
        rings = {}
        for s in cache.specs:
            view = cache.tensors[s.name][rows]                  # contiguous: rows of a C-ordered array
            _bind(binding.bind_input, s.name, view)
            out = view if s.in_place else np.empty_like(view)
            if not s.in_place:
                rings[s.name] = out
            _bind(binding.bind_output, present_name(s.name), out)
        logits = np.empty((B, ids.shape[1], self.network.vocab_size), np.float32)
        _bind(binding.bind_output, "logits", logits)
        self.session.run_with_iobinding(binding)
        for name, out in rings.items():
            cache.tensors[name][rows] = out
        return logits


def _bind(bind, name: str, a: np.ndarray) -> None:
    """Bind a numpy array's memory itself (no copy) as input or output `name`."""
    bind(name, "cpu", 0, a.dtype, list(a.shape), a.ctypes.data)


def _max_chunk() -> int:
    value = os.environ.get("GPTOSS_MAX_CHUNK")
    return int(value) if value else DEFAULT_MAX_CHUNK


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


# Expert formats whose weights the "onnxruntime-cpu-packed" lowering keeps as their FP4 bytes.
PACKED_EXPERT_FORMATS = ("mxfp4", "w4a16-nvfp4", "nvfp4")


def cpu_lowering(net: Network, fp32_bytes: int, memory_bytes: int) -> tuple[str, int]:
    """(lowering, bytes the session holds): "onnxruntime-cpu" (FP4 folded to fp32 at session start) while its
    fp32 graph fits in half the memory, else, when every MoE's experts are FP4, "onnxruntime-cpu-packed"
    (experts as their bytes: half a byte a weight plus an e4m3 scale byte per 16, decoded per routed expert;
    bf16 weights as bf16, widened per block at run time, which the bytes returned do not count: an upper bound).
    Measured on the full gpt-oss-20b (bench_scale.py's README rows): 14.4 GB exported, 11.9 GB peak RSS."""
    from spec.network import MoE
    moes = [layer.mlp for layer in net.layers if isinstance(layer.mlp, MoE)]
    packable = moes and all(lin.quant in PACKED_EXPERT_FORMATS for m in moes for lin in (m.gate, m.up, m.down))
    if fp32_bytes <= memory_bytes // 2 or not packable:
        return ORT_CPU, fp32_bytes
    expert = sum(lin.num_experts * lin.out_features * lin.in_features for m in moes for lin in (m.gate, m.up, m.down))
    return ORT_CPU_PACKED, fp32_bytes - 4 * expert + expert // 2 + expert // 16


def session_weight_bytes(path: str | Path) -> tuple[str, int] | None:
    """(lowering, bytes of weights the session would hold) for the engine or checkpoint at `path`, as
    load_onnxruntime would export it on this machine; None when this executor cannot run it (quant formats).
    Counts bf16-stored dense weights at 2 bytes under the packed lowering (plugins/onnx/stored.py)."""
    from checkpoint.convert import load_canonical
    from plugins.onnx.stored import STORED_BF16_LOWERINGS
    from runtime.api import find_checkpoint
    with load_canonical(find_checkpoint(Path(path))) as ck:
        network = _network(Path(path), ck)
        if set(network.quant_formats()) - set(CPU_FORMATS):
            return None
        lowering, held = cpu_lowering(network, _fp32_bytes(ck), _memory_bytes())
        if lowering in STORED_BF16_LOWERINGS and ck.get(network.embedding.weight, rows=slice(0, 1)).dtype == torch.bfloat16:
            from spec.network import MoE
            experts = sum(lin.num_experts * lin.out_features * lin.in_features for layer in network.layers
                          if isinstance(layer.mlp, MoE) for lin in (layer.mlp.gate, layer.mlp.up, layer.mlp.down))
            held -= (_fp32_bytes(ck) - 4 * experts) // 2      # dense weights at 2 bytes instead of 4
        return lowering, held


def packed_weight_bytes(path: str | Path) -> int | None:
    """The weights the session holds when load_onnxruntime would export the packed lowering for `path` (what
    plugins.onnx.memory's estimates take as `weights`); None otherwise (its fp32 count stands)."""
    held = session_weight_bytes(path)
    return held[1] if held is not None and held[0] == ORT_CPU_PACKED else None


def _fp32_bytes(ck) -> int:
    from spec.params import total_params
    return 4 * total_params(ck.config)


def _memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


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
            sweep_dead_exports()
            workdir = new_export_dir()
            try:
                with _checkpoint_bytes(ckpt_dir, workdir) as share:
                    onnx_path = export_onnx(network, ck, workdir / "model.onnx", dtype="float32", share=share,
                                            lowering=cpu_lowering(network, _fp32_bytes(ck), _memory_bytes())[0]).path
            except BaseException:
                shutil.rmtree(workdir, ignore_errors=True)
                raise
    ex = OnnxRuntimeExecutor(network, onnx_path, threads=threads or _threads(), workdir=workdir)
    from plugins.onnx.memory import max_forward_tokens, ort_budget_for
    ex.max_forward_tokens = max_forward_tokens(network, ort_budget_for(network), weights=packed_weight_bytes(path))
    return Runtime(network, None, load_tokenizer(path, ckpt_dir), source=str(path), executor=ex)


# Temporary exports: EXPORT_PREFIX<pid>-<random>, holding OWNER_FILE (the pid namespace of the process that made
# it), so a folder is known to be dead when its process is gone from this namespace.
EXPORT_PREFIX = "gptoss-onnx-"
OWNER_FILE = ".owner"


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def new_export_dir() -> Path:
    workdir = Path(tempfile.mkdtemp(prefix=f"{EXPORT_PREFIX}{os.getpid()}-"))
    (workdir / OWNER_FILE).write_text(_pid_namespace(), encoding="utf-8")
    return workdir


def sweep_dead_exports(root: str | Path | None = None) -> list[Path]:
    """Remove the temporary exports (about 12 MB for the tiny engine, the model's size for a real one) whose
    process died without closing its executor (a stub killed by SIGKILL, say); -> the folders removed. Only
    folders with this machine's pid namespace in OWNER_FILE and no live process of that pid are touched."""
    root = Path(root or tempfile.gettempdir())
    ns, removed = _pid_namespace(), []
    if not ns:
        return removed
    for d in root.glob(f"{EXPORT_PREFIX}*-*"):
        pid = d.name[len(EXPORT_PREFIX):].split("-", 1)[0]
        try:
            if not pid.isdigit() or (d / OWNER_FILE).read_text(encoding="utf-8") != ns or _alive(int(pid)):
                continue
        except OSError:            # not one of ours (no owner file), or another process is removing it
            continue
        shutil.rmtree(d, ignore_errors=True)
        removed.append(d)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:        # another user's process
        return True
    return True


def _checkpoint_bytes(ckpt_dir: Path, workdir: Path):
    """The checkpoint's shards to point the temporary graph's equal initializers into (hard links in the temp
    dir: nothing is written twice), where the temp dir is on the checkpoint's filesystem (TMPDIR chooses it);
    elsewhere, or where the headers cannot be indexed, the graph writes all its weights as before."""
    import contextlib
    from plugins.onnx.shared_weights import CheckpointBytes
    if os.stat(ckpt_dir).st_dev != os.stat(workdir).st_dev:
        return contextlib.nullcontext(None)
    return CheckpointBytes(ckpt_dir)


# GPTOSS_ORT_MEMORY_LIMIT=BYTES caps ONNX Runtime's CPU arena (one per process, shared by its sessions): a
# request whose tensors do not fit fails (runtime.executors.auto then runs it on the reference runtime)
# instead of taking the machine's memory from the others on it.
MEMORY_LIMIT_ENV = "GPTOSS_ORT_MEMORY_LIMIT"
_registered_limit: list[int] = []


def _cap_memory(opts) -> None:
    value = os.environ.get(MEMORY_LIMIT_ENV)
    if not value:
        return
    import onnxruntime as ort
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"{MEMORY_LIMIT_ENV}={value!r}: expected a number of bytes, e.g. 8000000000") from None
    if not _registered_limit:
        info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(info, ort.OrtArenaCfg(limit, -1, -1, -1))
        _registered_limit.append(limit)
    elif _registered_limit[0] != limit:
        raise ValueError(f"{MEMORY_LIMIT_ENV}={limit}: this process already capped ONNX Runtime's arena at "
                         f"{_registered_limit[0]} bytes (one arena per process); start a new process")
    opts.add_session_config_entry("session.use_env_allocators", "1")
    opts.log_severity_level = 4         # an allocation refused is raised to the caller, not logged again


def _threads() -> int | None:
    value = os.environ.get("GPTOSS_ORT_THREADS")
    return int(value) if value else None
