"""The runtime's generate loop, sampling, stop tokens, logprobs, streaming, and the run-engine CLI."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from runtime import SamplingParams
from runtime.sampling import filter_logits, sample
from tests.support.runtime import CONFIGS, hf_model, prompt

KEY = "odd"          # the random model of the `rt` fixture (tests/runtime/conftest.py)


def test_seeded_sampling_is_reproducible_and_batch_independent(rt):
    p = prompt(KEY, 9, seed=1)
    params = SamplingParams(max_tokens=12, temperature=1.3, seed=1234, stop_token_ids=())
    a = rt.generate([p], params)[0].output_ids
    assert rt.generate([p], params)[0].output_ids == a
    other = SamplingParams(max_tokens=5, temperature=0.9, seed=99, stop_token_ids=())
    in_batch = rt.generate([prompt(KEY, 20, seed=2), p], [other, params])[1].output_ids
    assert in_batch == a                                        # its own random stream, whatever the batch
    assert rt.generate([p], dataclasses.replace(params, seed=4321))[0].output_ids != a


def test_top_k_1_and_tiny_top_p_are_greedy(rt):
    p = prompt(KEY, 11, seed=3)
    greedy = rt.generate([p], SamplingParams(max_tokens=10, stop_token_ids=()))[0].output_ids
    for kw in (dict(top_k=1), dict(top_p=1e-6)):
        sampled = rt.generate([p], SamplingParams(max_tokens=10, temperature=2.0, seed=5, stop_token_ids=(), **kw))
        assert sampled[0].output_ids == greedy, kw


def test_top_k_keeps_sampling_inside_the_top_k(rt):
    r = rt.generate([prompt(KEY, 6, seed=4)], SamplingParams(max_tokens=30, temperature=5.0, top_k=3, seed=0,
                                                             stop_token_ids=(), return_logits=True))[0]
    for tok, logits in zip(r.output_ids, r.logits):
        assert tok in logits.topk(3).indices.tolist()


def test_filter_logits_top_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    keep = lambda p: torch.isfinite(filter_logits(logits, top_p=p)).tolist()  # noqa: E731
    assert keep(0.5) == [True, False, False, False]
    assert keep(0.7) == [True, True, False, False]
    assert keep(0.8) == [True, True, False, False]
    assert keep(0.81) == [True, True, True, False]
    assert keep(1.0) == [True] * 4
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [True, True, False, False]


def test_temperature_sampling_follows_the_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, 0.5]])
    params = [SamplingParams(temperature=0.7, seed=0)]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, params, [g]) for _ in range(4000)]).flatten()
    freq = torch.bincount(draws, minlength=5).float() / 4000
    assert torch.allclose(freq, torch.softmax(logits[0] / 0.7, -1), atol=0.03)


def test_stop_tokens_logprobs_and_streaming(rt):
    p = prompt(KEY, 7, seed=6)
    free = rt.generate([p], SamplingParams(max_tokens=12, stop_token_ids=(), logprobs=True, return_logits=True))[0]
    assert free.finish_reason == "length" and len(free.output_ids) == 12
    for tok, lp, logits in zip(free.output_ids, free.logprobs, free.logits):
        assert lp == pytest.approx(float(torch.log_softmax(logits, -1)[tok]), abs=1e-6)
    stop = free.output_ids[4]
    first = free.output_ids.index(stop)
    r = rt.generate([p], SamplingParams(max_tokens=12, stop_token_ids=(stop,)))[0]
    assert r.output_ids == free.output_ids[:first + 1] and r.finish_reason == "stop"
    # the default stop set is the network's eos_token_ids
    net = dataclasses.replace(rt.network, eos_token_ids=(stop,))
    model = rt.model
    old = model.network
    model.network = net
    try:
        r = rt.generate([p], SamplingParams(max_tokens=12))[0]
    finally:
        model.network = old
    assert r.output_ids == free.output_ids[:first + 1] and r.finish_reason == "stop"
    # streaming: one event per token, in order, the last one carrying the finish reason
    results = []
    events = list(rt.generate_stream([p, prompt(KEY, 3)], SamplingParams(max_tokens=4, stop_token_ids=()), results))
    assert [e.token_id for e in events if e.index == 0] == free.output_ids[:4]
    assert [e.finish_reason for e in events if e.index == 1] == [None, None, None, "length"]
    assert results[0].output_ids == free.output_ids[:4]


def test_bad_requests(rt):
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        rt.generate([[]])
    with pytest.raises(ValueError, match="outside"):
        rt.generate([[CONFIGS[KEY].vocab_size]])
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    r = rt.generate([[1, 2]], SamplingParams(max_tokens=0))[0]
    assert r.output_ids == [] and r.finish_reason == "length"
    assert rt.eos_token_ids == (7,)


# -- CLI ---------------------------------------------------------------------------------------------------
def _cli(argv, capsys):
    from runtime.cli import main
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_json_and_logits_out(rt, tmp_path, capsys):
    folder = hf_model(KEY)[1]
    ids = prompt(KEY, 13, seed=8)
    rc, out, _ = _cli([str(folder), "--input-ids", ",".join(map(str, ids)), "--max-tokens", "5",
                       "--logits-out", str(tmp_path / "l.npy"), "--json", "--executor", "reference"], capsys)
    assert rc == 0
    data = json.loads(out)
    expect = rt.generate([ids], SamplingParams(max_tokens=5))[0]
    assert data["output_ids"] == expect.output_ids and "text" not in data
    logits = np.load(tmp_path / "l.npy")
    assert logits.dtype == np.float32 and logits.shape == (13, CONFIGS[KEY].vocab_size)
    np.testing.assert_array_equal(logits, rt.prompt_logits(ids).numpy())


def test_cli_prompt_needs_a_tokenizer(capsys):
    rc, _, err = _cli([str(hf_model(KEY)[1]), "--prompt", "hello"], capsys)
    assert rc == 2 and "--prompt needs a tokenizer.json" in err


def test_cli_with_tokenizer_and_sampling(rt, tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = {f"w{i}": i for i in range(CONFIGS[KEY].vocab_size)}
    tok = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path / "with-tok"
    shutil.copytree(hf_model(KEY)[1], folder)
    tok.save(str(folder / "tokenizer.json"))
    rc, out, _ = _cli([str(folder), "--prompt", "w5 w17 w200 w3", "--max-tokens", "6", "--temperature", "0.8",
                       "--seed", "3", "--json"], capsys)
    assert rc == 0
    data = json.loads(out)
    expect = rt.generate([[5, 17, 200, 3]], SamplingParams(max_tokens=6, temperature=0.8, seed=3))[0]
    assert data["output_ids"] == expect.output_ids
    assert data["text"].split() == [f"w{i}" for i in expect.output_ids]


def test_cli_bad_dir(tmp_path, capsys):
    rc, _, err = _cli([str(tmp_path), "--input-ids", "1,2"], capsys)
    assert rc == 2 and "no checkpoint found" in err


def test_console_script_is_installed():
    exe = shutil.which("run-engine") or str(__import__("pathlib").Path(sys.executable).parent / "run-engine")
    r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--logits-out" in r.stdout


def test_cli_ignore_eos_decodes_past_the_end_token_and_reports_timing(rt, tmp_path, capsys):
    ids = prompt(KEY, 9, seed=4)
    free = rt.generate([ids], SamplingParams(max_tokens=8, stop_token_ids=()))[0].output_ids
    # An engine folder whose declared end token is the one the model makes 3rd (network.json wins over config).
    folder = tmp_path / "eos"
    shutil.copytree(hf_model(KEY)[1], folder)
    dataclasses.replace(rt.network, eos_token_ids=(free[2],)).save(folder / "network.json")
    argv = [str(folder), "--input-ids", ",".join(map(str, ids)), "--max-tokens", "8", "--json"]
    rc, out, _ = _cli(argv, capsys)
    stopped = json.loads(out)
    assert rc == 0 and stopped["finish_reason"] == "stop"
    assert stopped["output_ids"] == free[:free.index(free[2]) + 1]          # the negative control
    rc, out, _ = _cli(argv + ["--ignore-eos"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["output_ids"] == free and data["finish_reason"] == "length"
    t = data["timing"]
    assert t["prefill_s"] > 0 and t["decode_s"] > 0
    assert t["decode_tokens_per_s"] == pytest.approx(7 / t["decode_s"])
    # --stop-ids still stop with --ignore-eos
    rc, out, _ = _cli(argv + ["--ignore-eos", "--stop-ids", str(free[1])], capsys)
    assert json.loads(out)["output_ids"] == free[:free.index(free[1]) + 1]
