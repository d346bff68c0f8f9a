"""`serve-engine`: start a real tritonserver on an engine directory (or a Triton model repository).

    serve-engine ENGINE_DIR [--grpc-port 8001] [--http-port 8000] [--metrics-port 8002] [--host 127.0.0.1]
                 [--executor auto|onnxruntime|reference|tensorrt|trtllm] [--log-file F] [--chat "message"]
                 [--openai-port P [--served-model-name NAME]]   (an OpenAI-compatible endpoint in front of Triton)
                 [--max-restarts N]

A model whose backend process dies (deploy/watchdog.py) fails loudly: requests in flight end with an error naming
the model, readiness turns false, and the server is restarted, at most --max-restarts times (default 3), after
which serve-engine exits with status 3.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from deploy.client import ClientError, LLMClient
from deploy.watchdog import EXIT_STATUS_AFTER_RESTARTS, POLL_S as WATCH_POLL_S, StubWatchdog
from spec.manifest import MANIFEST_FILE

# Triton's --exit-timeout-secs counts the drain and the models' unload together. The Python stubs take ~1 s to
# exit on a quiet 2-core machine and 4.5 s under load (measured: 3 busy processes beside it); past the timeout
# Triton gives up and exits 1. The headroom only costs time when unloading is slow.
UNLOAD_HEADROOM_S = 5
# After a stub died: how long the front model gets to end its requests with the error before the server is killed.
CRASH_GRACE_S = 0.3


# -- serve-engine ------------------------------------------------------------------------------------------
def _is_model_repo(d: Path) -> bool:
    return d.is_dir() and any(p.name == "config.pbtxt" for p in d.glob("*/config.pbtxt"))


def resolve_repository(target: Path, executor: str | None, tmpdir: Path) -> tuple[Path, str]:
    """ENGINE_DIR (with triton/ inside, or engine.json only) or a model repository -> (repository, how)."""
    from model_repo.write import write_model_repo
    if _is_model_repo(target) and not (target / MANIFEST_FILE).is_file():
        if executor:
            raise SystemExit("serve-engine: --executor applies to engine directories, not to a model repository")
        return target, "model repository"
    if not (target / MANIFEST_FILE).is_file():
        raise SystemExit(f"serve-engine: {target}: neither an engine directory ({MANIFEST_FILE}) nor a model repository")
    # Before any server starts: the manifest must be one we read, and the engine's target must fit this machine.
    from model_repo.backends import resolve_executor
    choice = resolve_executor(target, executor or "auto")
    print(f"serve-engine: {choice.line()}", flush=True)
    if (target / "triton").is_dir() and _is_model_repo(target / "triton") and not executor:
        from model_repo.integrity import verify_repo
        from spec.manifest import EngineManifest
        recorded = EngineManifest.read(target).triton_sha256
        if recorded is not None:
            verify_repo(target, recorded)     # IntegrityError: extra, missing or edited files, links
            print(f"serve-engine: triton/ verified: its {len(recorded)} files are the ones engine.json recorded",
                  flush=True)
            return target / "triton", "the engine's triton/ repository"
        # An engine built before hashes were recorded: serve a repository written afresh from its manifest
        # rather than code nobody vouched for.
    repo = write_model_repo(target, tmpdir / "triton", executor=executor or "auto")
    return repo, "a repository written for this run"


SERVED_ORDER = ("tensorrt_llm_bls", "ensemble", "preprocessing", "tensorrt_llm", "postprocessing")


def served_models(repo: Path) -> list[str]:
    """The models of a repository, the front model first (what the readiness line names)."""
    present = sorted(p.parent.name for p in repo.glob("*/config.pbtxt"))
    return [m for m in SERVED_ORDER if m in present] + [m for m in present if m not in SERVED_ORDER]


def serve_main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serve-engine", description="Serve an engine directory with a real Triton "
                                "Inference Server (nvidia-pytriton's tritonserver on CPU machines, the system one in "
                                "NVIDIA's Triton containers). Stops cleanly on Ctrl-C / SIGTERM.")
    p.add_argument("engine_dir", help="engine directory (uses its triton/ repository, or writes one) or a "
                                      "Triton model repository")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; 0.0.0.0 for all)")
    from model_repo.write import EXECUTORS
    p.add_argument("--executor", choices=EXECUTORS,
                   help="write a fresh repository whose tensorrt_llm model runs this executor instead of using "
                        "triton/ (runtime/executors/choice.py, run-engine's rule; auto: the TensorRT-RTX plan on "
                        "an RTX GPU of the engine's SM, TensorRT-LLM on datacenter GPUs, ONNX Runtime on CPU where "
                        "it runs the engine exactly within memory for max_seq_len, else reference); the choice "
                        "and its reason are printed")
    p.add_argument("--log-file", help="tritonserver output goes here instead of the terminal")
    p.add_argument("--log-verbose", type=int, default=0)
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the models to load")
    p.add_argument("--drain-timeout", type=int, default=3,
                   help="on SIGINT/SIGTERM, seconds requests in flight may still run before they end with a "
                        "'server is shutting down' error (default 3)")
    p.add_argument("--chat", metavar="MESSAGE",
                   help="demo: once ready, stream one chat answer to MESSAGE over gRPC, then stop the server")
    p.add_argument("--max-tokens", type=int, default=64, help="with --chat")
    p.add_argument("--openai-port", type=int, metavar="P",
                   help="also serve an OpenAI-compatible API (/v1/models, /v1/chat/completions, /v1/completions, "
                        "/metrics) on this port, same --host; it answers 503 until the model is loaded")
    p.add_argument("--openai-keep-alive-timeout", type=int, default=5, metavar="S",
                   help="with --openai-port: close a keep-alive connection idle this many seconds (default 5)")
    p.add_argument("--openai-body-timeout", type=float, default=30.0, metavar="S",
                   help="with --openai-port: a request whose body has not all arrived within S seconds gets a 408 "
                        "and its connection is closed (a client that stalls after its headers; default 30)")
    p.add_argument("--openai-limit-concurrency", type=int, default=1024, metavar="N",
                   help="with --openai-port: past N open connections or requests, new ones get a 503 (default 1024)")
    p.add_argument("--openai-max-header-bytes", type=int, default=16384, metavar="B",
                   help="with --openai-port: a request head still incomplete past B bytes (a client trickling headers) "
                        "gets a 400 and its connection is closed (default 16384)")
    p.add_argument("--openai-header-timeout", type=float, default=10.0, metavar="S",
                   help="with --openai-port: a connection whose request head is not complete within S seconds of "
                        "opening (or of its previous response) gets a 408 and is closed; one that sent nothing is "
                        "closed (a client that connects and stalls, or trickles its headers; default 10)")
    p.add_argument("--max-restarts", type=int, default=3,
                   help="when a model's backend process dies (SIGKILL, SIGSEGV, ...): requests in flight end at once "
                        "with an error naming the model, readiness (/v2/health/ready, the OpenAI /health) turns "
                        "false, and tritonserver is restarted, at most this many times (default 3; each is logged); "
                        "after that serve-engine exits with status 3")
    p.add_argument("--served-model-name", help="the model name the OpenAI API answers to (default: the engine's "
                                               "model, e.g. gpt-oss-20b)")
    args = p.parse_args(argv)

    from deploy.server import ServerError, TritonServer
    target = Path(args.engine_dir)
    stop = threading.Event()
    received = []

    def on_signal(signum, _frame):
        received.append(signum)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    with tempfile.TemporaryDirectory(prefix="serve-engine-") as tmp:
        try:
            repo, how = resolve_repository(target, args.executor, Path(tmp))
        except Exception as e:  # noqa: BLE001
            print(f"serve-engine: error: {e}", file=sys.stderr)
            return 2
        print(f"serve-engine: {how}: {repo}", flush=True)
        models = served_models(repo)
        if "tensorrt_llm_bls" not in models:
            from model_repo.write import NO_TOKENIZER_NOTE
            print(f"serve-engine: note: {NO_TOKENIZER_NOTE}", flush=True)
            for flag, needs in (("--openai-port", args.openai_port is not None), ("--chat", args.chat is not None)):
                if needs:
                    print(f"serve-engine: error: {flag} needs the text models (tensorrt_llm_bls), which this "
                          f"repository does not have: {NO_TOKENIZER_NOTE}; fix: send input_ids to tensorrt_llm over "
                          f"gRPC, or rebuild the engine from a checkpoint with its tokenizer.json", file=sys.stderr)
                    return 2
        def new_server():
            return TritonServer(repo, host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
                                metrics_port=args.metrics_port, log_verbose=args.log_verbose, log_file=args.log_file,
                                exit_timeout_s=max(0, args.drain_timeout) + UNLOAD_HEADROOM_S)
        try:
            srv = new_server()
        except ServerError as e:
            print(f"serve-engine: error: {e}", file=sys.stderr)
            return 2
        print(f"serve-engine: starting {srv.binary}", flush=True)
        rc = 0
        openai = None
        try:
            if args.openai_port is not None:
                from deploy.openai.serve import OpenAIServer
                try:
                    from deploy.openai.serve import HttpLimits
                    limits = HttpLimits(keep_alive_s=args.openai_keep_alive_timeout,
                                        body_timeout_s=args.openai_body_timeout,
                                        max_concurrency=args.openai_limit_concurrency,
                                        max_header_bytes=args.openai_max_header_bytes,
                                        header_timeout_s=args.openai_header_timeout)
                    openai = OpenAIServer(repo, srv.grpc_url, host=args.host, port=args.openai_port,
                                          model_name=args.served_model_name, limits=limits).start()
                except Exception as e:  # noqa: BLE001
                    print(f"serve-engine: error: {e}", file=sys.stderr)
                    return 2
                print(f"serve-engine: openai {openai.url} (model {openai.model.name!r}; 503 until loaded)",
                      flush=True)
            try:
                srv.launch()            # in this thread: the server is tied to it (see TritonServer.launch)
            except ServerError as e:
                print(f"serve-engine: error: {e}", file=sys.stderr)
                return 2
            start_error: list[Exception] = []
            starter = threading.Thread(target=_start, args=(srv, args.ready_timeout, start_error), daemon=True)
            starter.start()
            while starter.is_alive() and not stop.is_set():
                starter.join(0.2)
            if stop.is_set():
                print("serve-engine: stopping before ready", flush=True)
                return 130
            if start_error:
                print(f"serve-engine: error: {start_error[0]}", file=sys.stderr)
                return 1
            print(f"serve-engine: ready  grpc {srv.grpc_url}  http {srv.http_url}  metrics {srv.metrics_url}  "
                  f"(models: {', '.join(models)})", flush=True)
            if args.chat is not None:
                return _demo_chat(srv.grpc_url, args.chat, args.max_tokens)
            restarts = 0
            dog = StubWatchdog(srv.proc.pid)
            dog.arm()
            while not stop.wait(WATCH_POLL_S):
                if not srv.alive():
                    rc = srv.proc.returncode or 1
                    print(f"serve-engine: tritonserver exited with status {rc}", file=sys.stderr)
                    return rc
                gone = dog.dead()
                if gone is None:
                    continue
                message = gone.message()
                print(f"serve-engine: error: {message}", file=sys.stderr, flush=True)
                _fail_in_flight(srv, openai, message)
                if restarts >= args.max_restarts:
                    print(f"serve-engine: error: {restarts} restart(s) spent (--max-restarts {args.max_restarts}); "
                          f"exiting with status {EXIT_STATUS_AFTER_RESTARTS}", file=sys.stderr, flush=True)
                    return EXIT_STATUS_AFTER_RESTARTS
                restarts += 1
                print(f"serve-engine: restarting tritonserver ({restarts} of {args.max_restarts})", flush=True)
                srv.stop()
                srv = new_server()
                try:
                    srv.launch()
                    srv.wait_ready(args.ready_timeout)
                except ServerError as e:
                    print(f"serve-engine: error: restart failed: {e}", file=sys.stderr)
                    return 1
                if openai is not None:
                    openai.mark_up()
                dog = StubWatchdog(srv.proc.pid)
                dog.arm()
                print(f"serve-engine: ready again after restart {restarts}", flush=True)
            print("serve-engine: stopping", flush=True)
            return 0
        finally:
            if openai is not None:
                openai.stop()
            code = srv.stop()
            why = f" on {signal.Signals(received[0]).name}" if received else ""
            print(f"serve-engine: stopped{why} (tritonserver status {code})", flush=True)
            for s, h in old.items():
                signal.signal(s, h)
            if srv.killed:
                print(f"serve-engine: error: tritonserver did not stop within {srv.exit_timeout_s + 15} s and was "
                      f"killed (SIGKILL); see {args.log_file or 'its log'}", file=sys.stderr, flush=True)
                return 1


def _fail_in_flight(srv, openai, message: str) -> None:
    """A model's stub died: requests waiting on it end with `message` (the front model reads the crash file; the
    OpenAI endpoint is told), then the server goes (its readiness with it)."""
    import time
    try:
        srv.crash_file.write_text(message + "\n", encoding="utf-8")
    except (OSError, AttributeError):
        pass
    if openai is not None:
        openai.mark_down(message)
    time.sleep(CRASH_GRACE_S)
    srv.kill()


def _start(srv, timeout, errors):
    try:
        srv.wait_ready(timeout)
    except Exception as e:  # noqa: BLE001
        errors.append(e)


def _demo_chat(url: str, message: str, max_tokens: int) -> int:
    client = LLMClient(url)
    print(f"> {message}", flush=True)
    try:
        res = client.generate(message, max_tokens, stream=True, reasoning_effort="low",
                              on_chunk=lambda c: print(c.text, end="", flush=True))
    except ClientError as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    print(f"\n[{res.num_output_tokens} tokens, {res.finish_reason}; first token after "
          f"{res.time_to_first_chunk_s:.3f} s, {res.total_s:.3f} s in all]", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve_main())
