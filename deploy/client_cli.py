"""`gptoss-client`: talk to a served engine over Triton gRPC (generate / chat).

    gptoss-client generate "prompt" [--url 127.0.0.1:8001] [--max-tokens N] [--no-stream] [--temperature T] ...
    gptoss-client chat ["message"]      (no message: an interactive chat on stdin)
"""

from __future__ import annotations

import argparse
import json
import sys

from deploy.client import DEFAULT_MODEL, ClientError, InvalidRequestError, LLMClient, ServerUnavailableError


# -- gptoss-client --------------------------------------------------------------------------------------------
def _client_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="127.0.0.1:8001", help="Triton gRPC address (default 127.0.0.1:8001)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"front model (default {DEFAULT_MODEL}; or ensemble)")
    p.add_argument("--max-tokens", type=int, default=256)
    p.add_argument("--no-stream", action="store_true", help="wait for the whole answer instead of streaming")
    p.add_argument("--temperature", type=float, help="0 or unset: greedy")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", default=[], help="stop word (repeatable)")
    p.add_argument("--reasoning-effort", choices=["low", "medium", "high"])
    p.add_argument("--system", help="developer instructions (Harmony developer message)")
    p.add_argument("--show-reasoning", action="store_true", help="also print the analysis channel (to stderr)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds for a whole answer")
    p.add_argument("--retries", type=int, default=3, help="attempts on UNAVAILABLE before giving up")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--wait-ready", type=float, default=0.0, metavar="SECONDS",
                   help="first wait up to SECONDS for the server and model to be ready (e.g. right after serve-engine &)")


def _sampling(args) -> dict:
    return dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                stop_words=args.stop or None, reasoning_effort=args.reasoning_effort, system_prompt=args.system)


def _answer(client: LLMClient, args, message: str, history=None, raw: bool = False):
    stream = not args.no_stream and not args.json

    def show(c):
        if args.show_reasoning and c.analysis:
            print(c.analysis, end="", file=sys.stderr, flush=True)
        print(c.text, end="", flush=True)

    res = client.generate(message, args.max_tokens, stream=stream, timeout_s=args.timeout, history=history, raw=raw,
                          on_chunk=show if stream else None, **_sampling(args))
    if args.json:
        print(json.dumps({"text": res.text, "analysis": res.analysis, "finish_reason": res.finish_reason,
                          "num_input_tokens": res.num_input_tokens, "num_output_tokens": res.num_output_tokens,
                          "total_s": round(res.total_s, 4)}, ensure_ascii=False))
    else:
        if not stream:
            if args.show_reasoning and res.analysis:
                print(res.analysis, file=sys.stderr)
            print(res.text, end="")
        print(flush=True)
    return res


def client_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gptoss-client", description="Talk to a served gpt-oss engine over Triton gRPC.")
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="one answer to one prompt (streamed by default)")
    g.add_argument("prompt")
    g.add_argument("--raw", action="store_true", help="send the prompt as is, without Harmony chat rendering")
    _client_args(g)
    c = sub.add_parser("chat", help="chat (Harmony); with no message, an interactive session on stdin")
    c.add_argument("message", nargs="?")
    _client_args(c)
    args = p.parse_args(argv)

    client = LLMClient(args.url, args.model, timeout_s=args.timeout, retries=args.retries)
    try:
        if args.wait_ready > 0:
            client.wait_ready(args.wait_ready)
        if args.cmd == "generate":
            _answer(client, args, args.prompt, raw=args.raw)
            return 0
        if args.message is not None:
            _answer(client, args, args.message)
            return 0
        history: list[dict] = []
        interactive = sys.stdin.isatty()
        while True:
            if interactive:
                print("you> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                return 0
            line = line.strip()
            if not line:
                continue
            if interactive:
                print("assistant> ", end="", flush=True)
            res = _answer(client, args, line, history=history)
            history += [{"role": "user", "content": line}, {"role": "assistant", "content": res.text}]
    except InvalidRequestError as e:
        print(f"gptoss-client: the server refused the request: {e}", file=sys.stderr)
        return 2
    except ServerUnavailableError as e:
        print(f"gptoss-client: server unavailable at {args.url} after {args.retries + 1} attempts: {e}",
              file=sys.stderr)
        return 3
    except ClientError as e:
        print(f"gptoss-client: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(client_main())
