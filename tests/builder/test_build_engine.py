"""build-engine end to end on the tiny model: the engine directory, its manifest, the cache, failures."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from builder.engine import BuildError
from builder.engine.build import BuildRequest, build
from builder.engine.options import unknown_option_keys, upstream_fields
from spec.manifest import MANIFEST_FILE
from tests.support import BIN


def cli(*args, env=None, timeout=300):
    return subprocess.run([str(BIN / "build-engine"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def cpu_engine(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("engines") / "tiny-cpu"
    r = cli("--model", "tiny", "--gpu", "cpu", "--output", str(out), "--cache-dir", str(cache_dir), "--no-progress")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def h100_engine(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("engines") / "tiny-h100"
    r = cli("--model", "tiny", "--gpu", "h100", "--output", str(out), "--cache-dir", str(cache_dir),
            "--no-progress", "--cross-build")
    assert r.returncode == 0, r.stderr
    return out


def test_cpu_engine_directory_and_manifest(cpu_engine):
    names = {p.name for p in cpu_engine.iterdir()}
    assert {"config.json", "model.safetensors", "network.json", "tokenizer.json", "engine.json", "triton"} <= names
    assert not any(n.startswith(".") for n in names)
    m = json.loads((cpu_engine / MANIFEST_FILE).read_text())
    assert (m["model"], m["gpu"], m["quant"], m["tp"], m["ep"]) == ("tiny", "cpu", "bf16", 1, 1)
    assert set(m["inputs"]["sha256"]) >= {"config.json", "model.safetensors"}
    assert all(len(h) == 64 for h in m["inputs"]["sha256"].values())
    assert m["tools"]["torch"] and m["plan"]["verdict"] == "runnable" and m["build_seconds"] > 0
    [smoke] = m["validated_on"]
    assert smoke["runtime"] == "reference" and smoke["ok"] and len(smoke["output_ids"]) == 16


def test_engine_carries_a_filled_triton_repository(cpu_engine):
    from model_repo.write import leftover_placeholders
    repo = cpu_engine / "triton"
    assert (repo / "tensorrt_llm_bls" / "config.pbtxt").is_file() and leftover_placeholders(repo) == []
    assert '"engine_dir"' in (repo / "tensorrt_llm" / "config.pbtxt").read_text()


def test_run_engine_generates_from_the_built_engine(cpu_engine):
    r = subprocess.run([str(BIN / "run-engine"), str(cpu_engine), "--prompt", "The license", "--max-tokens", "8",
                        "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["output_ids"]) == 8 and isinstance(out["text"], str)


def test_smoke_tokens_match_an_independent_run(cpu_engine):
    """The recorded smoke generation is what transformers' greedy decoding of the same checkpoint says."""
    transformers = pytest.importorskip("transformers")
    import torch
    m = json.loads((cpu_engine / MANIFEST_FILE).read_text())["validated_on"][0]
    model = transformers.GptOssForCausalLM.from_pretrained(cpu_engine, dtype=torch.float32).eval()
    ids = torch.tensor([m["prompt_ids"]])
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=16, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out[0, ids.shape[1]:].tolist() == m["output_ids"]


def test_gpu_target_without_tensorrt_llm_says_it_is_not_validated(h100_engine):
    m = json.loads((h100_engine / MANIFEST_FILE).read_text())
    assert m["quant"] == "mxfp4" and m["trtllm_quant_algo"] == "W4A16_MXFP4" and m["sm"] == 90
    trt = [v for v in m["validated_on"] if v["runtime"].startswith("tensorrt_llm")]
    assert trt and not trt[0]["ok"] and f"build-engine --validate {h100_engine}" in trt[0]["note"]
    ref = [v for v in m["validated_on"] if v["runtime"] == "reference"]
    assert ref[0]["ok"] and ref[0]["emulates"] == "h100"


def test_llm_api_options_are_upstream_fields(h100_engine):
    options = yaml.safe_load((h100_engine / "llm_api_options.yaml").read_text())
    assert unknown_option_keys(options) == []
    assert options["moe_config"]["backend"] in upstream_fields()["MoeConfig"]["backend"]["values"]
    assert options["moe_config"]["backend"] == "TRITON"        # Hopper W4A16 MXFP4
    assert options["max_seq_len"] == 4096 and options["tensor_parallel_size"] == 1


def test_unknown_option_keys_are_caught():
    assert unknown_option_keys({"tp_size": 2, "kv_cache_config": {"dtyp": "fp8"}}) == ["tp_size", "kv_cache_config.dtyp"]


def test_identical_rebuild_is_a_fast_cache_hit(cpu_engine, cache_dir):
    t0 = time.perf_counter()
    out = build(BuildRequest(model="tiny", gpu="cpu", output=str(cpu_engine), cache_dir=str(cache_dir)))
    assert out == cpu_engine and time.perf_counter() - t0 < 1.0


def test_cache_hit_into_a_new_output(cpu_engine, cache_dir, tmp_path):
    out = build(BuildRequest(model="tiny", gpu="cpu", output=str(tmp_path / "copy"), cache_dir=str(cache_dir)))
    assert (out / MANIFEST_FILE).read_text() == (cpu_engine / MANIFEST_FILE).read_text()


def _inode(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


def test_cache_holds_no_second_copy(cpu_engine, cache_dir, tmp_path):
    """The cache entry and every engine installed from it share inodes (hard links), so the bytes are on disk
    once: the union of the three folders, counted by inode (du's way), is one engine's bytes."""
    from builder.engine.cache import BuildCache
    from checkpoint.fsutil import unique_bytes
    from spec.manifest import EngineManifest
    key = EngineManifest.read(cpu_engine).cache_key
    entry = BuildCache(cache_dir).entry(key)
    copy = build(BuildRequest(model="tiny", gpu="cpu", output=str(tmp_path / "again"), cache_dir=str(cache_dir)))
    weights = sorted(p.relative_to(cpu_engine) for p in cpu_engine.rglob("*.safetensors"))
    assert weights
    for rel in weights + [Path("network.json")]:
        assert _inode(cpu_engine / rel) == _inode(entry / rel) == _inode(copy / rel), rel
        assert (copy / rel).stat().st_nlink >= 3
    one, _ = unique_bytes(cpu_engine)
    seen = {}
    for folder in (cpu_engine, entry, copy):
        for f in folder.rglob("*"):
            if f.is_file():
                seen[_inode(f)] = f.stat().st_size
    # engine.json is rewritten by rename on install (its notes name the new place), the rest is shared
    assert sum(seen.values()) <= one + 2 * (cpu_engine / MANIFEST_FILE).stat().st_size


def test_cache_evicts_the_least_recently_used_entry_past_its_limit(cpu_engine, tmp_path, capsys):
    from builder.engine.cache import BuildCache
    from checkpoint.fsutil import unique_bytes
    size, _ = unique_bytes(cpu_engine)
    cache = BuildCache(tmp_path / "cache", max_bytes=int(2.5 * size))      # room for two engines, not three
    for key in ("a" * 64, "b" * 64):
        cache.store(key, cpu_engine)
        time.sleep(0.05)
    assert cache.lookup("a" * 64) is not None                     # a hit: "a" is now the most recently used
    time.sleep(0.05)
    cache.store("c" * 64, cpu_engine)
    assert [e.key[0] for e in cache.entries()] == ["a", "c"]      # "b" went, least recently used
    assert not cache.entry("b" * 64).exists() and "evicted bbbbbbbbbbbbbbbb" in capsys.readouterr().err
    # an entry alone over the limit is not kept either
    small = BuildCache(tmp_path / "small", max_bytes=size // 2)
    small.store("d" * 64, cpu_engine)
    assert small.entries() == [] and (cpu_engine / MANIFEST_FILE).is_file()   # the engine itself stays


def test_cache_info_lists_entries_and_the_limit(cpu_engine, cache_dir):
    from spec.manifest import EngineManifest
    key = EngineManifest.read(cpu_engine).cache_key
    r = cli("--cache-info", "--json", "--cache-dir", str(cache_dir), env={"GPTOSS_TRT_CACHE_MAX_GB": "7"})
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["max_bytes"] == 7 * 10**9 and info["root"] == str(cache_dir)
    [e] = [e for e in info["entries"] if e["key"] == key]
    assert (e["model"], e["gpu"], e["quant"]) == ("tiny", "cpu", "bf16") and e["bytes"] > 1 << 20
    assert e["last_used_iso"].endswith("Z") and info["bytes"] >= e["bytes"]
    r = cli("--cache-info", "--cache-dir", str(cache_dir), "--cache-max-gb", "2")
    assert r.returncode == 0 and key[:16] in r.stdout and "2.00 GB limit" in r.stdout, r.stdout + r.stderr
    r = cli("--cache-info", "--cache-dir", str(cache_dir), env={"GPTOSS_TRT_CACHE_MAX_GB": "lots"})
    assert r.returncode == 2 and "GPTOSS_TRT_CACHE_MAX_GB" in r.stderr


def test_readonly_cache_miss_fails_clearly(tmp_path):
    r = cli("--model", "tiny", "--gpu", "cpu", "--output", str(tmp_path / "e"), "--cache-dir", str(tmp_path / "empty"),
            "--cache-policy", "readonly")
    assert r.returncode == 2 and "cache miss" in r.stderr and "readonly" in r.stderr
    assert not (tmp_path / "e").exists()


def test_gpu_that_contradicts_the_present_gpu_is_refused(tmp_path):
    # A machine whose nvidia-smi reports an H100: building for a B200 there must be refused.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 9.0, 81559'\n")
    (fake / "nvidia-smi").chmod(0o755)
    r = cli("--model", "tiny", "--gpu", "b200", "--output", str(tmp_path / "e"), "--cache-policy", "off",
            env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert r.returncode == 2 and "SM 100" in r.stderr and "H100" in r.stderr and "--cross-build" in r.stderr
    assert not (tmp_path / "e").exists()


def test_too_little_disk_is_refused_before_writing(tmp_path, monkeypatch):
    import builder.engine.build as b
    monkeypatch.setattr(b.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(BuildError, match="GiB free"):
        build(BuildRequest(model="tiny", gpu="cpu", output=str(tmp_path / "e"), cache_policy="off"))
    assert list(tmp_path.iterdir()) == []


def _complete(engine: Path) -> str:
    """Which engine a folder holds, asserting it is whole: 'cpu' (the old one) or 'h100' (the new one)."""
    m = json.loads((engine / MANIFEST_FILE).read_text())
    assert {"config.json", "network.json", "triton"} <= {p.name for p in engine.iterdir()}
    return m["gpu"]


def test_killed_build_leaves_the_previous_engine_intact(cpu_engine, tmp_path):
    out = tmp_path / "engine"
    shutil.copytree(cpu_engine, out)
    cmd = [str(BIN / "build-engine"), "--model", "tiny", "--gpu", "h100", "--cross-build", "--output", str(out),
           "--cache-policy", "off", "--no-progress"]
    # Kill right after each stage announces itself (stage lines are flushed before the stage's work), so
    # the kills land inside every stage whatever the machine's speed.
    killed = 0
    for stage in ("[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        for line in proc.stderr:
            if stage in line:
                break
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed += 1
        proc.stderr.close()
        proc.wait()
        # Whenever the kill lands, the output is one whole engine: the old one, or (killed after the
        # final rename) the new one; never a mix, never missing.
        if _complete(out) == "h100":
            shutil.rmtree(out)
            shutil.copytree(cpu_engine, out)
        assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["engine"]
    assert killed >= 4, "the builds finished before they could be killed"
    # The next build cleans up what the killed ones left and installs a complete engine.
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["engine"]
    assert _complete(out) == "h100"


def test_incompatible_plan_fails_the_build(tmp_path):
    r = cli("--model", "120b", "--gpu", "rtx-5090", "--tp", "1", "--output", str(tmp_path / "e"))
    assert r.returncode == 3 and "incompatible" in r.stderr


def test_released_model_offline_says_what_to_pass(tmp_path):
    r = cli("--model", "20b", "--gpu", "b200", "--output", str(tmp_path / "e"),
            env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")})
    assert r.returncode == 2 and "--checkpoint DIR" in r.stderr and "openai/gpt-oss-20b" in r.stderr


def _tiny_copy(dst: Path, tokenizer: bool) -> Path:
    src = Path(__file__).resolve().parents[2] / "builder" / "assets" / "tiny"
    shutil.copytree(src, dst, ignore=None if tokenizer else shutil.ignore_patterns("tokenizer*.json"))
    return dst


def test_checkpoint_without_tokenizer_builds_with_one_note(tmp_path, cache_dir):
    """No tokenizer.json and a vocabulary that is not o200k_harmony's: the engine builds for token ids (served and
    compared with run-engine in tests/model_repo/test_tokenizerless_engine.py), with one line saying so."""
    ck = _tiny_copy(tmp_path / "ck", tokenizer=False)
    out = tmp_path / "e"
    r = cli("--model", "tiny", "--gpu", "cpu", "--checkpoint", str(ck), "--output", str(out),
            "--cache-dir", str(cache_dir), "--no-progress")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    notes = [line for line in r.stderr.splitlines() if "no tokenizer.json" in line]
    assert len(notes) == 1 and str(ck) in notes[0] and "token ids" in notes[0]
    assert not (out / "triton" / "preprocessing").exists() and (out / "triton" / "tensorrt_llm").is_dir()


def test_checkpoint_with_tokenizer_builds_control(tmp_path, cache_dir):
    ck = _tiny_copy(tmp_path / "ck", tokenizer=True)
    out = tmp_path / "e"
    r = cli("--model", "tiny", "--gpu", "cpu", "--checkpoint", str(ck), "--output", str(out),
            "--cache-dir", str(cache_dir), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (out / "tokenizer.json").is_file() and (out / "triton" / "preprocessing" / "config.pbtxt").is_file()
