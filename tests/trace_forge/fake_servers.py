"""Loopback fakes of the OpenAI Chat Completions and Anthropic Messages HTTP APIs, for tests and benchmarks.

Each fake is a stdlib ``ThreadingHTTPServer`` on ``127.0.0.1`` and a free port, started and stopped as a context
manager, that the real ``openai`` / ``anthropic`` SDK clients talk to::

    with FakeOpenAIServer(latency_s=0.05, faults=[rate_limited(0.2)]) as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        ...
    assert server.request_count == 2

Knobs: a fixed latency per request; a server-side concurrency cap (requests beyond it queue, like a GPU server at
its batch limit); ``faults``, replies used by the first requests in order; ``script``, a callable that may return a
reply for any request (None: answer normally); ``reply_text`` for the text of each sample. A reply may come in chunked
transfer encoding, or be followed by the server closing the connection unannounced (as an idle keep-alive timeout
does). The server records every request (body, headers, images sent), how many arrived, the most that were in flight
at once, and how many connections were opened.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

__all__ = [
    "Reply",
    "Request",
    "FakeOpenAIServer",
    "FakeAnthropicServer",
    "rate_limited",
    "server_error",
    "hang",
    "malformed",
    "dropped",
    "too_long",
    "openai_no_text",
]


@dataclass(frozen=True)
class Reply:
    """What the server answers to one request.

    Attributes:
        status: HTTP status.
        body: JSON object or raw bytes; None for the server's normal reply to the request.
        headers: extra response headers (e.g. ``Retry-After``).
        hang_s: wait this long before answering (until the server stops, at most).
        drop: close the connection without answering (a connection reset).
        chunked: send the body in chunked transfer encoding (two chunks) instead of with a Content-Length.
        close: close the connection right after the reply, without a ``Connection: close`` header.
    """

    status: int = 200
    body: dict[str, Any] | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float = 0.0
    drop: bool = False
    chunked: bool = False
    close: bool = False


def rate_limited(retry_after: float | None = None) -> Reply:
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
    return Reply(429, {"error": {"message": "rate limited", "type": "rate_limit_error"}}, headers)


def server_error(status: int = 500) -> Reply:
    return Reply(status, {"error": {"message": "internal error", "type": "server_error"}})


def hang(seconds: float = 30.0) -> Reply:
    return Reply(hang_s=seconds)


def malformed() -> Reply:
    return Reply(200, b'{"choices": [ this is not json')


def dropped() -> Reply:
    return Reply(drop=True)


def too_long(prompt_tokens: int = 2314, limit: int = 2048) -> Reply:
    """vLLM's answer to a prompt over ``--max-model-len`` (its text as observed on a real server)."""
    message = (f"Input length ({prompt_tokens}) exceeds model's maximum context length ({limit}).")
    return Reply(400, {"error": {"message": message, "type": "BadRequestError", "param": None, "code": 400}})


def openai_no_text() -> Reply:
    """A 200 Chat Completions reply whose only choice has no text (``content: null``)."""
    return Reply(200, {"id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": None},
                                    "finish_reason": "stop"}]})


@dataclass
class Request:
    """One request as the server saw it."""

    index: int
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    images: list[bytes]
    texts: list[str]
    arrived: float

    @property
    def n(self) -> int:
        return int(self.body.get("n") or 1)


class _FakeServer(ABC):
    """Shared machinery; subclasses give the API path, request parsing and reply shape."""

    path: ClassVar[str]

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        max_concurrency: int | None = None,
        faults: Iterable[Reply] = (),
        script: Callable[[Request], Reply | None] | None = None,
        reply_text: Callable[[Request, int], str] | None = None,
    ) -> None:
        self.latency_s = latency_s
        self.faults = deque(faults)
        self.script = script
        self.reply_text = reply_text or (lambda req, i: f"reply {req.index}.{i}")
        self.requests: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.connections = 0
        self._cap = threading.BoundedSemaphore(max_concurrency) if max_concurrency else None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> _FakeServer:
        self._httpd = _Server(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # a hung handler must not hold up stop()
        # A short poll interval: stop() waits up to one interval for the serving loop to notice.
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        assert self._httpd is not None
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def request_count(self) -> int:
        return len(self.requests)

    # --- per API ---------------------------------------------------------------------------------------------

    @abstractmethod
    def _parts(self, body: dict[str, Any]) -> tuple[list[str], list[bytes]]:
        """Texts and decoded image bytes of a request body."""

    @abstractmethod
    def normal_body(self, request: Request) -> dict[str, Any]:
        """The successful reply to ``request``."""

    @abstractmethod
    def empty(self) -> Reply:
        """A 200 reply with no usable sample (no choices / no content)."""

    # --- handling --------------------------------------------------------------------------------------------

    def _reply_for(self, request: Request) -> Reply:
        with self._lock:
            fault = self.faults.popleft() if self.faults else None
        if fault is not None:
            return fault
        scripted = self.script(request) if self.script is not None else None
        return scripted if scripted is not None else Reply()

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        if handler.path != self.path:
            _send(handler, Reply(404, {"error": {"message": f"no route {handler.path}"}}))
            return
        body = json.loads(raw)
        texts, images = self._parts(body)
        with self._lock:
            request = Request(len(self.requests), handler.path, {k.lower(): v for k, v in handler.headers.items()},
                              body, images, texts, time.monotonic())
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self._cap is not None:
                self._cap.acquire()
            try:
                reply = self._reply_for(request)
                self._stopping.wait(self.latency_s + reply.hang_s)
            finally:
                if self._cap is not None:
                    self._cap.release()
            if reply.drop:
                handler.close_connection = True
                return
            if reply.body is None and reply.status == 200:
                reply = dataclasses.replace(reply, body=self.normal_body(request))
            _send(handler, reply)
            if reply.close:
                handler.close_connection = True
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes; with Nagle on, the body waits for a delayed ACK
            # (~40 ms) on every kept-alive request.
            disable_nagle_algorithm = True

            def setup(self) -> None:
                super().setup()
                with server._lock:
                    server.connections += 1

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                try:
                    server._handle(self)
                except OSError:  # the client gave up (timeout, cancellation) and closed the socket
                    self.close_connection = True

            def log_message(self, *args: object) -> None:  # quiet
                pass

        return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024  # listen backlog: the default 5 drops bursts of connects (1 s SYN retry each)


def _send(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
    data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
    handler.send_response(reply.status)
    handler.send_header("Content-Type", "application/json")
    if reply.chunked:
        handler.send_header("Transfer-Encoding", "chunked")
    else:
        handler.send_header("Content-Length", str(len(data)))
    for name, value in reply.headers.items():
        handler.send_header(name, value)
    handler.end_headers()
    if reply.chunked:
        half = len(data) // 2
        for chunk in (data[:half], data[half:], b""):
            handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
    else:
        handler.wfile.write(data)


def _tokens(texts: Iterable[str], images: int = 0) -> int:
    """A made-up, deterministic token count: words plus 10 per image."""
    return sum(len(t.split()) for t in texts) + 10 * images


class FakeOpenAIServer(_FakeServer):
    """``POST /v1/chat/completions``. Returns ``n`` choices, or one when ``honour_n=False`` (like some servers).

    ``base_url`` includes ``/v1``, as the OpenAI SDK expects.
    """

    path = "/v1/chat/completions"

    def __init__(self, *, honour_n: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.honour_n = honour_n

    @property
    def base_url(self) -> str:
        return f"{super().base_url}/v1"

    def _parts(self, body: dict[str, Any]) -> tuple[list[str], list[bytes]]:
        texts, images = [], []
        for message in body.get("messages", []):
            content = message.get("content")
            for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
                if part["type"] == "text":
                    texts.append(part["text"])
                else:
                    images.append(base64.b64decode(part["image_url"]["url"].split(",", 1)[1]))
        return texts, images

    def normal_body(self, request: Request) -> dict[str, Any]:
        k = request.n if self.honour_n else 1
        texts = [self.reply_text(request, i) for i in range(k)]
        return {
            "id": f"chatcmpl-{request.index}",
            "object": "chat.completion",
            "created": 0,
            "model": request.body.get("model"),
            "choices": [
                {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                for i, t in enumerate(texts)
            ],
            "usage": {
                "prompt_tokens": _tokens(request.texts, len(request.images)),
                "completion_tokens": _tokens(texts),
                "total_tokens": _tokens(request.texts, len(request.images)) + _tokens(texts),
            },
        }

    def empty(self) -> Reply:
        return Reply(200, {"id": "chatcmpl-empty", "object": "chat.completion", "created": 0, "model": "m",
                           "choices": []})


class FakeAnthropicServer(_FakeServer):
    """``POST /v1/messages``: one sample per request (the Messages API has no ``n``).

    ``base_url`` has no ``/v1``: the Anthropic SDK appends ``/v1/messages`` itself.
    """

    path = "/v1/messages"

    def _parts(self, body: dict[str, Any]) -> tuple[list[str], list[bytes]]:
        texts = [body["system"]] if isinstance(body.get("system"), str) else []
        images = []
        for message in body.get("messages", []):
            for block in message["content"]:
                if block["type"] == "text":
                    texts.append(block["text"])
                else:
                    images.append(base64.b64decode(block["source"]["data"]))
        return texts, images

    def normal_body(self, request: Request) -> dict[str, Any]:
        text = self.reply_text(request, 0)
        return {
            "id": f"msg_{request.index}",
            "type": "message",
            "role": "assistant",
            "model": request.body.get("model"),
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": _tokens(request.texts, len(request.images)), "output_tokens": _tokens([text])},
        }

    def empty(self) -> Reply:
        return Reply(200, {"id": "msg_empty", "type": "message", "role": "assistant", "content": [],
                           "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 0}})
