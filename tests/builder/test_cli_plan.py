"""`build-engine --plan` as a user runs it: the installed console script, its JSON contract and exit codes."""

import json
import shutil
import subprocess
import sys

import pytest

CONTRACT = {"model", "gpu", "quant", "tp", "ep", "verdict", "params_total", "params_active",
            "weight_bytes_per_gpu", "kv_bytes_per_token", "max_concurrent_sequences",
            "decode_tokens_per_s_batch1", "reasons"}


def run(*args):
    exe = shutil.which("build-engine")
    cmd = [exe] if exe else [sys.executable, "-m", "builder.cli"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=60)


def test_json_contract():
    r = run("--model", "20b", "--gpu", "b200", "--plan", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert CONTRACT <= set(out)
    assert out["verdict"] == "runnable" and out["quant"] == "nvfp4" and isinstance(out["reasons"], list)


def test_table_output():
    r = run("--model", "tiny", "--gpu", "cpu", "--plan")
    assert r.returncode == 0 and "RUNNABLE" in r.stdout and "max concurrent seqs" in r.stdout


def test_incompatible_exits_3_with_reason():
    r = run("--model", "120b", "--gpu", "rtx-5090", "--tp", "1", "--plan", "--json")
    assert r.returncode == 3
    assert json.loads(r.stdout)["verdict"] == "incompatible"


@pytest.mark.parametrize("args,message", [
    (["--model", "nope", "--gpu", "b200"], "valid models"),
    (["--model", "20b", "--gpu", "nope"], "valid gpus"),
    (["--model", "20b", "--gpu", "b200", "--quant", "nope"], "valid quants"),
    (["--model", "20b", "--gpu", "h100", "--quant", "nvfp4"], "lacks"),
    (["--model", "20b", "--gpu", "b200", "--tp", "3"], "divisor"),
    (["--model", "20b", "--gpu", "b200", "--ep", "33"], "above the 32 experts"),
    (["--model", "20b", "--gpu", "b200", "--kv-dtype", "int2"], "unknown kv dtype"),
])
def test_bad_requests_exit_2(args, message):
    r = run(*args, "--plan")
    assert r.returncode == 2 and message in r.stderr, r.stderr
