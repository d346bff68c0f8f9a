"""A checkpoint without a tokenizer builds (issue 19, "Flags honoured"): build-engine exits 0 with one note,
engine.json records `tokenizer: none`, the engine's Triton repository holds `tensorrt_llm` alone, and the real
tritonserver serves token ids through it over the real tritonclient gRPC stream. Oracle: run-engine --input-ids on
the same engine (the reference path of the runtime). Negative control: the same build with the tokenizer has the
text models. serve-engine's --openai-port and --chat refuse such an engine by name (exit 2), before any server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from model_repo.tokenizer import NO_TOKENIZER
from model_repo.write import MODELS, REPO_MARKER
from spec.manifest import MANIFEST_FILE
from tests.support import BIN
from tests.support.serving import ASSETS, stream_tensorrt_llm

PROMPT = [17, 18, 19, 20, 21]


def _run(tool, *args, timeout=600):
    return subprocess.run([str(BIN / tool), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokless")
    src = root / "src"
    src.mkdir()
    for f in ASSETS.iterdir():
        if f.is_file() and not f.name.startswith("tokenizer"):
            shutil.copy2(f, src / f.name)
    r = _run("build-engine", "--checkpoint", src, "--gpu", "cpu", "--output", root / "engine", "--cache-policy", "off",
             "--no-progress", "--max-seq-len", 256, "--max-batch-size", 4)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "no tokenizer.json" in r.stderr and "token ids" in r.stderr
    return root / "engine"


def test_manifest_and_repository(engine, built_tiny_cpu):
    assert json.loads((engine / MANIFEST_FILE).read_text())["tokenizer"] == NO_TOKENIZER
    assert sorted(p.parent.name for p in (engine / "triton").glob("*/config.pbtxt")) == ["tensorrt_llm"]
    assert (engine / "triton" / REPO_MARKER).is_file()
    # Negative control: with its tokenizer the same model's repository has every text model.
    assert sorted(p.parent.name for p in (built_tiny_cpu / "triton").glob("*/config.pbtxt")) == sorted(MODELS)


@pytest.mark.parametrize("flag", [["--openai-port", "18123"], ["--chat", "hello"]])
def test_serve_engine_refuses_text_fronts_by_name(engine, flag):
    r = _run("serve-engine", engine, *flag, "--grpc-port", 18124, "--http-port", 18125, "--metrics-port", 18126,
             timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f"{flag[0]} needs the text models" in r.stderr and "Traceback" not in r.stderr
    assert "no tokenizer" in r.stdout


def test_grpc_input_ids_match_run_engine(engine, tmp_path):
    from deploy.server import TritonServer
    r = _run("run-engine", engine, "--input-ids", ",".join(map(str, PROMPT)), "--max-tokens", 10, "--stop-ids", 999999,
             "--json", "--executor", "reference")
    assert r.returncode == 0, r.stderr
    expected = json.loads(r.stdout)["output_ids"]
    srv = TritonServer(engine / "triton", log_file=tmp_path / "server.log", exit_timeout_s=15)
    srv.start(timeout_s=240)
    try:
        q, c = stream_tensorrt_llm(srv.grpc_url, PROMPT, 10)
        tokens = []
        while True:
            result, error = q.get(timeout=60)
            assert error is None, error
            out = result.as_numpy("output_ids")
            if out is not None:
                tokens += out.reshape(-1).tolist()
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        c.stop_stream()
        c.close()
    finally:
        srv.stop()
    assert tokens == expected and len(tokens) == 10
