"""serve-engine serves only the repository the build wrote (model_repo.integrity): engine.json records a sha256
of every file under triton/, and an extra model, an edited model.py, a .pyc or a link there is refused with a
named error before any server starts; files an engine reads are regular files inside it (no links out)."""

import json
import shutil

import pytest

from deploy.serve_cli import serve_main
from model_repo.integrity import hash_tree
from model_repo.write import write_model_repo
from runtime.cli import main as run_main
from spec.manifest import EngineManifest

pytestmark = pytest.mark.reliability


@pytest.fixture()
def engine(built_tiny_cpu_copy):
    return built_tiny_cpu_copy


def serve(engine, capsys):
    # A port no server can bind: if the engine passed its checks, the server would fail later with another error.
    rc = serve_main([str(engine), "--grpc-port", "1", "--http-port", "2", "--metrics-port", "3",
                     "--ready-timeout", "5"])
    return rc, capsys.readouterr()


def test_the_build_records_every_file_of_triton(engine):
    recorded = EngineManifest.read(engine).triton_sha256
    assert recorded == hash_tree(engine / "triton")
    assert any(k.endswith("/1/model.py") for k in recorded) and any(k.endswith("config.pbtxt") for k in recorded)
    from deploy.serve_cli import resolve_repository
    repo, how = resolve_repository(engine, None, engine.parent)
    assert repo == engine / "triton" and how == "the engine's triton/ repository"


TAMPERING = {
    "an extra model": (lambda t: shutil.copytree(t / "postprocessing", t / "evil"), "extra: evil/1/model.py"),
    "one edited line of model.py": (
        lambda t: (t / "preprocessing/1/model.py").write_text(
            (t / "preprocessing/1/model.py").read_text().replace("\n", "\nimport os; os.system('touch /tmp/x')\n", 1)),
        "edited: preprocessing/1/model.py"),
    "a .pyc beside model.py": (
        lambda t: ((t / "tensorrt_llm/1/__pycache__").mkdir(), (t / "tensorrt_llm/1/__pycache__/model.cpython-311.pyc")
                   .write_bytes(b"\x00" * 16)), "extra: tensorrt_llm/1/__pycache__/model.cpython-311.pyc"),
    "a missing file": (lambda t: (t / "ensemble/config.pbtxt").unlink(), "missing: ensemble/config.pbtxt"),
    "a link out of the engine": (lambda t: ((t / "postprocessing/1/model.py").unlink(),
                                            (t / "postprocessing/1/model.py").symlink_to("/etc/hostname")),
                                 "a link to /etc/hostname, outside the engine directory"),
    "a link inside the engine": (lambda t: ((t / "postprocessing/1/model.py").unlink(),
                                            (t / "postprocessing/1/model.py").symlink_to("../../../network.json")),
                                 "a symbolic link inside the engine's triton/ folder"),
}


@pytest.mark.parametrize("how", list(TAMPERING))
def test_a_tampered_repository_is_refused_before_any_server_starts(engine, capsys, how):
    tamper, says = TAMPERING[how]
    tamper(engine / "triton")
    rc, out = serve(engine, capsys)
    assert rc == 2 and says in out.err, out.err
    assert "starting" not in out.out and "Traceback" not in out.err


def test_the_untampered_engine_gets_past_the_check(engine, capsys):
    """The negative control: the same call on the engine as built fails only later, at the port it cannot bind."""
    rc, out = serve(engine, capsys)
    assert "triton/ verified" in out.out and "starting" in out.out
    assert "not the model repository the build wrote" not in out.err


def test_rewriting_triton_with_write_model_repo_records_the_new_hashes(engine):
    write_model_repo(engine, cpu_threads=2)
    recorded = EngineManifest.read(engine).triton_sha256
    assert recorded == hash_tree(engine / "triton")
    from deploy.serve_cli import resolve_repository
    assert resolve_repository(engine, None, engine.parent)[0] == engine / "triton"


def test_an_engine_without_recorded_hashes_is_served_from_a_fresh_repository(engine, tmp_path):
    m = json.loads((engine / "engine.json").read_text())
    m["triton_sha256"] = None
    (engine / "engine.json").write_text(json.dumps(m))
    shutil.copytree(engine / "triton" / "postprocessing", engine / "triton" / "evil")
    from deploy.serve_cli import resolve_repository
    repo, how = resolve_repository(engine, None, tmp_path)
    assert repo == tmp_path / "triton" and not (repo / "evil").exists()


def test_a_tokenizer_linked_out_of_the_engine_is_a_named_error(engine, tmp_path, capsys):
    outside = tmp_path / "elsewhere.json"
    shutil.copy2(engine / "tokenizer.json", outside)
    (engine / "tokenizer.json").unlink()
    (engine / "tokenizer.json").symlink_to(outside)
    assert run_main([str(engine), "--prompt", "hi", "--max-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer.json: a link to" in err and "outside the engine directory" in err
    rc, out = serve(engine, capsys)
    assert rc == 2 and "outside the engine directory" in out.err and "Traceback" not in out.err
    # a link that stays inside the engine is fine (the control)
    (engine / "tokenizer.json").unlink()
    shutil.copy2(outside, engine / "tok-copy.json")
    (engine / "tokenizer.json").symlink_to("tok-copy.json")
    assert run_main([str(engine), "--prompt", "hi", "--max-tokens", "1"]) == 0


def test_served_models_write_no_bytecode():
    from deploy.server import server_env
    assert server_env({"PATH": "/usr/bin"})["PYTHONDONTWRITEBYTECODE"] == "1"
