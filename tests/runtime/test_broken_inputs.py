"""Tracebacks left by #22, now named errors: run-engine --onnx on eight kinds of broken graph, a tokenizer.json
that is not JSON, Ctrl-C during a build (one line, exit 130) and SIGTERM during a build (staging removed, 143).
Each broken case has its control: the unbroken graph, tokenizer and build succeed."""

import os
import shutil
import signal
import subprocess

import onnx
import pytest

from runtime.cli import main as run_main
from tests.support import BIN
from tests.support.serving import make_tiny_engine

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    """The tiny engine and its fp32 graph in the onnxruntime-cpu lowering (what --onnx takes)."""
    from checkpoint.convert import load_canonical
    from plugins.onnx.export import export_onnx
    from plugins.onnx.graph import ORT_CPU
    from spec.network import network_from_checkpoint
    root = tmp_path_factory.mktemp("onnx")
    engine = make_tiny_engine(root / "engine")
    (root / "good").mkdir()
    with load_canonical(engine) as ck:
        net = network_from_checkpoint(ck)
        path = export_onnx(net, ck, root / "good" / "model.onnx", dtype="float32", lowering=ORT_CPU,
                           external=False).path
    return engine, path


def _opset(m):
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 1


def _unknown_op(m):
    m.graph.node[len(m.graph.node) // 2].op_type = "NoSuchOp"


def _renamed_input(m):
    old = m.graph.input[0].name
    m.graph.input[0].name = "tokens"
    for n in m.graph.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = "tokens"


def _external_then_missing(path):
    m = onnx.load(str(path))
    onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    (path.parent / "weights.bin").unlink()


def _external_outside(path):
    m = onnx.load(str(path))
    onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    m = onnx.load(str(path), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../../../etc/hostname"
    onnx.save(m, str(path))


def _edit(fn):
    def apply(path):
        m = onnx.load(str(path))
        fn(m)
        onnx.save(m, str(path))
    return apply


BROKEN = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "empty": lambda p: p.write_bytes(b""),
    "not ONNX": lambda p: p.write_text("this is not a protobuf"),
    "wrong opset": _edit(_opset),
    "unknown op": _edit(_unknown_op),
    "renamed input": _edit(_renamed_input),
    "missing external data": _external_then_missing,
    "external data outside the folder": _external_outside,
}


@pytest.mark.parametrize("kind", list(BROKEN))
def test_run_engine_onnx_on_a_broken_graph_is_a_named_error(graph, tmp_path, capsys, kind):
    engine, good = graph
    path = tmp_path / "model.onnx"
    shutil.copy2(good, path)
    BROKEN[kind](path)
    rc = run_main([str(engine), "--input-ids", "1,2,3", "--max-tokens", "2", "--executor", "onnxruntime",
                   "--onnx", str(path)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(path) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_the_unbroken_graph_runs(graph, capsys):
    engine, good = graph
    assert run_main([str(engine), "--input-ids", "1,2,3", "--max-tokens", "2", "--executor", "onnxruntime",
                     "--onnx", str(good)]) == 0


def test_a_tokenizer_that_is_not_json_is_a_named_error(tmp_path, capsys):
    engine = make_tiny_engine(tmp_path / "engine")
    assert run_main([str(engine), "--prompt", "hi", "--max-tokens", "1"]) == 0        # the control
    capsys.readouterr()
    (engine / "tokenizer.json").write_text("{ not json")
    assert run_main([str(engine), "--prompt", "hi", "--max-tokens", "1"]) == 2
    err = capsys.readouterr().err
    assert "tokenizer.json: not a tokenizer.json" in err and "Traceback" not in err
    from model_repo.tokenizer import TokenizerError, load_tokenizer
    with pytest.raises(TokenizerError, match="not a tokenizer.json"):
        load_tokenizer(engine, "tokenizer.json")


def _build_until(tmp_path, stage: str, sig: int):
    out = tmp_path / "out"
    proc = subprocess.Popen([str(BIN / "build-engine"), "--model", "tiny", "--gpu", "cpu", "--output", str(out),
                             "--cache-dir", str(tmp_path / "cache"), "--no-progress"],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if stage in line:
            proc.send_signal(sig)
            break
    rest = proc.stderr.read()
    rc = proc.wait(timeout=120)
    return rc, rest, out, "".join(seen)


@pytest.mark.parametrize("stage", ["[3/6]", "[4/6]", "[5/6]"])
def test_ctrl_c_during_a_build_is_one_line_and_exit_130(tmp_path, stage):
    rc, rest, out, seen = _build_until(tmp_path, stage, signal.SIGINT)
    assert stage in seen
    assert rc == 130, rest
    assert "Traceback" not in rest and rest.strip().splitlines()[-1].startswith("build-engine: interrupted (Ctrl-C)")
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_sigterm_after_stage_4_removes_the_staging_folder(tmp_path):
    rc, rest, out, seen = _build_until(tmp_path, "[4/6]", signal.SIGTERM)
    assert rc == 143, rest
    assert "Traceback" not in rest and "stopped by SIGTERM" in rest
    assert not out.exists() and not list(tmp_path.glob(".out.*")), os.listdir(tmp_path)
