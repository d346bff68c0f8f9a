"""A small ONNX graph builder whose weights are written lazily, one tensor (and one chunk) at a time.

Nodes are added with `g.op("MatMul", a, b)` (returns the output name, or a list for several outputs).
Weights are registered as `g.weight(name, shape, chunks)`: `chunks` is a callable that yields torch
tensors which, concatenated along axis 0, form the initializer; nothing is read until `save`. So a graph
over a checkpoint on disk (checkpoint.convert.load_canonical reads row slices) is written with at most one
chunk in memory, whatever the model's size.

`save` writes either one self-contained .onnx (weights inline, when they total under INLINE_LIMIT) or a
graph plus one external data file written streaming, with its sha256 computed on the way. ONNX protobufs
cannot exceed 2 GiB, hence the limit.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

OPSET = 23
INLINE_LIMIT = 1_800_000_000          # bytes of weights kept inside the protobuf; above it, external data
EXTERNAL_ALIGN = 4096                 # external tensors start on page boundaries (mmap-friendly)
COPY_BYTES = 64 << 20                 # pieces in which stored bytes are copied into the graph's data file

# Graph compute dtypes: name -> (ONNX element type name, torch dtype name, bytes per element)
DTYPES = {"float32": ("FLOAT", "float32", 4), "float16": ("FLOAT16", "float16", 2),
          "bfloat16": ("BFLOAT16", "bfloat16", 2)}


# Lowerings: how ops with more than one ONNX form are written (plugins/onnx/fp4.py says where they differ).
# "tensorrt": what TensorRT imports (FP4/FP8 Q/DQ, trt:: ops), the graph an engine stores; "onnxruntime-cpu":
# standard ops ONNX Runtime's CPU provider runs (it has no FLOAT4E2M1 tensors and no trt:: ops).
TENSORRT = "tensorrt"
ORT_CPU = "onnxruntime-cpu"
# "onnxruntime-cpu-packed": the CPU form with FP4 experts kept packed (half a byte per weight) and decoded at run
# time for the routed experts only (plugins/onnx/fp4.py), and bf16 weights kept bf16, widened to fp32 per row
# block where they are used (plugins/onnx/stored.py), for models whose fp32 graph does not fit in memory (ONNX
# Runtime folds the "onnxruntime-cpu" form's decode into fp32 weights when a session starts).
ORT_CPU_PACKED = "onnxruntime-cpu-packed"
LOWERINGS = (TENSORRT, ORT_CPU, ORT_CPU_PACKED)

PACKED_ITEMSIZE = {"uint8": 1, "int8": 1, "float8e4m3fn": 1, "float8e5m2": 1, "float8e8m0": 1, "int32": 4,
                   "int64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


def onnx_type(dtype: str) -> int:
    from onnx import TensorProto
    if dtype in DTYPES:
        return getattr(TensorProto, DTYPES[dtype][0])
    return getattr(TensorProto, dtype.upper())     # "int64", "uint8", "float8e4m3fn", "float4e2m1", ...


@dataclass
class LazyWeight:
    name: str
    elem_type: int                    # onnx TensorProto data type
    shape: tuple[int, ...]
    nbytes: int
    chunks: Callable[[], Iterable[bytes]]


@dataclass
class SavedGraph:
    path: Path                        # the .onnx file
    data_files: dict[str, str] = field(default_factory=dict)   # the graph's own external data file -> sha256
    weight_bytes: int = 0
    shared_bytes: int = 0             # initializer bytes that point into the checkpoint's shards
    written_bytes: int = 0            # initializer bytes written by the graph (inline or its own data file)
    linked: list[str] = field(default_factory=list)          # shard files hard-linked beside the graph
    shared: dict[str, str] = field(default_factory=dict)     # initializer -> the linked shard it points into
    initializers: int = 0             # weight initializers (lazy weights; small constants not counted)


def _bytes_of(t, dtype: str) -> bytes:
    """A torch tensor chunk -> its bytes in the graph's dtype (bf16 through an int16 view: numpy has none)."""
    import torch
    t = t.detach().to(getattr(torch, DTYPES[dtype][1]) if dtype in DTYPES else t.dtype).contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


class Graph:
    """Nodes, inputs, outputs and lazy weights of one ONNX graph in compute dtype `dtype`, for one lowering."""

    def __init__(self, name: str, dtype: str = "float32", lowering: str = TENSORRT, island_gemm: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"graph dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if island_gemm not in ("float32", dtype):
            raise ValueError(f"island GEMM dtype {island_gemm!r} is neither float32 nor the graph's {dtype!r}")
        if lowering not in LOWERINGS:
            raise ValueError(f"graph lowering {lowering!r} is not one of {', '.join(LOWERINGS)}")
        self.name = name
        self.lowering = lowering
        self.dtype = dtype
        self.elem = onnx_type(dtype)
        # the dtype of the matmuls inside fp32 islands (spec.capabilities.island_gemm_dtype): float32, or the
        # compute dtype where the target has no fp32 GEMM
        self.island_gemm = island_gemm
        self.nodes = []
        self.inputs = []
        self.outputs = []
        self.weights: dict[str, LazyWeight] = {}
        self.small: list = []          # constant TensorProtos built in memory (tables, shapes, scalars)
        self._names: dict[str, int] = {}
        self._shared: dict[str, str] = {}
        self._runtime_zero: str | None = None
        self.opset_imports: dict[str, int] = {"": OPSET}

    # -- names and nodes ------------------------------------------------------------------------------------
    def fresh(self, hint: str) -> str:
        n = self._names.get(hint, 0)
        self._names[hint] = n + 1
        return hint if n == 0 else f"{hint}_{n}"

    def op(self, op_type: str, *inputs: str | None, outputs: int | list[str] = 1, name: str | None = None,
           domain: str = "", **attrs):
        """Add a node; None inputs are ONNX's omitted optional inputs. Returns one name or a list."""
        from onnx import helper
        base = self.fresh(name or op_type.lower())
        outs = [f"{base}:{i}" for i in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op_type, ["" if i is None else i for i in inputs], outs, name=base,
                                           domain=domain or None, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def input(self, name: str, elem: int | str, shape) -> str:
        from onnx import helper
        self.inputs.append(helper.make_tensor_value_info(name, elem if isinstance(elem, int) else onnx_type(elem),
                                                         list(shape)))
        return name

    def output(self, value: str, name: str, elem: int | str, shape) -> None:
        from onnx import helper
        self.op("Identity", value, outputs=[name], name=f"out_{name}")
        self.outputs.append(helper.make_tensor_value_info(name, elem if isinstance(elem, int) else onnx_type(elem),
                                                          list(shape)))

    def outputs_declared(self, name: str, elem: int | str, shape) -> None:
        """Declare a graph output that a node already writes under `name` (no Identity in between: TensorRT's
        in-place cache update must be the output's producer to share the input's memory)."""
        from onnx import helper
        self.outputs.append(helper.make_tensor_value_info(name, elem if isinstance(elem, int) else onnx_type(elem),
                                                          list(shape)))

    def require_opset(self, version: int) -> None:
        """The default domain's opset, raised to `version` where an op needs it (TensorScatter: 24)."""
        self.opset_imports[""] = max(self.opset_imports[""], version)

    # -- constants ------------------------------------------------------------------------------------------
    def const(self, array, name: str | None = None) -> str:
        """A small constant (shapes, axes, tables, scalars) as an in-memory initializer."""
        from onnx import numpy_helper
        arr = np.asarray(array)
        name = self.fresh(name or "const")
        self.small.append(numpy_helper.from_array(arr, name))
        return name

    def shared_const(self, name: str, array) -> str:
        """A constant every user in the graph shares (a lookup table), registered once under `name`."""
        if name not in self._shared:
            self._shared[name] = self.const(array, name)
        return self._shared[name]

    def ints(self, values, name: str | None = None) -> str:
        return self.const(np.asarray(values, dtype=np.int64), name or "ints")

    def scalar(self, value: float, name: str | None = None) -> str:
        """A scalar in the graph's compute dtype."""
        import torch
        t = torch.tensor(float(value)).to(getattr(torch, DTYPES[self.dtype][1]))
        return self.raw(name or "scalar", self.elem, (), [_bytes_of(t, self.dtype)])

    def runtime_int(self, value: int, shape=()) -> str:
        """An int64 `value` (shape () or (1,)) that ONNX Runtime cannot constant-fold: 0 * the first graph input's
        leading dimension, plus value. Keeps a Slice or Gather of an initializer, and the Cast after it, out of
        the folding done when a session starts (plugins/onnx/stored.py). Outer graph only."""
        if self._runtime_zero is None:
            lead = self.op("Slice", self.op("Shape", self.inputs[0].name), self.ints([0]), self.ints([1]))
            self._runtime_zero = self.op("Mul", lead, self.ints([0]), name="runtime_zero")     # [1]
        v = self._runtime_zero if value == 0 else self.op("Add", self._runtime_zero, self.ints([int(value)]))
        return v if tuple(shape) == (1,) else self.op("Squeeze", v, self.ints([0]))

    def f32(self, value, name: str | None = None) -> str:
        return self.const(np.asarray(value, dtype=np.float32), name or "f32")

    def raw(self, name: str, elem: int, shape, chunks: list[bytes]) -> str:
        from onnx import TensorProto
        t = TensorProto(name=self.fresh(name), data_type=elem, dims=list(shape), raw_data=b"".join(chunks))
        self.small.append(t)
        return t.name

    # -- weights --------------------------------------------------------------------------------------------
    def weight(self, name: str, shape, chunks: Callable[[], Iterator], dtype: str | None = None) -> str:
        """A weight initializer in `dtype` (default: the graph's compute dtype), produced lazily by `chunks`
        (torch tensors, concatenated along axis 0)."""
        dtype = dtype or self.dtype
        if name in self.weights:
            return name
        shape = tuple(int(s) for s in shape)
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPES[dtype][2]
        self.weights[name] = LazyWeight(name, onnx_type(dtype), shape, nbytes,
                                        lambda: (_bytes_of(c, dtype) for c in chunks()))
        return name

    def packed_weight(self, name: str, elem: str, shape, chunks: Callable[[], Iterator]) -> str:
        """An initializer of any ONNX element type ("uint8", "float8e4m3fn", "float4e2m1", ...) from its raw
        bytes as ONNX stores them (FP4: two codes per byte, low nibble first), produced lazily by `chunks`
        (bytes or numpy arrays, concatenated in order)."""
        if name in self.weights:
            return name
        shape = tuple(int(s) for s in shape)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = (count + 1) // 2 if elem == "float4e2m1" else count * PACKED_ITEMSIZE[elem]
        self.weights[name] = LazyWeight(name, onnx_type(elem), shape, nbytes,
                                        lambda: (c if isinstance(c, bytes) else np.ascontiguousarray(c).tobytes()
                                                 for c in chunks()))
        return name

    @property
    def weight_bytes(self) -> int:
        return sum(w.nbytes for w in self.weights.values())

    # -- output ---------------------------------------------------------------------------------------------
    def model(self, inline: bool = True):
        """The ModelProto. inline=True materializes every weight (small graphs only)."""
        from onnx import TensorProto, helper
        inits = list(self.small)
        for w in self.weights.values():
            t = TensorProto(name=w.name, data_type=w.elem_type, dims=list(w.shape))
            if inline:
                t.raw_data = _collect(w)
            inits.append(t)
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, inits)
        opsets = [helper.make_opsetid(d, v) for d, v in self.opset_imports.items()]
        return helper.make_model(graph, opset_imports=opsets, producer_name="gptoss-trt")

    def save(self, path: str | Path, external: bool | None = None, share=None) -> SavedGraph:
        """Write the graph to `path` (.onnx). external=None: inline below INLINE_LIMIT, else one data file
        `<path>.data` written tensor by tensor, its sha256 returned. share: a plugins.onnx.shared_weights
        CheckpointBytes; initializers whose bytes equal a stored tensor's then point into that tensor's shard
        (hard-linked beside the graph) and only the others are written (external data is implied)."""
        from onnx import TensorProto
        path = Path(path)
        if external is None:
            external = share is not None or self.weight_bytes > INLINE_LIMIT
        if not external:
            model = self.model(inline=True)
            _atomic_write(path, model.SerializeToString())
            return SavedGraph(path, {}, self.weight_bytes, written_bytes=self.weight_bytes,
                              initializers=len(self.weights))
        data_name = path.name + ".data"
        model = self.model(inline=False)
        by_name = {t.name: t for t in model.graph.initializer}
        out = _DataFile(path.with_name(data_name + ".partial"))
        shared: dict[str, str] = {}
        try:
            for w in self.weights.values():
                location, start, length = _share_or_write(w, share, path.parent, out, data_name)
                if location != data_name:
                    shared[w.name] = location
                t = by_name[w.name]
                t.data_location = TensorProto.EXTERNAL
                for key, value in (("location", location), ("offset", str(start)), ("length", str(length))):
                    entry = t.external_data.add()
                    entry.key, entry.value = key, value
            if out.offset:
                data_files = {data_name: out.finish(path.with_name(data_name))}
            else:                                   # every initializer is shared: no data file of its own
                data_files = out.discard()
                path.with_name(data_name).unlink(missing_ok=True)
        except BaseException:
            out.discard()
            raise
        _atomic_write(path, model.SerializeToString())
        shared_bytes = sum(self.weights[n].nbytes for n in shared)
        linked = sorted(set(shared.values()))
        return SavedGraph(path, data_files, self.weight_bytes, shared_bytes=shared_bytes,
                          written_bytes=self.weight_bytes - shared_bytes, linked=linked, shared=shared,
                          initializers=len(self.weights))


class _DataFile:
    """The graph's own external data file, written streaming (page-aligned tensors, sha256 on the way)."""

    def __init__(self, tmp: Path):
        self.tmp, self.offset, self.digest = tmp, 0, hashlib.sha256()
        self.f = open(tmp, "wb")

    def _put(self, chunk: bytes) -> None:
        self.f.write(chunk)
        self.digest.update(chunk)
        self.offset += len(chunk)

    def align(self) -> int:
        pad = (-self.offset) % EXTERNAL_ALIGN
        if pad:
            self._put(b"\0" * pad)
        return self.offset

    def write_all(self, w: LazyWeight) -> tuple[int, int]:
        """Write w's chunks; returns (offset, length)."""
        start = self.align()
        for chunk in w.chunks():
            self._put(chunk)
        return start, self.check(w, start)

    def copy(self, share, t, n: int) -> None:
        """The first n bytes of stored tensor t, from its shard."""
        for a in range(0, n, COPY_BYTES):
            self._put(share.read(t, a, min(COPY_BYTES, n - a)))

    def check(self, w: LazyWeight, start: int) -> int:
        written = self.offset - start
        if written != w.nbytes:
            raise ValueError(f"weight {w.name}: produced {written} bytes, its shape {w.shape} needs {w.nbytes}")
        return written

    def finish(self, final: Path) -> str:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, final)
        return self.digest.hexdigest()

    def discard(self) -> dict:
        if not self.f.closed:
            self.f.close()
        self.tmp.unlink(missing_ok=True)
        return {}


def _share_or_write(w: LazyWeight, share, folder: Path, out: _DataFile, data_name: str):
    """Stream w's chunks against the stored ranges of its size and first bytes. All of w equal to one of them:
    that range's (link name, offset, length), its shard hard-linked into `folder`. Else w goes to `out` (the
    bytes compared before the first difference equal a candidate's, so they are copied from it, then the rest
    streams on): (data_name, offset, length)."""
    if share is None:
        return (data_name, *out.write_all(w))
    from plugins.onnx.shared_weights import PREFIX_BYTES as PREFIX
    chunks = iter(w.chunks())
    head = next(chunks, b"")
    while len(head) < min(w.nbytes, PREFIX):          # the index key needs the first PREFIX bytes
        more = next(chunks, None)
        if more is None:
            break
        head += more
    alive = list(share.candidates(w.nbytes, head)) if head else []
    pos = 0
    for chunk in itertools.chain([head], chunks):
        n = len(chunk)
        still = [c for c in alive if pos + n <= c.nbytes and share.read(c, pos, n) == chunk]
        if not still:
            start = out.align()
            if pos:
                out.copy(share, alive[0], pos)                    # the equal prefix, from the stored range
            for rest in itertools.chain([chunk], chunks):
                out._put(rest)
            return data_name, start, out.check(w, start)
        alive, pos = still, pos + n
    if pos != w.nbytes:
        raise ValueError(f"weight {w.name}: produced {pos} bytes, its shape {w.shape} needs {w.nbytes}")
    for c in alive:                                               # the first whose shard can be linked
        name = share.link_into(c, folder)
        if name is not None:
            return name, c.offset, c.nbytes
    start = out.align()                                           # equal, but no link: write it (from the shard)
    out.copy(share, alive[0], pos)
    return data_name, start, out.check(w, start)


def _collect(w: LazyWeight) -> bytes:
    data = b"".join(w.chunks())
    if len(data) != w.nbytes:
        raise ValueError(f"weight {w.name}: produced {len(data)} bytes, its shape {w.shape} needs {w.nbytes}")
    return data


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
