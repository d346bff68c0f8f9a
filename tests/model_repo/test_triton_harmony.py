"""Tokenizers (offline o200k_harmony, the engine's tokenizer.json), Harmony rendering and the channel decoder,
request validation. No server."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from model_repo import requests as rq
from model_repo.harmony import (
    HarmonyRequestError,
    HarmonyStreamDecoder,
    decode_completion,
    parse_history,
    render_chat,
    render_chat_tokens,
)
from model_repo.tokenizer import (
    O200K_SHA256,
    HFTokenizer,
    O200kHarmonyTokenizer,
    tiktoken_dir,
    choose_tokenizer,
    ensure_o200k,
)
from tests.support.serving import ASSETS


@pytest.fixture(scope="module")
def o200k():
    return O200kHarmonyTokenizer()


@pytest.fixture(scope="module")
def tiny_tok():
    return HFTokenizer(ASSETS / "tokenizer.json")


def test_o200k_vocabulary_is_offline_and_verified():
    d = ensure_o200k()
    assert d == tiktoken_dir()
    for f in (d / "o200k_base.tiktoken",
              d / hashlib.sha1(b"https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken").hexdigest()):
        assert hashlib.sha256(f.read_bytes()).hexdigest() == O200K_SHA256
    assert os.environ["TIKTOKEN_CACHE_DIR"] and os.environ["TIKTOKEN_ENCODINGS_BASE"]


def test_harmony_renders_a_user_turn_and_stops(o200k):
    from openai_harmony import Conversation, Message, Role

    from model_repo.harmony import harmony_encoding
    enc = harmony_encoding()
    ids = enc.render_conversation_for_completion(Conversation.from_messages(
        [Message.from_role_and_content(Role.USER, "What is 2+2?")]), Role.ASSISTANT)
    assert enc.decode_utf8(ids) == "<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant"
    assert o200k.encode("<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant") == list(ids)
    assert sorted(enc.stop_tokens_for_assistant_actions()) == [200002, 200012]
    assert o200k.stop_ids() == [200002, 200012]
    assert o200k.vocab_size == 201088


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_chat_rendering_carries_reasoning_effort(o200k, effort):
    text = o200k.decode(render_chat(o200k, "hi", effort, system_prompt="Be brief."))
    assert text.startswith("<|start|>system<|message|>")
    assert f"Reasoning: {effort}" in text
    assert "<|start|>developer<|message|># Instructions\n\nBe brief.<|end|>" in text
    assert text.endswith("<|start|>user<|message|>hi<|end|><|start|>assistant")


def test_chat_history_and_bad_requests(o200k):
    hist = parse_history('[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]')
    text = o200k.decode(render_chat(o200k, "c", "low", history=hist))
    assert text.endswith("<|start|>user<|message|>a<|end|><|start|>assistant<|channel|>final<|message|>b<|end|>"
                         "<|start|>user<|message|>c<|end|><|start|>assistant")
    with pytest.raises(HarmonyRequestError, match="reasoning_effort"):
        render_chat_tokens("x", "extreme")
    with pytest.raises(HarmonyRequestError, match="JSON"):
        parse_history("{not json")
    with pytest.raises(HarmonyRequestError, match="role"):
        render_chat_tokens("x", "low", history=[{"role": "system", "content": "y"}])


def test_engine_tokenizer_renders_the_same_conversation(o200k, tiny_tok):
    ids = render_chat(tiny_tok, "Hello there", "low")
    assert tiny_tok.decode(ids) == o200k.decode(render_chat(o200k, "Hello there", "low"))
    assert ids.count(tiny_tok.special_id("<|start|>")) == 3 and max(ids) < 4096
    assert tiny_tok.stop_ids() == [4094, 4095]


def test_tokenizer_choice(tmp_path):
    assert choose_tokenizer(ASSETS) == "tokenizer.json"
    (tmp_path / "config.json").write_text('{"vocab_size": 201088}', encoding="utf-8")
    assert choose_tokenizer(tmp_path) == "o200k_harmony"
    from spec.manifest import EngineManifest
    EngineManifest(model="120b", gpu="b200", quant="nvfp4", tp=1, ep=1, max_seq_len=4096, max_batch_size=8,
                   sm=100).write(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}", encoding="utf-8")
    assert choose_tokenizer(tmp_path) == "o200k_harmony"


def test_hf_token_bytes_agree_with_decode(tiny_tok):
    ids = tiny_tok.encode("Grüße, 世界! 🙂 <|start|>x")
    assert tiny_tok.decode(ids) == tiny_tok.tok.decode(ids, skip_special_tokens=False)


# -- the channel decoder --------------------------------------------------------------------------------------
COMPLETION = ("<|channel|>analysis<|message|>The user greets. Reply 🫠 kindly.<|end|>"
              "<|start|>assistant<|channel|>final<|message|>Hello — nice to meet you 🫠!<|return|>")


def _feed_one_by_one(tok, ids, raw=False):
    d = HarmonyStreamDecoder(tok, raw=raw)
    final, analysis = [], []
    for t in ids:
        out = d.feed([t])
        final.append(out.final)
        analysis.append(out.analysis)
    tail = d.finish()
    return "".join(final) + tail.final, "".join(analysis) + tail.analysis


@pytest.mark.parametrize("which", ["o200k", "tiny"])
def test_channels_streamed_equal_whole(which, o200k, tiny_tok):
    tok = o200k if which == "o200k" else tiny_tok
    ids = tok.encode(COMPLETION)
    whole = decode_completion(tok, ids)
    assert whole.final == "Hello — nice to meet you 🫠!"
    assert whole.analysis == "The user greets. Reply 🫠 kindly."
    assert _feed_one_by_one(tok, ids) == (whole.final, whole.analysis)


def test_decoder_agrees_with_openai_harmony_parser(o200k):
    from openai_harmony import Role, StreamableParser

    from model_repo.harmony import harmony_encoding
    ids = o200k.encode(COMPLETION)
    p = StreamableParser(harmony_encoding(), role=Role.ASSISTANT)
    by_channel: dict[str, str] = {}
    for t in ids:
        p.process(t)
        if p.last_content_delta:
            by_channel[p.current_channel] = by_channel.get(p.current_channel, "") + p.last_content_delta
    ours = decode_completion(o200k, ids)
    assert ours.channels == by_channel


def test_generation_without_a_header_is_final_text(tiny_tok):
    ids = tiny_tok.encode("just some words")
    out = decode_completion(tiny_tok, ids + [4094, 5, 6])
    assert out.final == "just some words" and out.analysis == ""
    # raw mode: every token's text, specials included
    assert decode_completion(tiny_tok, ids + [4090], raw=True).final == "just some words<|end|>"


def test_split_utf8_is_held_back_until_complete(o200k):
    ids = o200k.encode("🫠")
    assert len(ids) > 1, "the emoji must span several tokens for this test"
    d = HarmonyStreamDecoder(o200k, raw=True)
    parts = [d.feed([t]).final for t in ids]
    assert parts[:-1] == [""] * (len(ids) - 1) and parts[-1] == "🫠"


# -- request validation -------------------------------------------------------------------------------------------
def test_request_validation_messages():
    s = lambda v: np.array([[v]])  # noqa: E731
    with pytest.raises(rq.RequestError, match="^invalid argument: text_input is empty"):
        rq.text(np.array([[b"  "]], dtype=object), "text_input")
    with pytest.raises(rq.RequestError, match="not valid UTF-8"):
        rq.text(np.array([[b"\xc3\x28"]], dtype=object), "text_input")
    with pytest.raises(rq.RequestError, match="max_tokens must be > 0"):
        rq.output_length(s(0), 5, 100)
    with pytest.raises(rq.RequestError, match="beyond the context"):
        rq.output_length(s(96), 5, 100)
    assert rq.output_length(s(95), 5, 100) == 95
    with pytest.raises(rq.RequestError, match="longer than the engine allows"):
        rq.output_length(s(1), 100, 100)
    with pytest.raises(rq.RequestError, match="temperature"):
        rq.sampling(temperature=s(-0.5))
    with pytest.raises(rq.RequestError, match="temperature"):
        rq.sampling(temperature=s(float("nan")))
    with pytest.raises(rq.RequestError, match="top_p"):
        rq.sampling(top_p=s(0.0))
    with pytest.raises(rq.RequestError, match="top_k"):
        rq.sampling(top_k=s(-1))
    with pytest.raises(rq.RequestError, match="batch size 2"):
        rq.batch_size_one(np.array([[b"a"], [b"b"]], dtype=object), "text_input")
    with pytest.raises(rq.RequestError, match="beam_width"):
        rq.beam_width(s(4))
    with pytest.raises(rq.RequestError, match="outside"):
        rq.token_ids(np.array([[1, 5000]]), "input_ids", 1024)
    assert rq.sampling(temperature=s(0.7), top_p=s(0.9), top_k=s(5), seed=s(3)) == rq.Sampling(0.7, 0.9, 5, 3)


def test_stop_words_layout_round_trips():
    seqs = [[5], [7, 8, 9], [11, 12]]
    packed = rq.pack_stop_words(seqs)
    assert packed.tolist() == [[5, 7, 8, 9, 11, 12], [1, 4, 6, -1, -1, -1]]
    assert rq.unpack_stop_words(packed[None]) == seqs
    assert rq.unpack_stop_words(rq.pack_stop_words([])) == []
    stop = rq.StopCriteria.build([1022], None, seqs)
    assert stop.hit([3, 1022]) and stop.hit([1, 5]) and stop.hit([0, 7, 8, 9]) and not stop.hit([8, 9])
    assert rq.StopCriteria.build([1022], 4, []).tokens == {4}
