"""The OpenAI endpoint's limits against serve-engine --openai-port on the tiny engine (a real tritonserver behind
it): a prompt over GPTOSS_OPENAI_MAX_PROMPT_TOKENS is a 400 naming the limit, and tokenizing a large prompt runs off
the event loop, so /health keeps answering meanwhile."""

from __future__ import annotations

import threading
import time

import httpx

PROMPT_LIMIT = 100
SERVED = dict(max_batch_size=4, env={"GPTOSS_OPENAI_MAX_PROMPT_TOKENS": str(PROMPT_LIMIT)})


def _complete(served, prompt, timeout=60.0, **kw):
    return httpx.post(f"{served.base_url}/completions", timeout=timeout,
                      json={"model": "tiny", "prompt": prompt, "max_tokens": 2, "temperature": 0, **kw})


def _prompt_tokens(served, prompt) -> int:
    r = _complete(served, prompt, max_tokens=1)
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens"]


def test_a_prompt_over_the_token_limit_is_a_400_naming_it(served):
    short = "ROMEO: " * 5
    assert _prompt_tokens(served, short) < PROMPT_LIMIT            # negative control: under the limit is served
    long = "ROMEO: " * 200
    r = _complete(served, long)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "prompt_too_long" and err["type"] == "invalid_request_error" and err["param"] == "prompt"
    assert "GPTOSS_OPENAI_MAX_PROMPT_TOKENS" in err["message"] and f"limit of {PROMPT_LIMIT} tokens" in err["message"]
    # token-id prompts and chat messages are held to the same limit
    r = _complete(served, [1] * (PROMPT_LIMIT + 1))
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long"
    r = httpx.post(f"{served.base_url}/chat/completions", timeout=60,
                   json={"model": "tiny", "messages": [{"role": "user", "content": long}], "max_tokens": 2})
    assert r.status_code == 400 and r.json()["error"]["code"] == "prompt_too_long"
    assert r.json()["error"]["param"] == "messages"


def test_health_answers_while_a_2mb_prompt_is_tokenized(served):
    big = "ROMEO: wherefore art thou, good sir? " * (2 * 2**20 // 37)     # about 2 MB of text
    done = {}

    def send():
        t0 = time.monotonic()
        done["r"] = _complete(served, big, timeout=120)
        done["s"] = time.monotonic() - t0

    th = threading.Thread(target=send)
    worst = 0.0
    with httpx.Client(timeout=10) as h:
        th.start()
        time.sleep(0.05)
        while th.is_alive():
            t0 = time.monotonic()
            assert h.get(f"http://127.0.0.1:{served.port}/health").status_code == 200
            worst = max(worst, time.monotonic() - t0)
            time.sleep(0.02)
    th.join()
    print(f"2 MB prompt answered in {done['s']:.2f} s; slowest /health meanwhile {worst * 1000:.0f} ms")
    assert done["r"].status_code == 400 and done["r"].json()["error"]["code"] == "prompt_too_long"
    assert done["s"] > 0.3, "the prompt was answered too fast for /health to have been asked while it was tokenized"
    assert worst < 2.0
