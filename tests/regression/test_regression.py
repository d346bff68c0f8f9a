"""engine-regression on the tiny engines: the formats pass with one combined report, deliberately broken engines
are caught (exit 1, naming the metric), the served path agrees with the engine directory, bad input is exit 2.

Engines are built once per session (build-engine, shared cache); the golden is recorded here from the bf16 engine
(tests do not depend on the committed regression/goldens/tiny.json, which test_committed_golden_is_current checks).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from regression import core, faults
from regression.ci import build_engines
from regression.cli import main as regression
from regression.suite import load_suite, split_segments
from spec.manifest import MANIFEST_FILE
from tests.support import REPO

ROOT = REPO


@pytest.fixture(scope="session")
def tiny_engines(tmp_path_factory):
    """{format: engine dir} for every tiny format build-engine makes, and {format: why not} for the others."""
    root = tmp_path_factory.mktemp("regression-engines")
    return build_engines(root, ["bf16", "mxfp4", "fp8", "nvfp4"], cache_dir=str(root / "cache"))


@pytest.fixture(scope="session")
def engines(tiny_engines):
    built, failed = tiny_engines
    assert "bf16" in built and "mxfp4" in built, failed
    return built


@pytest.fixture(scope="session")
def goldens(engines, tmp_path_factory):
    d = tmp_path_factory.mktemp("goldens")
    assert regression([str(engines["bf16"]), "--record", "--goldens", str(d)]) == 0
    return d


def run(args, goldens, capsys):
    rc = regression([str(a) for a in args] + ["--goldens", str(goldens)])
    out = capsys.readouterr()
    return rc, out.out + out.err


def read_report(d: Path) -> dict:
    return json.loads((d / "report.json").read_text())


# -- the formats ---------------------------------------------------------------------------------------------------
def test_tiny_formats_pass_with_one_combined_report(engines, goldens, tmp_path, capsys):
    order = [f for f in ("bf16", "fp8", "mxfp4", "nvfp4") if f in engines]
    rc, text = run([engines[f] for f in order] + ["--report", tmp_path / "r"], goldens, capsys)
    assert rc == 0, text
    report = read_report(tmp_path / "r")
    assert report["passed"] and [r["quant"] for r in report["results"]] == order
    bf16 = report["results"][0]["metrics"]
    assert bf16["token_agreement"] == bf16["top1_agreement"] == bf16["tokenizer_agreement"] == 1.0
    assert bf16["logit_cosine"] > 1 - 1e-9 and abs(bf16["ppl_increase"]) < 1e-6     # the golden keeps 7 digits
    md = (tmp_path / "r" / "report.md").read_text()
    assert md.count("| pass |") == 5 * len(order) and "report.png" in md
    assert (tmp_path / "r" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("fmt", ["fp8", "nvfp4"])
def test_fp8_and_nvfp4_tiny_engines_pass_and_a_wrong_scale_is_caught(fmt, tiny_engines, goldens, tmp_path, capsys):
    built, failed = tiny_engines
    if fmt not in built:
        pytest.skip(f"build-engine does not make a tiny {fmt} engine yet: {failed[fmt]}")
    rc, text = run([built[fmt]], goldens, capsys)
    assert rc == 0, text
    what = faults.break_engine("wrong_quant_scale", built[fmt], tmp_path / "engine")
    scale = "weight_scale_2" if fmt == "nvfp4" else "weight_scale"
    assert what["tensors"] == [f"model.layers.1.mlp.experts.down_proj_{scale} x2"]
    rc, text = run([tmp_path / "engine", "--report", tmp_path / "r"], goldens, capsys)
    assert_caught(rc, text, tmp_path / "r", {"top1_agreement", "logit_cosine"})


# -- broken engines are caught -------------------------------------------------------------------------------------
def assert_caught(rc, text, report_dir, expected: set):
    assert rc == 1, text
    [r] = read_report(report_dir)["results"]
    failed = {c["metric"]: c for c in r["checks"] if not c["pass"]}
    assert expected <= set(failed), (failed, r["metrics"])
    for metric, c in failed.items():
        # the message names the metric, its value and its threshold
        assert f"{metric} = {c['value']:.6g}, threshold {c['op']} {c['threshold']:.6g}" in text
    return failed


def test_zeroed_sinks_are_caught(engines, goldens, tmp_path, capsys):
    what = faults.break_engine("zero_sinks", engines["bf16"], tmp_path / "engine")
    assert len(what["tensors"]) == 4                    # one per layer
    rc, text = run([tmp_path / "engine", "--report", tmp_path / "r"], goldens, capsys)
    assert_caught(rc, text, tmp_path / "r", {"top1_agreement", "logit_cosine"})


def test_a_wrong_scale_in_one_quantized_tensor_is_caught(engines, goldens, tmp_path, capsys):
    what = faults.break_engine("wrong_quant_scale", engines["mxfp4"], tmp_path / "engine")
    assert what["tensors"] == ["model.layers.1.mlp.experts.down_proj_scales: e8m0 bytes +1 (x2)"]
    rc, text = run([tmp_path / "engine", "--report", tmp_path / "r"], goldens, capsys)
    assert_caught(rc, text, tmp_path / "r", {"top1_agreement", "logit_cosine"})


def test_disabled_sliding_window_is_caught(engines, goldens, tmp_path, capsys):
    what = faults.break_engine("disable_sliding_window", engines["bf16"], tmp_path / "engine")
    assert "network.json layers[0]" in what["changed"]
    net = json.loads((tmp_path / "engine" / "network.json").read_text())
    assert {layer["attention"]["kind"] for layer in net["layers"]} == {"full"}
    assert _same_files_but_network(engines["bf16"], tmp_path / "engine")
    rc, text = run([tmp_path / "engine", "--report", tmp_path / "r"], goldens, capsys)
    assert_caught(rc, text, tmp_path / "r", {"token_agreement", "top1_agreement", "logit_cosine"})


def test_sinks_dropped_in_network_json_are_caught(engines, goldens, tmp_path, capsys):
    what = faults.break_engine("drop_sinks", engines["bf16"], tmp_path / "engine")
    assert len(what["changed"]) == 4                    # one per layer, network.json only
    assert _same_files_but_network(engines["bf16"], tmp_path / "engine")
    rc, text = run([tmp_path / "engine", "--report", tmp_path / "r"], goldens, capsys)
    assert_caught(rc, text, tmp_path / "r", {"top1_agreement", "logit_cosine"})


def _same_files_but_network(a: Path, b: Path) -> bool:
    """Every file of engine b but network.json equals a's, byte for byte (the fault edits that one file)."""
    files = [p.relative_to(b) for p in b.rglob("*") if p.is_file()]
    return all((a / f).read_bytes() == (b / f).read_bytes() for f in files if f.name != "network.json") and \
        (a / "network.json").read_bytes() != (b / "network.json").read_bytes()


def test_one_broken_engine_fails_a_combined_run(engines, goldens, tmp_path, capsys):
    faults.break_engine("zero_sinks", engines["bf16"], tmp_path / "broken")
    rc, _ = run([engines["bf16"], tmp_path / "broken", "--report", tmp_path / "r"], goldens, capsys)
    assert rc == 1
    assert [r["passed"] for r in read_report(tmp_path / "r")["results"]] == [True, False]
    assert "**FAIL**" in (tmp_path / "r" / "report.md").read_text()


# -- through a real Triton server ----------------------------------------------------------------------------------
def test_served_engine_agrees_with_the_engine_directory(engines, goldens, tmp_path, capsys):
    from deploy.server import TritonServer, shm_files
    from model_repo.write import write_model_repo
    from tests.support.serving import assert_stopped_cleanly
    repo = write_model_repo(engines["bf16"], tmp_path / "repo")
    server = TritonServer(repo, log_file=tmp_path / "server.log", exit_timeout_s=15)
    server.start(timeout_s=240)
    try:
        rc, text = run(["--url", server.grpc_url, "--report", tmp_path / "url"], goldens, capsys)
        # the GPU-box workflow: a golden recorded from a served bf16 engine (token ids from --tokenizer)
        (tmp_path / "g").mkdir()
        rec = regression(["--url", server.grpc_url, "--record", "--tokenizer", str(engines["bf16"]),
                          "--goldens", str(tmp_path / "g")])
    finally:
        assert_stopped_cleanly(server.stop(), tmp_path / "server.log")
        assert shm_files(server.shm_prefix) == []
    assert rc == 0, text
    rc, text = run([engines["bf16"], "--report", tmp_path / "dir"], goldens, capsys)
    assert rc == 0, text
    [url], [direct] = read_report(tmp_path / "url")["results"], read_report(tmp_path / "dir")["results"]
    assert url["kind"] == "url" and (url["model"], url["quant"]) == ("tiny", "bf16")
    for m in ("tokenizer_agreement", "token_agreement", "top1_agreement"):
        assert url["metrics"][m] == direct["metrics"][m] == 1.0
    assert url["metrics"]["logit_cosine"] > 1 - 1e-9
    assert abs(url["metrics"]["ppl_increase"]) < 1e-6
    assert url["info"]["max_topk_logprob_diff"] < 1e-4
    assert rec == 0
    served, direct = (json.loads(p.read_text()) for p in (tmp_path / "g" / "tiny.json", goldens / "tiny.json"))
    assert [p["output_ids"] for p in served["prompts"]] == [p["output_ids"] for p in direct["prompts"]]
    assert [s["ids"] for s in served["segments"]] == [s["ids"] for s in direct["segments"]]
    assert served["perplexity"] == pytest.approx(direct["perplexity"], rel=1e-6)
    assert served["engine"]["kind"] == "url"


# -- bad input: exit 2 ---------------------------------------------------------------------------------------------
def test_missing_golden_says_record(engines, tmp_path):
    r = subprocess.run([sys.executable, "-m", "regression.cli", str(engines["bf16"]), "--goldens", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 2, r.stderr
    assert "--record" in r.stderr and "no golden" in r.stderr


def test_stale_goldens_are_refused(engines, goldens, tmp_path, capsys):
    g = json.loads((goldens / "tiny.json").read_text())
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "tiny.json").write_text(json.dumps({**g, "suite_fingerprint": "0" * 64}))
    rc, text = run([engines["bf16"]], tmp_path / "suite", capsys)
    assert rc == 2 and "another version of suite 'tiny'" in text and "--record" in text
    other = json.loads(json.dumps(g))
    other["engine"]["source_sha256"] = {"model.safetensors": "0" * 64}
    (tmp_path / "source").mkdir()
    (tmp_path / "source" / "tiny.json").write_text(json.dumps(other))
    rc, text = run([engines["mxfp4"]], tmp_path / "source", capsys)
    assert rc == 2 and "another source checkpoint" in text


@pytest.mark.parametrize("args,fragment", [
    ([], "at least one ENGINE_DIR or --url"),
    (["--suite", "nope"], "unknown suite 'nope'"),
    (["--suite", "20b"], "GPU suite"),
    (["--suite", "120b", "ENGINE"], "model 'tiny', suite '120b' is for '120b'"),
    (["/no/such/engine"], "no such engine directory"),
])
def test_bad_input_is_exit_2(args, fragment, engines, goldens, capsys):
    args = [str(engines["bf16"]) if a == "ENGINE" else a for a in args]
    rc, text = run(args, goldens, capsys)
    assert rc == 2 and fragment in text, text


def test_gpu_suite_names_upstream_reference(engines, goldens, capsys):
    rc, text = run(["--suite", "120b"], goldens, capsys)
    assert rc == 2 and "GPT-OSS/120B-MXFP4 90.3" in text and "120b.yaml" in text


def test_record_refuses_a_quantized_engine(engines, tmp_path, capsys):
    rc, text = run([engines["mxfp4"], "--record"], tmp_path, capsys)
    assert rc == 2 and "bf16" in text and not (tmp_path / "tiny.json").exists()


def test_a_format_without_thresholds_is_exit_2(engines, goldens, tmp_path, capsys):
    data = yaml.safe_load(core.THRESHOLDS_FILE.read_text())
    del data["formats"]["mxfp4"]
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(data))
    rc, text = run([engines["mxfp4"], "--thresholds", tmp_path / "t.yaml"], goldens, capsys)
    assert rc == 2 and "no thresholds for quant format 'mxfp4'" in text


# -- the committed golden, the suites, the metrics -----------------------------------------------------------------
def test_committed_golden_is_current(engines, capsys):
    """CI runs against regression/goldens/tiny.json: it must be the shipped tiny model's (re-record on change)."""
    suite = load_suite("tiny")
    try:
        golden = core.load_golden(suite)
        core.check_same_source(golden, {**golden["engine"], "target": str(engines["bf16"]),
                                        "source_sha256": json.loads((engines["bf16"] / MANIFEST_FILE).read_text())
                                        ["inputs"]["sha256"]})
    except core.GoldenError as e:
        pytest.skip(f"regression/goldens/tiny.json is stale (the CI gate says so too): {e}")
    rc = regression([str(engines["bf16"])])
    assert rc == 0, capsys.readouterr()


def test_suites_load_and_gpu_suites_cite_upstream():
    tiny = load_suite("tiny")
    assert tiny.model == "tiny" and not tiny.gpu_only and len(tiny.segments) >= 4 and len(tiny.prompts) >= 8
    for name, acc in (("20b", 85.0), ("120b", 90.3)):
        s = load_suite(name)
        ref = s.raw["accuracy_references"]["gsm8k"]
        assert s.gpu_only and ref["accuracy"] == acc
        assert ref["source"] == "NVIDIA/TensorRT-LLM tests/integration/defs/accuracy/references/gsm8k.yaml"
        # upstream's one-sided test: reference + z(0.05) * sqrt(2 sigma^2 / n)
        assert ref["threshold"] == pytest.approx(acc - 1.6449 * math.sqrt(2 * 50 ** 2 / 1319), abs=0.01)
    t = core.load_thresholds()
    for fmt in ("bf16", "fp8", "mxfp4", "nvfp4"):
        core.thresholds_for(t, fmt, "tiny")


def test_segments_cut_at_whitespace():
    text = "alpha beta gamma delta epsilon zeta eta theta"
    segs = split_segments(text, 12, 10)
    assert segs == ["alpha beta", "gamma delta", "epsilon zeta", "eta theta"]
    assert all(len(s) <= 12 for s in segs) and split_segments(text, 12, 2) == segs[:2]


def test_token_agreement_is_position_wise():
    import numpy as np

    from regression.targets import Generation, Scored
    golden = {"prompts": [{"prompt_ids": [1, 2], "output_ids": [5, 6, 7, 8], "logprobs": [-1.0] * 4}],
              "segments": [{"ids": [1, 2, 3], "topk_ids": [[2, 3], [3, 2]], "topk_logprobs": [[-0.1, -2.5], [-0.2, -1.9]],
                            "next_logprobs": [-0.1, -0.2]}]}
    lp = np.log(np.full((3, 4), 0.1, dtype=np.float32))
    lp[0, 2], lp[1, 3] = math.log(0.7), math.log(0.7)
    obs = core.Observation([Generation([1, 2], 2, [5, 0, 7], [-1.0] * 3)], [Scored([1, 2, 3], 3, lp)])
    metrics, info = core.compute_metrics(golden, obs)
    assert metrics["token_agreement"] == 2 / 4          # 5 and 7 agree; the missing 4th position disagrees
    assert metrics["top1_agreement"] == 1.0 and metrics["tokenizer_agreement"] == 1.0
    assert metrics["ppl_increase"] == pytest.approx(math.exp(-math.log(0.7)) / math.exp(0.15) - 1)
    assert info["prefix_match"] == 0.25
