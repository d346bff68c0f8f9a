"""The runtime's in-flight scheduler and the KV-cache row operations it stands on.

Oracle for the cache: one full prefill of the whole sequence in a fresh cache (Runtime.prompt_logits), which
tests/runtime/test_runtime.py checks against transformers. Prompts are longer than the model's window, so the sliding
layers' ring buffers wrap before rows are moved.
"""

from __future__ import annotations

import threading

import pytest
import torch

from runtime import SamplingParams
from runtime.scheduler import Request, Scheduler
from tests.support.runtime import CONFIGS, prompt

KEY = "odd"          # `rt`'s model (tests/runtime/conftest.py): window 5, one kv head: rings wrap within a few tokens


def _prefill(model, cache, seqs, first_row):
    T = max(map(len, seqs))
    ids = torch.zeros(len(seqs), T, dtype=torch.long)
    pos = torch.full((len(seqs), T), -1, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        pos[i, :len(s)] = torch.arange(len(s))
    return model.forward(ids, pos, cache, first_row=first_row)


def _decode(model, cache, tokens, positions, first_row=0):
    return model.forward(torch.tensor(tokens).view(-1, 1), torch.tensor(positions).view(-1, 1), cache,
                         first_row=first_row)


def test_rows_prefilled_in_place_moved_and_reset_decode_like_a_fresh_sequence(rt):
    model = rt.model
    a, b = prompt(KEY, 13, seed=1), prompt(KEY, 9, seed=2)
    nxt_a, nxt_b = 5, 11
    cache = model.new_cache(4, capacity=4)                      # full layers must grow on the way
    _prefill(model, cache, [a, b], first_row=2)                 # rows 2, 3 only; rows 0, 1 untouched
    cache.copy_rows_from(cache, [3, 2], [0, 1])                 # b -> row 0, a -> row 1
    cache.reset_rows([2, 3])
    got = _decode(model, cache, [nxt_b, nxt_a], [len(b), len(a)])
    want_b = rt.prompt_logits(b + [nxt_b])[-1]
    want_a = rt.prompt_logits(a + [nxt_a])[-1]
    torch.testing.assert_close(got[0], want_b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want_a, rtol=1e-5, atol=1e-5)
    # A row moved from a smaller cache into a bigger one (the full layers' capacities differ).
    small = model.new_cache(1, capacity=2)
    _prefill(model, small, [a], first_row=0)
    cache.copy_rows_from(small, [0], [3])
    got = _decode(model, cache, [nxt_a], [len(a)], first_row=3)
    torch.testing.assert_close(got[0], want_a, rtol=1e-5, atol=1e-5)
    # Negative control: a row whose positions were reset attends to nothing it had, and the logits change.
    cache.reset_rows([1])
    bad = _decode(model, cache, [nxt_a], [len(a)], first_row=1)
    assert not torch.allclose(bad[0], want_a, rtol=1e-3, atol=1e-3)


def test_bad_row_ranges_are_refused(rt):
    cache = rt.model.new_cache(2)
    with pytest.raises(ValueError, match="rows"):
        cache.begin(torch.zeros(2, 1, dtype=torch.long), first_row=1)
    with pytest.raises(ValueError, match="source rows"):
        cache.copy_rows_from(cache, [0], [0, 1])


class _Spy:
    """Records the batch size of every forward the model runs (the model itself runs unchanged)."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self._forward = model.forward

    def __enter__(self):
        def forward(ids, pos, cache, logits="last", first_row=0):
            self.calls.append((ids.shape[0], ids.shape[1], first_row))
            return self._forward(ids, pos, cache, logits=logits, first_row=first_row)
        self.model.forward = forward
        return self

    def __exit__(self, *exc):
        del self.model.forward


def _run(sched, reqs):
    done = threading.Event()
    left = [len(reqs)]

    def finish(tokens, reason, message):
        if reason is not None:
            left[0] -= 1
            if left[0] == 0:
                done.set()
    for r in reqs:
        r.emit = finish
        sched.submit(r)
    while sched.step():
        pass
    assert done.is_set()


def test_a_decode_step_computes_only_the_running_rows(rt):
    sched = Scheduler(rt.model, max_batch_size=16)
    with _Spy(rt.model) as spy:
        _run(sched, [Request("one", prompt(KEY, 7), SamplingParams(max_tokens=6, stop_token_ids=()))])
    decode = [c for c in spy.calls if c[1] == 1]
    assert len(decode) == 5 and {c[0] for c in decode} == {1}, spy.calls     # 16 rows, 1 computed
    # Three of different lengths: the batch shrinks as each one leaves.
    lengths = [2, 6, 4]
    reqs = [Request(f"r{i}", prompt(KEY, 8 + i, seed=i), SamplingParams(max_tokens=n, stop_token_ids=()))
            for i, n in enumerate(lengths)]
    with _Spy(rt.model) as spy:
        _run(sched, reqs)
    assert [c[0] for c in spy.calls if c[1] == 1] == [3, 2, 2, 1, 1]
    for i, (r, n) in enumerate(zip(reqs, lengths)):
        alone = rt.generate([r.prompt], SamplingParams(max_tokens=n, stop_token_ids=()))[0]
        assert r.output_ids == alone.output_ids and r.finish_reason == "length"


def test_sequences_leaving_mid_batch_keep_the_others_exact(rt):
    """Stops, lengths and a cancellation move rows around; every survivor equals its request alone."""
    sched = Scheduler(rt.model, max_batch_size=5)
    prompts = [prompt(KEY, 6 + 3 * i, seed=10 + i) for i in range(8)]
    free = [rt.generate([p], SamplingParams(max_tokens=10, stop_token_ids=()))[0].output_ids for p in prompts]
    reqs = []
    for i, p in enumerate(prompts):
        stops = (free[i][i % 4 + 1],) if i % 2 else ()
        reqs.append(Request(f"r{i}", p, SamplingParams(max_tokens=4 + i, stop_token_ids=stops)))
    cancelled = Request("gone", prompt(KEY, 12, seed=99), SamplingParams(max_tokens=50, stop_token_ids=()))
    for r in reqs[:4] + [cancelled]:
        sched.submit(r)
    sched.step()
    sched.step()
    sched.cancel("gone")
    for r in reqs[4:]:
        sched.submit(r)
    while sched.step():
        pass
    assert cancelled.finish_reason == "cancelled" and len(cancelled.output_ids) < 50
    for i, r in enumerate(reqs):
        want, reason = free[i][:4 + i], "length"
        if r.params.stop_token_ids:
            stop = r.params.stop_token_ids[0]
            want, reason = want[:want.index(stop) + 1], "stop"       # the stop token is one `free` makes
        assert r.output_ids == want and r.finish_reason == reason, f"request {i}"


def test_stop_sequences_and_a_bad_prompt(rt):
    p = prompt(KEY, 8, seed=3)
    free = rt.generate([p], SamplingParams(max_tokens=8, stop_token_ids=()))[0].output_ids
    seq = tuple(free[2:4])
    [r] = rt.generate([p], SamplingParams(max_tokens=8, stop_token_ids=(), stop_sequences=(seq,)))
    first = next(i for i in range(1, 8) if tuple(free[i - 1:i + 1]) == seq)
    assert r.output_ids == free[:first + 1] and r.finish_reason == "stop"
    # A request with an id outside the vocabulary fails alone; its neighbour in the same admission is served.
    sched = Scheduler(rt.model, max_batch_size=4)
    bad = Request("bad", [1, CONFIGS[KEY].vocab_size], SamplingParams(max_tokens=3))
    good = Request("good", p, SamplingParams(max_tokens=3, stop_token_ids=()))
    messages = []
    bad.emit = lambda t, reason, msg: reason and messages.append(msg)
    sched.submit(bad)
    sched.submit(good)
    while sched.step():
        pass
    assert bad.finish_reason == "error" and "outside" in messages[0]
    assert good.output_ids == free[:3] and good.finish_reason == "length"
