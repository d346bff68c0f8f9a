"""An engine holds each weight once (#19 item 2): bytes on disk, each inode counted once (st_ino), against the
engine's checkpoint, for tiny builds of every target class. CPU and SM90/100 engines store no graph; an RTX-class
engine's graph points into the checkpoint's shards (hard-linked into tensorrt/) where the bytes are equal and
writes only the rest, and once the plan is built the graph is not kept (--keep-graph keeps it); a cached rebuild
into a new folder adds no bytes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from checkpoint.fsutil import unique_bytes
from spec.manifest import EngineManifest

GOAL = 1.1          # engine bytes <= 1.1x the checkpoint's, plus the plan where one is built


def _build(out: Path, gpu: str, cache: Path, keep_graph: bool = False) -> Path:
    from builder.engine.build import BuildRequest, build
    return build(BuildRequest(model="tiny", gpu=gpu, output=str(out), cache_dir=str(cache), cross_build=True,
                              progress=False, keep_graph=keep_graph))


def _account(engine: Path) -> dict:
    """Weight-bearing bytes: the checkpoint's shards, and tensorrt/ (graph, its data, the plan) each inode once;
    the rest (tokenizer, triton/, manifests) is the same few hundred KB for any model size."""
    ckpt = sum(p.stat().st_size for p in engine.glob("*.safetensors"))
    inodes = {}
    for p in [*engine.glob("*.safetensors"), *(engine / "tensorrt").glob("*")] if (engine / "tensorrt").exists() \
            else engine.glob("*.safetensors"):
        st = p.stat()
        inodes[(st.st_dev, st.st_ino)] = st.st_size
    t = EngineManifest.read(engine).tensorrt or {}
    plan = (engine / t["plan"]).stat().st_size if t.get("plan") else 0
    return {"checkpoint": ckpt, "weights_and_graph": sum(inodes.values()), "plan": plan, "tensorrt": t}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("gpu", ["cpu", "h100", "b200"])
def test_engines_without_a_graph_hold_the_checkpoint_once(gpu, cache, tmp_path):
    engine = _build(tmp_path / gpu, gpu, cache)
    a = _account(engine)
    assert a["tensorrt"]["onnx"] is None and "no ONNX graph stored" in a["tensorrt"]["note"]
    assert not (engine / "tensorrt").exists()
    assert a["weights_and_graph"] == a["checkpoint"] <= GOAL * a["checkpoint"]


def test_a_kept_graph_shares_the_checkpoint_and_the_rest_is_written_once(cache, tmp_path):
    engine = _build(tmp_path / "rtx", "rtx-pro-6000", cache, keep_graph=True)
    a = _account(engine)
    t = a["tensorrt"]
    w = t["onnx_weights"]
    assert w["linked_shards"] == ["model.safetensors"] and w["shared_bytes"] > 0
    assert os.path.samefile(engine / "tensorrt" / "model.safetensors", engine / "model.safetensors")
    graph = (engine / t["onnx"]).stat().st_size
    data = sum((engine / "tensorrt" / f).stat().st_size for f in t["onnx_data"])
    # the linked shard adds nothing: tensorrt/ costs the graph, its own data (what differs) and the plan
    assert a["weights_and_graph"] == a["checkpoint"] + graph + data + a["plan"]
    assert w["written_bytes"] <= data < w["written_bytes"] + 4096 * w["written_initializers"]


def test_rtx_engine_meets_the_bytes_goal(cache, tmp_path):
    """The default RTX-class engine: its checkpoint and its plan, nothing else that bears weights."""
    engine = _build(tmp_path / "rtx", "rtx-pro-6000", cache)
    a = _account(engine)
    t = a["tensorrt"]
    assert t["plan"] and t["onnx"] is None and t["graph_kept"] is False and "--keep-graph" in t["note"]
    assert sorted(p.name for p in (engine / "tensorrt").iterdir()) == [Path(t["plan"]).name]
    assert a["weights_and_graph"] == a["checkpoint"] + a["plan"] <= GOAL * a["checkpoint"] + a["plan"]
    # what the plan was built from is still on record
    assert len(t["built_from"]["onnx_sha256"]) == 64 and t["built_from"]["onnx_weights"]["shared_bytes"] > 0


@pytest.mark.xfail(strict=True, reason="not met for a kept graph (--keep-graph, --graph-only): its merged q/k/v, "
                   "per-expert [out, in] expert weights (the checkpoint stores [E, in/2, out] NVFP4 / [E, in, out] "
                   "bf16, gate and up interleaved), fp32 norms and RoPE tables differ from the stored bytes and are "
                   "written")
def test_a_kept_graph_meets_the_bytes_goal(cache, tmp_path):
    a = _account(_build(tmp_path / "rtx", "rtx-pro-6000", cache, keep_graph=True))
    assert a["weights_and_graph"] <= GOAL * a["checkpoint"] + a["plan"]


def test_a_cached_rebuild_adds_no_bytes(cache, tmp_path):
    first = _build(tmp_path / "one", "rtx-pro-6000", cache)
    before, _ = unique_bytes(cache)
    second = _build(tmp_path / "two", "rtx-pro-6000", cache)
    seen = {}
    for folder in (cache, first, second):
        for root, _, files in os.walk(folder):
            for f in files:
                st = os.lstat(os.path.join(root, f))
                seen[(st.st_dev, st.st_ino)] = st.st_size
    one, _ = unique_bytes(first)
    # engine.json is rewritten by rename on install (its notes name the new place); every other file is a link
    assert sum(seen.values()) <= max(before, one) + 2 * (second / "engine.json").stat().st_size
    for rel in ("model.safetensors", EngineManifest.read(first).tensorrt["plan"]):
        assert os.path.samefile(first / rel, second / rel), rel
