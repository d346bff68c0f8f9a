"""One validator for an engine's values (spec.bounds, spec.engine_values.read_engine), used by every tool that
reads an engine: run-engine, serve-engine, write-model-repo, deploy-engine and build-engine's install step.
Each out-of-range value is refused by all of them with exit 2 and a message naming the file, the key, the value
and the range; the engine as built is accepted by all of them (the negative control)."""

import json
import shutil
import subprocess
import sys

import pytest

from deploy.deploy_cli import main as deploy_main
from model_repo.write import main as write_repo_main
from runtime.cli import main as run_main
from spec.bounds import BOUNDS, EngineValueError, check_int, check_token_ids
from spec.engine_values import ENGINE_ERRORS, read_engine
from tests.support import BIN, REPO, TINY_ASSETS

pytestmark = pytest.mark.reliability


@pytest.fixture()
def engine(built_tiny_cpu_copy):
    return built_tiny_cpu_copy


def edit(engine, name, change):
    path = engine / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=1))


def tools(engine, tmp_path):
    """rc of each tool on the engine, with its stderr."""
    out = {}
    out["run-engine"] = (run_main, [str(engine), "--input-ids", "1,2", "--max-tokens", "2", "--executor", "reference"])
    out["write-model-repo"] = (write_repo_main, [str(engine), "--output", str(tmp_path / "repo")])
    out["deploy-engine"] = (deploy_main, [str(engine), "--target", "k8s", "--out", str(tmp_path / "k8s")])
    return out


def run_tools(engine, tmp_path, capsys):
    results = {}
    for name, (fn, argv) in tools(engine, tmp_path).items():
        rc = fn(argv)
        results[name] = (rc, capsys.readouterr().err)
    # serve-engine: the step before any server starts (serve_main prints its error and exits 2)
    from deploy.serve_cli import resolve_repository
    from model_repo.backends import BackendError
    try:
        resolve_repository(engine, "reference", tmp_path)
        results["serve-engine"] = (0, "")
    except BackendError as e:
        results["serve-engine"] = (2, str(e))
    return results


def test_the_engine_as_built_is_accepted_by_every_tool(engine, tmp_path, capsys):
    values = read_engine(engine, need_network=True)
    assert values.network.vocab_size == 4096 and values.manifest.max_seq_len <= values.network.max_position_embeddings
    for name, (rc, err) in run_tools(engine, tmp_path, capsys).items():
        assert rc == 0, (name, err)


ENGINE_JSON_CASES = [
    ("max_seq_len", lambda m: m.update(max_seq_len=10 ** 18), "max_seq_len = 1000000000000000000"),
    ("max_batch_size", lambda m: m.update(max_batch_size=2 ** 40), "max_batch_size = 1099511627776"),
    ("tp", lambda m: m.update(tp=5000), "tp = 5000"),
    ("plan bytes as a string", lambda m: m["plan"].update(weight_bytes_per_gpu="NaN"),
     "plan.weight_bytes_per_gpu = 'NaN'"),
    ("plan bytes huge", lambda m: m["plan"].update(kv_budget_bytes_per_gpu=1e300), "plan.kv_budget_bytes_per_gpu"),
    ("stop id outside the vocabulary", lambda m: m.update(stop_token_ids=[4096]), "stop_token_ids[0] = 4096"),
    ("max_seq_len above the network's positions", lambda m: m.update(max_seq_len=8192), "max_position_embeddings"),
]


@pytest.mark.parametrize("case", ENGINE_JSON_CASES, ids=[c[0] for c in ENGINE_JSON_CASES])
def test_out_of_range_engine_json_is_refused_by_every_tool(engine, tmp_path, capsys, case):
    _, change, says = case
    edit(engine, "engine.json", change)
    with pytest.raises(ENGINE_ERRORS) as e:
        read_engine(engine)
    assert says in str(e.value) and "engine.json" in str(e.value)
    for name, (rc, err) in run_tools(engine, tmp_path, capsys).items():
        assert rc == 2, name
        assert says in err and "engine.json" in err, (name, err)
        assert "Traceback" not in err


def _many_layers(n):
    def change(net):
        net["layers"] = [dict(net["layers"][i % len(net["layers"])], index=i) for i in range(n)]
    return change


NETWORK_CASES = [
    ("negative heads", lambda n: n["layers"][1]["attention"].update(num_q_heads=-8),
     "layers[1].attention.num_q_heads: -8 must be a positive integer"),
    ("2,000 layers", _many_layers(2000), "layers (count) = 2000"),
    ("20,000 layers", _many_layers(20000), "larger than 16777216 bytes"),     # refused before it is parsed
    ("eos outside the vocabulary", lambda n: n.update(eos_token_ids=[4094, 10 ** 9]), "eos_token_ids[1] = 1000000000"),
    ("huge vocabulary", lambda n: [n.update(vocab_size=10 ** 18), n["embedding"].update(vocab_size=10 ** 18),
                                   n["lm_head"].update(out_features=10 ** 18)], "vocab_size = 1000000000000000000"),
    ("window of 10^12", lambda n: n["layers"][0]["attention"].update(window=10 ** 12), "layers[0].attention.window"),
    ("NaN eps", lambda n: n["final_norm"].update(eps=float("nan")), "final_norm.eps: nan must be > 0"),
]


@pytest.mark.parametrize("case", NETWORK_CASES, ids=[c[0] for c in NETWORK_CASES])
def test_out_of_range_network_json_is_refused_by_every_tool(engine, tmp_path, capsys, case):
    _, change, says = case
    edit(engine, "network.json", change)
    with pytest.raises(ENGINE_ERRORS) as e:
        read_engine(engine)
    assert says in str(e.value) and "network.json" in str(e.value)
    for name, (rc, err) in run_tools(engine, tmp_path, capsys).items():
        # deploy-engine did not read network.json before: it refuses these now like every other tool
        assert rc == 2, name
        assert says in err and "network.json" in err, (name, err)


def test_messages_name_the_file_the_key_the_value_and_the_range():
    with pytest.raises(EngineValueError) as e:
        check_int("x/engine.json", "max_batch_size", 0, "max_batch_size")
    assert str(e.value).startswith("x/engine.json: max_batch_size = 0: outside the allowed range, must be an "
                                   "integer in [1, 2^16]")
    with pytest.raises(EngineValueError, match=r"must be an integer in \[1, 2\^16\]"):
        check_int("f", "max_batch_size", "16", "max_batch_size")       # no string-to-int
    with pytest.raises(EngineValueError):
        check_int("f", "max_batch_size", True, "max_batch_size")       # bool is not an int
    with pytest.raises(EngineValueError, match=r"not a token id inside the vocabulary of 10 tokens"):
        check_token_ids("f", "stop_token_ids", [3, 10], 10)
    assert check_token_ids("f", "stop_token_ids", [0, 9], 10) == (0, 9)
    # every declared range is a real range
    assert all(b.lo <= b.hi and b.why for b in BOUNDS.values())


def test_build_refuses_an_end_token_outside_the_vocabulary(tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(TINY_ASSETS, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["eos_token_id"] = [4094, cfg["vocab_size"]]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    r = subprocess.run([str(BIN / "build-engine"), "--model", "tiny", "--gpu", "cpu", "--checkpoint",
                        str(ckpt), "--output", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
                        "--no-progress"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 2, r.stderr
    assert "eos_token_ids[1] = 4096" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_fuzzed_engine_values_end_in_named_refusals_or_acceptance(built_tiny_cpu, tmp_path):
    engine = tmp_path / "engine"
    shutil.copytree(built_tiny_cpu, engine, symlinks=True)
    r = subprocess.run([sys.executable, "-m", "tests.support.fuzz_engine_values", "--engine", str(engine),
                        "--cases", "300", "--seed", "0", "--work", str(tmp_path / "work")],
                       capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["crashes"] == 0 and result["n_failures"] == 0, "\n\n".join(result["failures"])
    assert result["cases"] == 300 == result["refused"] + result["accepted"]
    # most edits are refused, and some are harmless (the control that the fuzz does not refuse everything)
    assert result["refused"] > 200 and result["accepted"] > 5
    assert result["max_rss_growth_mib"] < 1024
