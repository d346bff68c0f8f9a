"""Run the endpoint next to a Triton server: what it serves is read from the served model repository (the
`tensorrt_llm` model's engine_dir, engine_model and max_seq_len parameters, the front model's tokenizer), and uvicorn
runs in a background thread so serve-engine keeps its own signal handling.

    srv = OpenAIServer(repo, grpc_url="127.0.0.1:8001", port=9000).start()   # answers 503 until Triton is ready
    ...
    srv.stop()
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

PARAM = re.compile(r'parameters\s*\{\s*key:\s*"([^"]+)"\s*value:\s*\{\s*string_value:\s*"((?:[^"\\]|\\.)*)"\s*\}\s*\}')


class OpenAIServeError(RuntimeError):
    pass


@dataclass(frozen=True)
class HttpLimits:
    """What one connection may cost (serve-engine --openai-* flags). uvicorn's keep-alive timer only runs between
    requests, so the request body has its own deadline (read in deploy/openai/app.py)."""
    keep_alive_s: int = 5                      # an idle keep-alive connection is closed after this
    body_timeout_s: float = 30.0               # a request whose body has not all arrived by then: 408, closed
    max_concurrency: int = 1024                # connections or tasks past this: uvicorn answers 503
    max_header_bytes: int = 16 * 1024          # h11's bound on a request head still incomplete: past it, 400, closed
    header_timeout_s: float = 10.0             # a connection whose request head is not complete by then: 408, closed


def pbtxt_params(config: Path) -> dict[str, str]:
    if not config.is_file():
        raise OpenAIServeError(f"{config}: missing; is {config.parent.parent} one of our model repositories?")
    text = config.read_text(encoding="utf-8")
    return {k: v.encode().decode("unicode_escape") if "\\" in v else v for k, v in PARAM.findall(text)}


def served_model(repo: str | Path, name: str | None = None):
    """The ServedModel of a repository written by model_repo (write-model-repo / serve-engine)."""
    from deploy.openai.app import ServedModel
    from model_repo.tokenizer import load_tokenizer
    repo = Path(repo).resolve()
    llm = pbtxt_params(repo / "tensorrt_llm" / "config.pbtxt")
    front = pbtxt_params(repo / "tensorrt_llm_bls" / "config.pbtxt")
    engine_dir = Path(llm.get("engine_dir", ""))
    if not engine_dir.is_absolute():
        engine_dir = (repo / engine_dir).resolve()
    try:
        max_seq_len = int(llm["max_seq_len"])
    except (KeyError, ValueError):
        raise OpenAIServeError(f"{repo}/tensorrt_llm/config.pbtxt: no max_seq_len parameter") from None
    tokenizer = load_tokenizer(engine_dir, front.get("tokenizer") or "auto")
    return ServedModel(name=name or llm.get("engine_model") or engine_dir.name, tokenizer=tokenizer,
                       max_seq_len=max_seq_len)


class OpenAIServer:
    def __init__(self, repo: str | Path, grpc_url: str, *, host: str = "127.0.0.1", port: int = 9000,
                 model_name: str | None = None, log_level: str = "warning",
                 limits: HttpLimits = HttpLimits()):
        self.model = served_model(repo, model_name)
        self.grpc_url = grpc_url
        self.host = host
        self.port = port
        self.log_level = log_level
        self.limits = limits
        self._server = None
        self._thread: threading.Thread | None = None
        self.triton = None             # the TritonStream, once started

    def mark_down(self, message: str) -> None:
        """The model's backend died (serve-engine's watchdog): /health 503, requests end with `message`."""
        if self.triton is not None:
            self.triton.mark_down(message)

    def mark_up(self) -> None:
        if self.triton is not None:
            self.triton.mark_up()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self, timeout_s: float = 30.0) -> "OpenAIServer":
        import uvicorn
        from deploy.openai.app import create_app
        from deploy.openai.triton_stream import TritonStream
        self.triton = TritonStream(self.grpc_url)
        lim = self.limits
        app = create_app(self.model, self.triton, body_timeout_s=lim.body_timeout_s)
        from deploy.openai.protocol import guarded_h11
        # h11 (not httptools): h11_max_incomplete_event_size only bounds h11; guarded_h11 adds the request-head
        # deadline uvicorn lacks and answers the connection limit in OpenAI's JSON (deploy/openai/protocol.py).
        config = uvicorn.Config(app, host=self.host, port=self.port, log_level=self.log_level, access_log=False,
                                lifespan="on", timeout_graceful_shutdown=5,
                                http=guarded_h11(lim.header_timeout_s, lim.max_concurrency),
                                timeout_keep_alive=lim.keep_alive_s, limit_concurrency=None,
                                h11_max_incomplete_event_size=lim.max_header_bytes)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="openai-endpoint", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise OpenAIServeError(f"the OpenAI endpoint could not start on {self.host}:{self.port} "
                                       f"(port in use?)")
            if time.monotonic() > deadline:
                raise OpenAIServeError(f"the OpenAI endpoint did not start within {timeout_s:.0f} s")
            time.sleep(0.05)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(5)
        self._server = self._thread = None

