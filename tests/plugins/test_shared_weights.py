"""The graph's weights stored once (plugins/onnx/shared_weights.py): every external initializer of a graph
exported with `share=` resolves either to exactly the checkpoint tensor's bytes (or one expert's slice of it)
in a shard hard-linked beside the graph, or to the graph's own data file. Oracles: the `safetensors` library
reads the tensors, the safetensors header's data_offsets say where they lie, ONNX Runtime runs the graphs. The
engine is the tiny model built for h100 (MXFP4 experts); its CPU "onnxruntime-cpu-packed" graph keeps the FP4
codes as bytes, so the down projections' codes are the checkpoint's."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

PROMPT = [1, 5, 9, 300, 17, 22, 4000, 8]


@pytest.fixture(scope="module")
def mxfp4_engine(tmp_path_factory) -> Path:
    from builder.engine.build import BuildRequest, build
    out = tmp_path_factory.mktemp("engines") / "h100"
    build(BuildRequest(model="tiny", gpu="h100", output=str(out), cache_dir=str(tmp_path_factory.mktemp("cache")),
                       cross_build=True, progress=False))
    return out


def export(engine: Path, out: Path, share: bool, external: bool | None = None):
    from checkpoint.convert import load_canonical
    from plugins.onnx.export import export_onnx
    from plugins.onnx.graph import ORT_CPU_PACKED
    from plugins.onnx.shared_weights import CheckpointBytes
    from spec.network import load_network
    out.mkdir(parents=True, exist_ok=True)
    net = load_network(engine / "network.json")
    with load_canonical(engine) as ck:
        if not share:
            return export_onnx(net, ck, out / "model.onnx", lowering=ORT_CPU_PACKED, external=external)
        with CheckpointBytes(engine) as cb:
            return export_onnx(net, ck, out / "model.onnx", lowering=ORT_CPU_PACKED, share=cb)


def stored_ranges(shard: Path) -> dict[int, tuple[str, int]]:
    """{absolute data offset: (tensor name, bytes)} from the file's own header: 8 + header length + data_offsets[0]."""
    with open(shard, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return {8 + n + e["data_offsets"][0]: (name, e["data_offsets"][1] - e["data_offsets"][0])
            for name, e in header.items()}


def external(model) -> list[tuple[str, dict]]:
    return [(t.name, {e.key: e.value for e in t.external_data}) for t in model.graph.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL]


def test_every_external_initializer_is_the_checkpoint_bytes_or_the_graphs_own(mxfp4_engine, tmp_path):
    from safetensors.numpy import load_file
    saved = export(mxfp4_engine, tmp_path / "g", share=True)
    model = onnx.load(saved.path, load_external_data=False)
    shard = mxfp4_engine / "model.safetensors"
    tensors, ranges = load_file(shard), stored_ranges(shard)
    starts = sorted(ranges)
    shared = 0
    for name, d in external(model):
        where, offset, length = tmp_path / "g" / d["location"], int(d["offset"]), int(d["length"])
        if d["location"] == "model.onnx.data":
            assert offset + length <= where.stat().st_size
            continue
        assert d["location"] == "model.safetensors" and os.path.samefile(where, shard), d   # a hard link, not a copy
        # the tensor whose data holds this range (by the header), read by the safetensors library
        begin = max(s for s in starts if s <= offset)
        tname, tbytes = ranges[begin]
        arr = tensors[tname]
        if (begin, length) == (offset, tbytes):
            want = arr.tobytes()
        else:                                                 # one expert of a stacked tensor
            step = tbytes // arr.shape[0]
            assert length == step and (offset - begin) % step == 0, (name, tname)
            want = arr[(offset - begin) // step].tobytes()
        with open(shard, "rb") as f:
            f.seek(offset)
            assert f.read(length) == want, name
        # and that is what the exporter writes for it when nothing is shared
        assert onnx.numpy_helper.to_array(_inline(tmp_path, mxfp4_engine)[name]).tobytes() == want, name
        shared += length
    assert shared == saved.shared_bytes > 0
    assert saved.linked == ["model.safetensors"]
    # onnx.load refuses a data file with several hard links; load_graph reads the same initializers
    from plugins.onnx.shared_weights import load_graph
    with pytest.raises(Exception, match="hard link"):
        onnx.load(saved.path)
    loaded = {t.name: t.raw_data for t in load_graph(saved.path).graph.initializer}
    inline = _inline(tmp_path, mxfp4_engine)
    assert loaded == {n: onnx.numpy_helper.to_array(t).tobytes() if not t.raw_data else t.raw_data
                      for n, t in inline.items()}
    assert saved.written_bytes == saved.weight_bytes - saved.shared_bytes
    assert (tmp_path / "g" / "model.onnx.data").stat().st_size >= saved.written_bytes


_INLINE: dict = {}


def _inline(tmp_path, engine) -> dict:
    if engine not in _INLINE:
        m = onnx.load(export(engine, tmp_path / "inline", share=False, external=False).path)
        _INLINE[engine] = {t.name: t for t in m.graph.initializer}
    return _INLINE[engine]


def ort_logits(engine: Path, graph: Path) -> torch.Tensor:
    """A prefill of PROMPT then 3 greedy decode steps with ONNX Runtime on `graph`: every logit, flat."""
    from runtime.executors.onnxruntime import OnnxRuntimeExecutor
    from spec.network import load_network
    net = load_network(engine / "network.json")
    ex = OnnxRuntimeExecutor(net, graph, threads=1)
    cache = ex.new_cache(1)
    out = [ex.forward(torch.tensor([PROMPT]), torch.arange(len(PROMPT))[None], cache)]
    for pos in range(len(PROMPT), len(PROMPT) + 3):
        nxt = int(out[-1].reshape(-1, net.vocab_size)[-1].argmax())
        out.append(ex.forward(torch.tensor([[nxt]]), torch.tensor([[pos]]), cache))
    return torch.cat([o.reshape(-1) for o in out])


def test_shared_graph_runs_bit_equal_and_a_corrupt_shard_changes_it(mxfp4_engine, tmp_path):
    """ONNX Runtime reads the shared initializers from the linked shard: the logits equal the self-contained
    graph's bit for bit; one byte changed in each shared expert of a copy of the checkpoint changes them."""
    self_contained = export(mxfp4_engine, tmp_path / "inline", share=False, external=False)
    shared = export(mxfp4_engine, tmp_path / "shared", share=True)
    ref = ort_logits(mxfp4_engine, self_contained.path)
    got = ort_logits(mxfp4_engine, shared.path)
    assert torch.equal(ref.view(torch.int32), got.view(torch.int32))
    # negative control: a copy of the engine (its own inodes), a graph sharing the copy's shard, then the copy
    # corrupted under the graph: the graph reads the shard, so its output moves
    copy = tmp_path / "copy"
    shutil.copytree(mxfp4_engine, copy)
    on_copy = export(copy, tmp_path / "on_copy", share=True)
    assert torch.equal(ort_logits(copy, on_copy.path).view(torch.int32), ref.view(torch.int32))
    model = onnx.load(on_copy.path, load_external_data=False)
    with open(copy / "model.safetensors", "r+b") as f:
        for name, d in external(model):
            if d["location"] == "model.safetensors" and int(d["length"]) > 1024:
                f.seek(int(d["offset"]))
                b = f.read(1)
                f.seek(int(d["offset"]))
                f.write(bytes([b[0] ^ 0x77]))
    assert not torch.equal(ort_logits(copy, on_copy.path), ref)


def test_the_cpu_executor_shares_on_the_engines_filesystem_and_writes_elsewhere(mxfp4_engine, monkeypatch):
    """load_onnxruntime's on-demand export: with a temp dir on the engine's filesystem the packed graph's equal
    initializers are hard links into the engine's shard (less written); on another filesystem (/dev/shm, tmpfs)
    it writes them all, as before. Both generate the same tokens."""
    import tempfile

    import runtime.executors.onnxruntime as ortx
    from runtime import SamplingParams
    monkeypatch.setattr(ortx, "_memory_bytes", lambda: 1 << 20)     # a machine where only the packed form fits
    runs = {}
    for where in (mxfp4_engine.parent, Path("/dev/shm")):
        if where == Path("/dev/shm") and os.stat(where).st_dev == os.stat(mxfp4_engine).st_dev:
            pytest.skip("/dev/shm is on the engine's filesystem here")
        monkeypatch.setattr(tempfile, "tempdir", str(where))
        rt = ortx.load_onnxruntime(mxfp4_engine, threads=1)
        work = rt.model._workdir
        try:
            links = [p for p in work.iterdir() if p.suffix == ".safetensors"]
            assert all(os.path.samefile(p, mxfp4_engine / "model.safetensors") for p in links)   # links, not copies
            data = sum(p.stat().st_size for p in work.iterdir() if p not in links)     # what the export wrote
            [r] = rt.generate([PROMPT], SamplingParams(max_tokens=6, temperature=0.0, stop_token_ids=()))
            runs[where] = (links, data, list(r.output_ids))
        finally:
            rt.model.close()
    (links_same, data_same, ids_same), (links_other, data_other, ids_other) = runs.values()
    assert len(links_same) == 1
    assert links_other == [] and data_same < data_other
    assert ids_same == ids_other
