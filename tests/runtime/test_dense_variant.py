"""The dense variant end to end on a tiny dense config: convert, build, run, serve.

Oracle: transformers' GptOssForCausalLM with one expert and top-1 routing carrying the same weights (softmax over
one expert is 1), fp32, max |ours - theirs| / max |theirs| < 1e-5 (tests/support/dense.py).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from checkpoint.convert import convert_checkpoint, load_canonical
from checkpoint.errors import CheckpointError
from runtime import Runtime, SamplingParams
from spec.manifest import MANIFEST_FILE
from spec.network import DenseMLP, load_network
from spec.registry import get_model
from tests.support import BIN, REPO
from tests.support.dense import hf_logits, tiny_dense_checkpoint, write_dense_checkpoint
from tests.support.runtime import rel_diff

TOL = 1e-5
ROOT = REPO
DENSE = get_model("tiny-dense")


def _ids(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, DENSE.vocab_size, (n,), generator=g).tolist()


def test_dense_checkpoint_reads_as_the_registry_entry():
    with load_canonical(tiny_dense_checkpoint()) as ck:
        assert ck.config == DENSE
        assert ck.format == "hf" and ck.quant == "bf16"
        assert ck.shape("layers.0.mlp.gate.weight") == (DENSE.intermediate_size, DENSE.hidden_size)
        assert not any(".moe." in n for n in ck.names())


def test_dense_logits_equal_transformers_one_expert_top1():
    ids = _ids(3 * DENSE.sliding_window + 5)
    ours = Runtime.from_dir(tiny_dense_checkpoint()).prompt_logits(ids)
    assert rel_diff(ours, hf_logits(DENSE, ids)) < TOL


def test_dense_decode_step_by_step_equals_transformers():
    ids = _ids(2 * DENSE.sliding_window + 3, seed=1)
    model = Runtime.from_dir(tiny_dense_checkpoint()).model
    cache = model.new_cache(1, capacity=2)
    out = [model.forward(torch.tensor([ids[:2]]), torch.arange(2)[None], cache, logits="all")[0]]
    for t in range(2, len(ids)):
        out.append(model.forward(torch.tensor([[ids[t]]]), torch.tensor([[t]]), cache, logits="all")[0])
    assert rel_diff(torch.cat(out), hf_logits(DENSE, ids)) < TOL


def test_negative_control_gate_up_not_interleaved_breaks_the_match(tmp_path):
    """The same weights with gate/up stored as halves instead of interleaved: loads fine, computes nonsense."""
    bad = write_dense_checkpoint(DENSE, tmp_path / "halves", interleaved=False, tokenizer=False)
    ids = _ids(40)
    diff = rel_diff(Runtime.from_dir(bad).prompt_logits(ids), hf_logits(DENSE, ids))
    assert diff > 1e-3, diff


def test_negative_control_other_weights_break_the_match():
    ids = _ids(40)
    ours = Runtime.from_dir(tiny_dense_checkpoint()).prompt_logits(ids)
    assert rel_diff(ours, hf_logits(DENSE, ids, seed=1)) > 1e-2


def test_convert_to_hf_is_bit_exact_and_other_layouts_are_refused(tmp_path):
    src = tiny_dense_checkpoint()
    out = convert_checkpoint(src, tmp_path / "hf", to="hf", progress=False)
    a, b = load_file(str(src / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "gpt_oss_dense" and "num_local_experts" not in config
    assert (out / "tokenizer.json").is_file()
    for to in ("hf-mxfp4", "openai", "hf-nvfp4"):     # hf-fp8: test_fp8_dense_is_the_fp8_one_expert_model
        with pytest.raises(CheckpointError, match=f"dense MLP, which the {to} layout cannot hold"):
            convert_checkpoint(src, tmp_path / to, to=to, progress=False)
        assert not (tmp_path / to).exists()


def test_fp8_dense_is_the_fp8_one_expert_model(tmp_path):
    """W8A8 FP8 with calibrated input scales and an FP8 KV cache: the dense checkpoint and the equivalent
    one-expert MoE (whose FP8 path is checked against ModelOpt elsewhere) get the same bytes, the same scales
    and the same logits; FP8's own error against bf16 is large on this random model, so equality is a real check."""
    import shutil

    from builder.convert import calibrate_and_convert as convert_calibrated
    from tests.support.dense import hf_one_expert
    moe = tmp_path / "moe"
    hf_one_expert(DENSE).save_pretrained(moe)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy2(tiny_dense_checkpoint() / f, moe / f)
    texts = tmp_path / "calib.txt"
    texts.write_text("To be, or not to be, that is the question.\nO Romeo, Romeo, wherefore art thou Romeo?\n")
    kw = dict(calibration=texts, kv_cache="fp8", progress=False, calib_options={"max_tokens": 64})
    d = convert_calibrated(tiny_dense_checkpoint(), tmp_path / "dense-fp8", "hf-fp8", **kw)
    m = convert_calibrated(moe, tmp_path / "moe-fp8", "hf-fp8", **kw)
    dt, mt = load_file(str(d / "model.safetensors")), load_file(str(m / "model.safetensors"))
    assert dt["model.layers.0.mlp.gate_up_proj"].dtype == torch.float8_e4m3fn
    for name, t in dt.items():
        other = mt[name.replace(".mlp.", ".mlp.experts.")] if ".mlp." in name else mt[name]
        other = other[0] if other.dim() == t.dim() + 1 else other
        assert torch.equal(t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t,
                           other.view(torch.uint8) if other.dtype == torch.float8_e4m3fn else other), name
    cfg = json.loads((d / "config.json").read_text())["quantization_config"]
    assert cfg["quant_algo"] == "FP8" and not any("router" in m for m in cfg["ignore"])
    ids = _ids(40, seed=7)
    dense_logits, moe_logits = Runtime.from_dir(d).prompt_logits(ids), Runtime.from_dir(m).prompt_logits(ids)
    assert rel_diff(dense_logits, moe_logits) < 1e-6
    assert rel_diff(dense_logits, hf_logits(DENSE, ids)) > 1e-2          # it is quantized
    back = convert_checkpoint(d, tmp_path / "back", to="hf", progress=False)
    assert rel_diff(Runtime.from_dir(back).prompt_logits(ids), hf_logits(DENSE, ids)) < 0.5


def test_transformers_refuses_the_dense_config_instead_of_inventing_experts():
    from transformers import AutoConfig
    with pytest.raises((ValueError, KeyError)):
        AutoConfig.from_pretrained(tiny_dense_checkpoint())


# -- build-engine, run-engine, serve-engine ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    out = tmp_path_factory.mktemp("dense") / "engine"
    r = subprocess.run([str(BIN / "build-engine"), "--model", "tiny-dense", "--gpu", "cpu", "--checkpoint",
                        str(tiny_dense_checkpoint()), "--output", str(out), "--cache-policy", "off", "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return out


def test_build_engine_builds_the_dense_engine(engine):
    m = json.loads((engine / MANIFEST_FILE).read_text())
    assert (m["model"], m["gpu"], m["quant"]) == ("tiny-dense", "cpu", "bf16")
    net = load_network(engine / "network.json")
    assert all(isinstance(layer.mlp, DenseMLP) for layer in net.layers)
    assert "moe_bf16" not in net.kernels
    assert all(v["ok"] for v in m["validated_on"] if v["runtime"] == "reference")


def test_built_engine_logits_equal_transformers(engine):
    ids = _ids(50, seed=3)
    assert rel_diff(Runtime.from_dir(engine).prompt_logits(ids), hf_logits(DENSE, ids)) < TOL


def test_run_engine_runs_the_dense_engine(engine, tmp_path):
    logits = tmp_path / "logits.npy"
    r = subprocess.run([str(BIN / "run-engine"), str(engine), "--prompt", "To be, or not", "--max-tokens", "6",
                        "--json", "--logits-out", str(logits)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert len(out["output_ids"]) == 6 or out["finish_reason"] == "stop"
    # Its greedy tokens are transformers' greedy tokens, its prompt logits transformers' logits.
    from tests.support.dense import hf_one_expert
    ids = out["prompt_ids"]
    with torch.no_grad():
        ref = hf_one_expert(DENSE).generate(torch.tensor([ids]), max_new_tokens=len(out["output_ids"]),
                                            do_sample=False, eos_token_id=None)[0, len(ids):].tolist()
    assert out["output_ids"] == ref
    assert rel_diff(torch.from_numpy(np.load(logits)), hf_logits(DENSE, ids)) < TOL


def test_model_and_checkpoint_must_agree(tmp_path):
    from builder.engine import BuildError
    from builder.engine.build import BuildRequest, build
    with pytest.raises(BuildError) as e:
        build(BuildRequest(model="tiny", gpu="cpu", checkpoint=str(tiny_dense_checkpoint()),
                           output=str(tmp_path / "e"), cache_policy="off", progress=False))
    assert e.value.exit_code == 2            # what build-engine exits with
    assert "is not the tiny architecture" in str(e.value) and "mlp: checkpoint 'dense', tiny 'moe'" in str(e.value)
    assert not (tmp_path / "e").exists()


def test_20b_dense_still_plans_for_b200():
    r = subprocess.run([str(BIN / "build-engine"), "--model", "20b-dense", "--gpu", "b200", "--plan", "--json"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    p = json.loads(r.stdout)
    assert p["verdict"] == "runnable" and p["ep"] == 1 and p["quant"] == "nvfp4"
    # It says what TensorRT-LLM cannot build; a model TensorRT-LLM's gpt-oss builds gets no such line.
    assert any("cannot build {'mlp': 'dense'}" in r for r in p["reasons"])
    assert any("dense checkpoints only in the hf, hf-fp8 layouts (no dense hf-nvfp4): build with --quant bf16 or fp8"
               in r for r in p["reasons"])
    from builder.fit import plan
    assert not any("cannot build" in r for r in plan("20b", "b200").reasons)


def test_serve_engine_serves_the_dense_engine(engine, tmp_path):
    from deploy.client import LLMClient
    from deploy.server import free_port
    from tests.support.serving import assert_stopped_cleanly
    grpc, http, metrics = free_port(), free_port(), free_port()
    log = tmp_path / "server.log"
    cmd = [sys.executable, "-c", "import sys; from deploy.serve_cli import serve_main; sys.exit(serve_main())",
           str(engine), "--grpc-port", str(grpc), "--http-port", str(http), "--metrics-port", str(metrics),
           "--log-file", str(log)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if "serve-engine: ready" in line:
                break
        else:
            raise AssertionError("serve-engine never became ready:\n" + "".join(seen))
        rt = Runtime.from_dir(engine)
        text = "Once upon a time"
        ids = rt.encode(text)
        [ref] = rt.generate([ids], SamplingParams(max_tokens=6))
        r = LLMClient(f"127.0.0.1:{grpc}").generate(text, 6, raw=True, return_context_logits=True)
        assert r.output_ids == ref.output_ids
        # The served prompt logits against transformers' one-expert model, through Triton.
        assert rel_diff(torch.tensor(np.array(r.context_logits)), hf_logits(DENSE, ids)) < TOL
        chat = LLMClient(f"127.0.0.1:{grpc}").generate("hello", 5, stream=True, reasoning_effort="low")
        assert chat.num_output_tokens == 5
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert_stopped_cleanly(rc, log)


def test_a_new_size_is_one_registry_entry(monkeypatch, tmp_path):
    """An entry made from another with overrides is all a same-architecture size needs: it plans, reads back
    from its checkpoint by architecture, builds, and runs like transformers."""
    from builder.engine.build import BuildRequest, build
    from builder.fit import plan
    from checkpoint.config_io import read_model_config
    from spec.registry import MODELS
    wide = MODELS["tiny-dense"].with_overrides(name="tiny-dense-wide", num_layers=3, intermediate_size=384)
    monkeypatch.setitem(MODELS, "tiny-dense-wide", wide)
    assert plan("tiny-dense-wide", "h100").verdict == "runnable"
    ckpt = write_dense_checkpoint(wide, tmp_path / "ckpt", seed=5)
    assert read_model_config(ckpt)[0] == wide
    out = build(BuildRequest(model="tiny-dense-wide", gpu="cpu", checkpoint=str(ckpt), output=str(tmp_path / "e"),
                             cache_policy="off", progress=False))
    assert json.loads((out / MANIFEST_FILE).read_text())["model"] == "tiny-dense-wide"
    ids = _ids(40, seed=6)
    assert rel_diff(Runtime.from_dir(out).prompt_logits(ids), hf_logits(wide, ids, seed=5)) < TOL
