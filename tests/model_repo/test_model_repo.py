"""The model-repository generator: every config.pbtxt fully filled, values from engine.json, safe overwrites."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from model_repo.write import (
    MODELS,
    PYTHON_MODELS,
    REPO_MARKER,
    ModelRepoError,
    fill,
    leftover_placeholders,
    repo_values,
    template,
    write_model_repo,
)
from tests.support import REPO
from tests.support.serving import make_tiny_engine


@pytest.fixture()
def engine(tmp_path):
    return make_tiny_engine(tmp_path / "engine", max_seq_len=777, max_batch_size=5)


def test_writes_every_model_fully_filled(engine):
    repo = write_model_repo(engine)
    assert repo == engine / "triton"
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(MODELS)
    for name in MODELS:
        cfg = (repo / name / "config.pbtxt").read_text(encoding="utf-8")
        assert "${" not in cfg, f"{name}/config.pbtxt has a leftover placeholder"
        assert f'name: "{name}"' in cfg
        assert (repo / name / "1").is_dir()
        assert (repo / name / "1" / "model.py").is_file() == (name in PYTHON_MODELS)
    assert leftover_placeholders(repo) == []
    trt = (repo / "tensorrt_llm" / "config.pbtxt").read_text(encoding="utf-8")
    assert 'key: "max_seq_len" value: { string_value: "777" }' in trt
    assert 'key: "max_num_sequences" value: { string_value: "5" }' in trt
    assert "max_batch_size: 5" in trt
    assert "decoupled: true" in trt
    # Inside the engine dir the engine path is relative, so the pair moves together.
    assert 'key: "engine_dir" value: { string_value: ".." }' in trt
    pre = (repo / "preprocessing" / "config.pbtxt").read_text(encoding="utf-8")
    assert 'string_value: "tokenizer.json"' in pre


def test_leftover_placeholder_detector_catches_one(engine):
    repo = write_model_repo(engine)
    f = repo / "postprocessing" / "config.pbtxt"
    f.write_text(f.read_text(encoding="utf-8") + '\nparameters { key: "x" value: { string_value: "${oops}" } }\n',
                 encoding="utf-8")
    assert leftover_placeholders(repo) == ["postprocessing/config.pbtxt: ${oops}"]


def test_every_template_placeholder_has_a_value(engine, tmp_path):
    values = repo_values(engine, tmp_path / "r")
    for name in MODELS:
        used = set(re.findall(r"\$\{([A-Za-z_0-9]+)\}", template(name)))
        assert used, name
        assert used <= set(values), f"{name}: {used - set(values)}"


def test_fill_refuses_unknown_placeholders():
    with pytest.raises(ModelRepoError, match=r"\$\{nope\}"):
        fill("a ${nope} b", {}, "x")


def test_front_models_speak_trtllm_tensor_names(engine):
    repo = write_model_repo(engine)
    names = json.loads((REPO / "builder" / "data" /
                        "triton_trtllm_tensors.json").read_text(encoding="utf-8"))
    upstream = {i["name"]: i["data_type"] for i in names["tensorrt_llm_bls"]["input"]}
    for model in ("tensorrt_llm_bls", "ensemble"):
        cfg = (repo / model / "config.pbtxt").read_text(encoding="utf-8")
        ours = dict(re.findall(r'name: "(\w+)" data_type: (TYPE_\w+)', cfg))
        for name in ("text_input", "max_tokens", "stream", "temperature", "top_p", "top_k", "seed", "stop_words",
                     "end_id"):
            assert ours[name] == upstream[name], (model, name)
        assert ours["text_output"] == "TYPE_STRING"
        assert ours["num_input_tokens"] == ours["num_output_tokens"] == "TYPE_INT32"
    ens = (repo / "ensemble" / "config.pbtxt").read_text(encoding="utf-8")
    assert 'platform: "ensemble"' in ens and 'model_name: "tensorrt_llm_bls"' in ens


def test_output_elsewhere_uses_an_absolute_engine_path(engine, tmp_path):
    repo = write_model_repo(engine, tmp_path / "elsewhere" / "repo", executor="reference", max_batch_size=3)
    trt = (repo / "tensorrt_llm" / "config.pbtxt").read_text(encoding="utf-8")
    assert f'string_value: "{engine.resolve()}"' in trt
    assert 'key: "executor" value: { string_value: "reference" }' in trt
    # The choice made where the repository was written, with its reason, is recorded beside it.
    assert 'key: "executor_choice" value: { string_value: "executor reference: asked for' in trt
    auto = (write_model_repo(engine, tmp_path / "auto") / "tensorrt_llm" / "config.pbtxt").read_text(encoding="utf-8")
    assert 'string_value: "executor onnxruntime: ONNX Runtime runs this engine exactly' in auto
    assert "max_batch_size: 3" in trt


def test_rewrites_its_own_repo_but_not_a_foreign_folder(engine, tmp_path):
    repo = write_model_repo(engine)
    (repo / "stale").mkdir()
    assert (repo / REPO_MARKER).is_file()
    write_model_repo(engine)
    assert not (repo / "stale").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(ModelRepoError, match="not a model repository"):
        write_model_repo(engine, foreign)
    assert (foreign / "precious.txt").read_text(encoding="utf-8") == "keep"


def test_needs_a_manifest_or_max_seq_len(tmp_path, engine):
    (engine / "engine.json").unlink()
    with pytest.raises(ModelRepoError, match="engine.json"):
        write_model_repo(engine)
    repo = write_model_repo(engine, max_seq_len=256)
    assert 'string_value: "256"' in (repo / "preprocessing" / "config.pbtxt").read_text(encoding="utf-8")


def test_bad_options_are_refused(engine):
    with pytest.raises(ModelRepoError, match="executor must be one of auto, onnxruntime"):
        write_model_repo(engine, executor="vllm")
    (engine / "engine.json").write_text(json.dumps({"schema_version": 3, "model": "tiny"}), encoding="utf-8")
    with pytest.raises(ModelRepoError, match="max_seq_len"):
        write_model_repo(engine)


def test_released_models_use_o200k_harmony(engine):
    m = json.loads((engine / "engine.json").read_text(encoding="utf-8"))
    m["model"] = "20b"
    (engine / "engine.json").write_text(json.dumps(m), encoding="utf-8")
    repo = write_model_repo(engine)
    assert 'string_value: "o200k_harmony"' in (repo / "preprocessing" / "config.pbtxt").read_text(encoding="utf-8")


def test_write_model_repo_command(engine, tmp_path):
    out = tmp_path / "cli-repo"
    r = subprocess.run([sys.executable, "-m", "model_repo.write", str(engine), "--output", str(out),
                        "--max-batch-size", "4", "--reasoning-effort", "low"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(out)
    assert leftover_placeholders(out) == []
    assert 'string_value: "low"' in (out / "preprocessing" / "config.pbtxt").read_text(encoding="utf-8")
    bad = subprocess.run([sys.executable, "-m", "model_repo.write", str(tmp_path / "missing")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a directory" in bad.stderr
