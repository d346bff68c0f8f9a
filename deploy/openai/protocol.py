"""uvicorn's h11 protocol with the two guards it lacks (measured on uvicorn 0.55 with raw sockets, issue #22):

- a request-head deadline. uvicorn arms its keep-alive timer only after a response, and any byte received cancels
  it, so a connection that sends nothing, or trickles a request head below the header-size bound, is held
  forever. Here every connection, and every keep-alive connection once its response is out, must deliver a
  complete request head within `head_timeout_s`; otherwise it gets a 408 in OpenAI's error shape (or, if it
  sent nothing at all, is just closed).
- the connection/task limit answered in OpenAI's JSON error shape (503, type service_unavailable, code
  overloaded) instead of uvicorn's plain-text "Service Unavailable". The limit keeps uvicorn's meaning: a request
  that arrives while `limit` connections are open or `limit` requests are running is refused.

    config = uvicorn.Config(app, http=guarded_h11(head_timeout_s=10, limit=1024), limit_concurrency=None, ...)
"""

from __future__ import annotations

import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from deploy.openai.errors import OpenAIError


def _raw_response(status: int, reason: bytes, err: OpenAIError) -> bytes:
    body = json.dumps(err.body()).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, reason, len(body))) + body


def overloaded(limit: int) -> OpenAIError:
    return OpenAIError(503, f"the server is at its connection limit ({limit} connections or requests, "
                            f"serve-engine --openai-limit-concurrency); retry shortly", "service_unavailable",
                       None, "overloaded")


def guarded_h11(head_timeout_s: float, limit: int | None):
    """An H11Protocol class for uvicorn.Config(http=...) with a request-head deadline and an OpenAI-shaped 503."""

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.limit_concurrency = None          # uvicorn's own check would answer in plain text; ours is below
            self._head_timer = None
            self._received_any = False
            inner = self.app

            async def limited(scope, receive, send):
                # uvicorn's test, made before it counts this request's task (which self.tasks holds by now); this
                # connection is in self.connections either way.
                if limit is not None and (len(self.connections) >= limit or len(self.tasks) - 1 >= limit):
                    err = overloaded(limit)
                    body = json.dumps(err.body()).encode()
                    await send({"type": "http.response.start", "status": 503,
                                "headers": [(b"content-type", b"application/json"),
                                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
                    await send({"type": "http.response.body", "body": body})
                    return
                await inner(scope, receive, send)

            self.app = limited

        # -- the request-head deadline ------------------------------------------------------------------------
        def _arm_head_timer(self) -> None:
            self._disarm_head_timer()
            self._received_any = False
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self._received_any:
                err = OpenAIError(408, f"the request head did not arrive within {head_timeout_s:g} s "
                                       f"(serve-engine --openai-header-timeout)", "invalid_request_error",
                                  None, "request_timeout")
                self.transport.write(_raw_response(408, b"Request Timeout", err))
            self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            self._received_any = self._received_any or bool(data)
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:       # a whole request head has been read
                self._disarm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_head_timer()                      # the next request's head has the same deadline
            elif not self.transport.is_closing() and self.conn.their_state is not h11.IDLE:
                self._disarm_head_timer()                   # a pipelined request was already read

        def connection_lost(self, exc) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol
