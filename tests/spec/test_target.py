"""`--gpu` is looked up once per build, and the resolved Target is what the engine records and serving honours."""

from __future__ import annotations

import pytest

import spec.registry.gpus as gpus_registry
import spec.target as target_module
from builder.engine.build import BuildRequest, build
from model_repo.backends import BackendError, resolve_executor
from runtime.devices import PresentGpu
from spec.manifest import EngineManifest
from spec.registry.gpus import GPUS
from spec.target import resolve_target


def _counting(monkeypatch):
    calls = []
    real = gpus_registry.get_gpu

    def counted(name):
        calls.append(name)
        return real(name)
    monkeypatch.setattr(gpus_registry, "get_gpu", counted)
    monkeypatch.setattr(target_module, "get_gpu", counted)
    return calls


@pytest.mark.parametrize("gpu", sorted(GPUS))
def test_each_registry_gpu_is_looked_up_once_per_build(gpu, tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    out = build(BuildRequest(model="tiny", gpu=gpu, output=str(tmp_path / "e"), cache_policy="off",
                             cross_build=True, progress=False))
    assert calls == [gpu]
    m = EngineManifest.read(out)
    t = resolve_target(gpu)
    assert m.target == t.to_dict() and m.gpu == gpu and m.sm == t.sm and m.quant == t.quant.name
    assert m.plan["kv_dtype"] == t.kv_cache_dtype


def _manifest_engine(tmp_path, gpu):
    from tests.support.serving import make_tiny_engine
    e = make_tiny_engine(tmp_path / gpu)
    m = EngineManifest.read(e)
    t = resolve_target(gpu)
    m.gpu, m.sm, m.quant, m.target = gpu, t.sm, t.quant.name, t.to_dict()
    m.write(e)
    return e


def test_serving_honours_the_engine_target(tmp_path):
    cpu, h100 = _manifest_engine(tmp_path, "cpu"), _manifest_engine(tmp_path, "h100")
    assert resolve_executor(cpu, "auto", present=[]).name == "onnxruntime"     # fp32 tiny engine: exact on CPU
    for gpu_only in ("trtllm", "tensorrt"):
        with pytest.raises(BackendError, match=f"built for the CPU.*{gpu_only} serves GPU engines"):
            resolve_executor(cpu, gpu_only, present=[])
    # A GPU engine on a machine without its GPU: no silent switch to the CPU, but emulation when asked for.
    with pytest.raises(BackendError, match=r"built for h100 \(SM 90\) and this machine has no NVIDIA GPU.*--executor reference"):
        resolve_executor(h100, "auto", present=[])
    with pytest.raises(BackendError, match=r"this machine has NVIDIA B200 \(SM 100\)"):
        resolve_executor(h100, "auto", present=[PresentGpu("NVIDIA B200", 100, 183000)])
    assert resolve_executor(h100, "reference", present=[]).name == "reference"
