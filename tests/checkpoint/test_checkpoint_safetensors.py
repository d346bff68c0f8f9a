"""Our safetensors reader and streaming writer against the safetensors package, plus corruption fuzzing:
a damaged file must give a CheckpointError, never another exception or a wrong tensor."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from checkpoint import CheckpointError, SafetensorsFile, SafetensorsWriter, ShardedWriter, TensorSpec, TensorStore
from checkpoint.safetensors_io import DTYPE_NAMES


def _sample():
    g = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "bf16": torch.randn(4, 2, 3, generator=g).to(torch.bfloat16),
        "f16": torch.randn(7, generator=g).to(torch.float16),
        "u8": torch.randint(0, 256, (5, 3, 16), dtype=torch.uint8, generator=g),
        "i32": torch.randint(-9, 9, (2, 2), dtype=torch.int32, generator=g),
        "i64": torch.arange(3),
        "fp8": torch.randn(6, 2, generator=g).to(torch.float8_e4m3fn),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    }


def test_read_what_safetensors_writes(tmp_path):
    tensors = _sample()
    save_file(tensors, tmp_path / "a.safetensors", metadata={"format": "pt", "k": "v"})
    with SafetensorsFile(tmp_path / "a.safetensors") as f:
        assert f.metadata == {"format": "pt", "k": "v"}
        for name, t in tensors.items():
            got = f.read(name)
            assert got.dtype == t.dtype and got.shape == t.shape
            assert torch.equal(got.reshape(-1).view(torch.uint8), t.contiguous().reshape(-1).view(torch.uint8)), name
        assert torch.equal(f.read("u8", slice(1, 4)), tensors["u8"][1:4])
        assert f.read("u8", slice(2, 2)).shape == (0, 3, 16)


def test_safetensors_reads_what_we_write_in_pieces(tmp_path):
    tensors = _sample()
    specs = [TensorSpec(n, DTYPE_NAMES[t.dtype], tuple(t.shape)) for n, t in tensors.items()]
    w = SafetensorsWriter(tmp_path / "b.safetensors", specs)
    for name, t in tensors.items():
        if name == "u8":                                   # out of order, in pieces
            w.write(name, t[3:], 3)
            w.write(name, t[:3], 0)
        else:
            w.write(name, t)
    w.close()
    back = load_file(tmp_path / "b.safetensors")
    for name, t in tensors.items():
        assert torch.equal(back[name].reshape(-1).view(torch.uint8), t.contiguous().reshape(-1).view(torch.uint8)), name
    # wider dtypes first keeps every tensor aligned to its element size
    with SafetensorsFile(tmp_path / "b.safetensors") as f:
        for info in f.infos.values():
            assert info.begin % back[info.name].element_size() == 0, info


def test_writer_checks_coverage(tmp_path):
    w = SafetensorsWriter(tmp_path / "c.safetensors", [TensorSpec("x", "F32", (4, 2))])
    w.write("x", torch.zeros(2, 2))
    with pytest.raises(RuntimeError, match="never written|only 16 of 32"):
        w.close()
    w = SafetensorsWriter(tmp_path / "d.safetensors", [TensorSpec("x", "F32", (4, 2))])
    w.write("x", torch.zeros(4, 2))
    w.write("x", torch.zeros(1, 2), 1)
    with pytest.raises(RuntimeError, match="written twice"):
        w.close()
    w = SafetensorsWriter(tmp_path / "e.safetensors", [TensorSpec("x", "F32", (4, 2))])
    with pytest.raises(ValueError, match="writing torch.bfloat16 into a F32"):
        w.write("x", torch.zeros(4, 2, dtype=torch.bfloat16))
    w.abort()


def test_sharded_writer_and_store(tmp_path):
    tensors = {f"t{i}": torch.full((10, 10), float(i)) for i in range(7)}
    specs = [TensorSpec(n, "F32", (10, 10)) for n in tensors]
    w = ShardedWriter(tmp_path, specs, max_shard_bytes=900)
    for n, t in tensors.items():
        w.write(n, t)
    w.close()
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 7 * 400 and len(set(index["weight_map"].values())) == 4
    with TensorStore(tmp_path) as store:
        assert sorted(store.names()) == sorted(tensors)
        for n, t in tensors.items():
            assert torch.equal(store.read(n), t)


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "good.safetensors"
    save_file({k: v for k, v in _sample().items() if k != "scalar"}, path)
    return path.read_bytes()


def _load_all(path):
    with SafetensorsFile(path) as f:
        for name in f.infos:
            f.read(name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_corruption_gives_checkpoint_error(tmp_path, good_file, data):
    raw = bytearray(good_file)
    how = data.draw(st.sampled_from(["flip", "truncate", "length"]))
    if how == "flip":
        (n,) = struct.unpack("<Q", raw[:8])
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, 8 + n - 1))
            raw[i] = data.draw(st.integers(0, 255))
    elif how == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        raw[:8] = struct.pack("<Q", data.draw(st.integers(0, 2**64 - 1)))
    path = tmp_path / "bad.safetensors"
    path.write_bytes(bytes(raw))
    try:
        _load_all(path)
    except CheckpointError as e:
        assert str(path) in str(e) and "fix:" in str(e)
