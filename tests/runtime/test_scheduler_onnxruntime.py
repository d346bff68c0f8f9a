"""The in-flight scheduler on the ONNX Runtime executor (what the served model runs on CPU) behaves as on the
reference runtime: batched prefill of right-padded rows of different lengths, many streams at once, and the
scheduler's rules (stop tokens, stop sequences, cancellation, logprobs, context logits).

Oracles: the same prompt alone on the same executor (one row, one call), and the torch reference runtime
(runtime.model, checked against transformers in tests/runtime/test_runtime.py) on the same engine in float32.
Negative control: a row whose positions are misaligned with its tokens (shifted by one) gives other logits, so the
agreement below is not one any padding would reach.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runtime import SamplingParams
from runtime.scheduler import Request, Scheduler
from tests.support.serving import make_tiny_engine

TOL = 2e-4          # fp32 ORT vs fp32 torch, and a row alone vs the same row in a batch (other GEMM shapes)


@pytest.fixture(scope="module")
def runtimes(tmp_path_factory):
    from runtime.executors import load_runtime
    engine = make_tiny_engine(tmp_path_factory.mktemp("engine") / "tiny", max_seq_len=512, max_batch_size=64)
    ort = load_runtime(engine, "onnxruntime", log=lambda line: None)
    ref = load_runtime(engine, "reference", dtype=torch.float32, log=lambda line: None)
    yield ort, ref
    ort.model.close()


def _prompts(n, vocab, seed=0, lo=3, hi=40):
    g = np.random.default_rng(seed)
    return [g.integers(0, vocab, int(g.integers(lo, hi))).tolist() for _ in range(n)]


def _padded(seqs, shift=0):
    T = max(map(len, seqs))
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    pos = torch.full((len(seqs), T), -1, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        pos[i, :len(s)] = torch.arange(len(s)) + shift
    return ids, pos


def _prefill_all(model, seqs, rows=64, first_row=0, shift=0):
    cache = model.new_cache(rows)
    ids, pos = _padded(seqs, shift)
    return model.forward(ids, pos, cache, logits="all", first_row=first_row)


def test_batched_prefill_of_right_padded_rows_equals_each_row_alone_and_the_reference(runtimes):
    ort, ref = runtimes
    seqs = _prompts(8, ort.network.vocab_size, seed=1)
    batch = _prefill_all(ort.model, seqs, first_row=5)             # one ORT call over rows [5, 13) of 64
    for i, s in enumerate(seqs):
        alone = _prefill_all(ort.model, [s], rows=1)[0]
        want = ref.prompt_logits(s)
        got = batch[i, :len(s)]
        assert torch.allclose(got, alone, atol=TOL, rtol=0), f"row {i}: {(got - alone).abs().max()}"
        assert torch.allclose(got, want, atol=TOL, rtol=0), f"row {i} vs reference: {(got - want).abs().max()}"
    # Negative control: the same tokens at positions shifted by one (rotary phases and cache slots misaligned).
    shifted = _prefill_all(ort.model, seqs, shift=1)
    assert (shifted[0, :len(seqs[0])] - batch[0, :len(seqs[0])]).abs().max() > 100 * TOL


def test_64_concurrent_greedy_streams_each_equal_their_solo_answer(runtimes):
    """64 streams admitted over several steps (so prefills of new rows interleave with decodes and rows move as
    requests of different lengths leave) through one Scheduler on ONNX Runtime; each equals its prompt alone."""
    ort, ref = runtimes
    seqs = _prompts(64, ort.network.vocab_size, seed=2)
    lengths = [4 + (7 * i) % 13 for i in range(64)]
    solo = [ort.generate([s], SamplingParams(max_tokens=n, stop_token_ids=()))[0].output_ids
            for s, n in zip(seqs, lengths)]
    sched = Scheduler(ort.model, max_batch_size=64)
    reqs = [Request(f"r{i}", s, SamplingParams(max_tokens=n, stop_token_ids=())) for i, (s, n) in
            enumerate(zip(seqs, lengths))]
    for wave in range(4):
        for r in reqs[wave * 16:(wave + 1) * 16]:
            sched.submit(r)
        sched.step()
        sched.step()
    while sched.step():
        pass
    assert sched.max_active > 32
    for i, r in enumerate(reqs):
        assert r.output_ids == solo[i] and r.finish_reason == "length", f"stream {i}"
    # The solo answers themselves are the reference runtime's (first streams; greedy on fp32 both).
    for s, n, want in list(zip(seqs, lengths, solo))[:4]:
        assert ref.generate([s], SamplingParams(max_tokens=n, stop_token_ids=()))[0].output_ids == want


def _scheduled(rt, prompts):
    """The scheduler's rules on one runtime: a stop token, a stop sequence, logprobs, context logits, a
    cancellation mid-stream and max_tokens=0, in one batch."""
    free = rt.generate([prompts[0]], SamplingParams(max_tokens=12, stop_token_ids=()))[0].output_ids
    params = [SamplingParams(max_tokens=12, stop_token_ids=(free[5],)),
              SamplingParams(max_tokens=12, stop_token_ids=(), stop_sequences=(tuple(free[3:5]),)),
              SamplingParams(max_tokens=6, stop_token_ids=(), logprobs=True, prompt_logits=True),
              SamplingParams(max_tokens=200, stop_token_ids=()),
              SamplingParams(max_tokens=0, stop_token_ids=(), prompt_logits=True)]
    reqs = [Request(f"r{i}", prompts[0] if i < 2 else prompts[i], p) for i, p in enumerate(params)]
    sched = Scheduler(rt.model, max_batch_size=4)
    for r in reqs:
        sched.submit(r)
    for _ in range(4):
        sched.step()
    sched.cancel("r3")
    while sched.step():
        pass
    return free, reqs


def test_stop_rules_cancellation_logprobs_and_context_logits_match_the_reference_executor(runtimes):
    ort, ref = runtimes
    prompts = _prompts(5, ort.network.vocab_size, seed=3, lo=10, hi=30)
    free_o, got = _scheduled(ort, prompts)
    free_r, want = _scheduled(ref, prompts)
    assert free_o == free_r
    for g, w in zip(got, want):
        assert (g.output_ids, g.finish_reason) == (w.output_ids, w.finish_reason), g.request_id
    assert got[0].finish_reason == "stop" and got[0].output_ids[-1] == free_o[5]
    assert got[1].finish_reason == "stop" and tuple(got[1].output_ids[-2:]) == tuple(free_o[3:5])
    assert got[3].finish_reason == "cancelled" and 0 < len(got[3].output_ids) < 200
    assert got[4].finish_reason == "length" and got[4].output_ids == []
    assert len(got[2].log_probs) == 6
    assert np.allclose(got[2].log_probs, want[2].log_probs, atol=TOL, rtol=0)
    for i in (2, 4):
        assert got[i].context_logits.shape == (len(prompts[i]), ort.network.vocab_size)
        assert torch.allclose(got[i].context_logits, want[i].context_logits, atol=TOL, rtol=0)
