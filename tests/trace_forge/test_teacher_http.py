"""The lean HTTP transport of the ``openai`` backend: keep-alive, reply framing, and the failures it types."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
from collections.abc import Callable

import pytest

from tests.trace_forge.fake_servers import FakeOpenAIServer, Reply
from trace_forge.teachers import (
    Message,
    RuntimeConfig,
    SamplingParams,
    TeacherClient,
    TeacherUnavailable,
    make_teacher,
)
from trace_forge.teachers.http import HTTPPool

FAST = RuntimeConfig(timeout_s=2.0, max_retries=2, backoff_base_s=0.0, backoff_max_s=0.0)


def lean_client(url: str, config: RuntimeConfig = FAST) -> TeacherClient:
    teacher = make_teacher("openai", "m", [url], transport="lean")
    return TeacherClient(teacher, config, rng=random.Random(0))


def ask_in_turn(client: TeacherClient, count: int) -> list[str]:
    """``count`` requests one after another (so a connection can be reused), then close the client."""

    async def go() -> list[str]:
        async with client:
            return [(await client.generate([Message("user", (f"q{i}",))]))[0].text for i in range(count)]

    return asyncio.run(go())


def test_requests_in_turn_share_one_kept_alive_connection() -> None:
    with FakeOpenAIServer() as server:
        texts = ask_in_turn(lean_client(server.base_url), 5)
    assert texts == [f"reply {i}.0" for i in range(5)] and server.connections == 1


def test_chunked_replies_are_read() -> None:
    with FakeOpenAIServer(script=lambda req: Reply(chunked=True)) as server:
        texts = ask_in_turn(lean_client(server.base_url), 3)
    assert texts == ["reply 0.0", "reply 1.0", "reply 2.0"] and server.connections == 1


def test_a_server_closing_each_connection_after_its_reply_costs_no_request() -> None:
    # What an idle keep-alive timeout looks like to the client: the connection is gone at the next request.
    with FakeOpenAIServer(script=lambda req: Reply(close=True)) as server:
        client = lean_client(server.base_url)
        texts = ask_in_turn(client, 4)
    assert texts == [f"reply {i}.0" for i in range(4)]
    assert server.request_count == server.connections == 4 and client.usage.retries == 0


def test_idle_connections_past_the_servers_keep_alive_are_not_reused() -> None:
    now = [0.0]
    with FakeOpenAIServer() as server:
        pool = HTTPPool(server.base_url, {}, clock=lambda: now[0])
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()

        async def go() -> list[int]:
            statuses = []
            for wait in (0.0, 1.0, 10.0):
                now[0] += wait
                statuses.append((await pool.post("/chat/completions", [body])).status)
            await pool.aclose()
            return statuses

        assert asyncio.run(go()) == [200, 200, 200]
    assert server.connections == 2  # reused after 1 s, replaced after 10 s idle


class RawServer:
    """A TCP server whose n-th connection is handled by ``handlers[n]``(socket); for replies no HTTP server sends."""

    def __init__(self, handlers: list[Callable[[socket.socket], None]]) -> None:
        self.handlers = handlers
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.accepted = 0

    def __enter__(self) -> RawServer:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _serve(self) -> None:
        for handler in self.handlers:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._run, args=(handler, conn), daemon=True).start()

    @staticmethod
    def _run(handler: Callable[[socket.socket], None], conn: socket.socket) -> None:
        with conn:
            handler(conn)


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += conn.recv(65536)
    return body


def reply(conn: socket.socket, text: str) -> None:
    body = json.dumps({"choices": [{"index": 0, "message": {"content": text}, "finish_reason": "stop"}]}).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def test_a_kept_alive_connection_closed_under_a_request_is_replaced_once_without_a_retry() -> None:
    def answer_once_then_close_at_the_next(conn: socket.socket) -> None:
        read_request(conn)
        reply(conn, "first")
        read_request(conn)  # the server had already decided to close this idle connection

    def answer_all(conn: socket.socket) -> None:
        while True:
            try:
                read_request(conn)
            except (OSError, StopIteration):
                return
            reply(conn, "again")

    with RawServer([answer_once_then_close_at_the_next, answer_all]) as server:
        client = lean_client(server.base_url)
        assert ask_in_turn(client, 2) == ["first", "again"]
    assert server.accepted == 2 and client.usage.retries == 0


@pytest.mark.parametrize(
    ("handler", "match"),
    [
        (lambda conn: (read_request(conn), conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")), "not an HTTP reply"),
        (lambda conn: (read_request(conn), conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{")),
         "closed before a complete reply"),
        (lambda conn: read_request(conn), "closed before a complete reply"),
    ],
    ids=["not-http", "cut-body", "no-reply"],
)
def test_broken_replies_are_unavailable_errors_naming_the_server(handler, match: str) -> None:
    with RawServer([handler] * 3) as server:
        client = lean_client(server.base_url)
        with pytest.raises(TeacherUnavailable, match=match) as info:
            ask_in_turn(client, 1)
    assert server.base_url in str(info.value)
    assert server.accepted == 3 and client.usage.retries == 2  # a fresh connection each time, retried by the runtime


def test_a_refused_connection_is_unavailable_and_names_the_url() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    client = lean_client(url, RuntimeConfig(timeout_s=2.0, max_retries=0))
    with pytest.raises(TeacherUnavailable, match=f"cannot connect to {url}"):
        ask_in_turn(client, 1)


def test_the_api_key_is_sent_as_a_bearer_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_KEY", "sk-local-1")
    with FakeOpenAIServer() as server:
        teacher = make_teacher("openai", "m", [server.base_url], api_key_env="MY_KEY", transport="lean")
        ask_in_turn(TeacherClient(teacher, FAST), 1)
    assert server.requests[0].headers["authorization"] == "Bearer sk-local-1"
    assert "sk-local-1" not in repr(teacher)


def test_n_and_the_sampling_fields_are_spliced_into_the_prepared_body() -> None:
    with FakeOpenAIServer() as server:
        client = lean_client(server.base_url)

        async def go() -> None:
            async with client:
                await client.generate([Message("user", ("q",))], SamplingParams(n=2, seed=3, max_tokens=9))

        asyncio.run(go())
    body = server.requests[0].body
    assert body == {"model": "m", "messages": [{"role": "user", "content": "q"}], "n": 2, "temperature": 1.0,
                    "top_p": 1.0, "max_tokens": 9, "seed": 3}


def test_a_garbled_usage_block_costs_the_accounting_not_the_sample() -> None:
    body = {"choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": "many", "completion_tokens": None}}
    with FakeOpenAIServer(faults=[Reply(200, body)]) as server:
        client = lean_client(server.base_url)
        assert ask_in_turn(client, 1) == ["hi"]
    assert (client.usage.prompt_tokens, client.usage.completion_tokens, client.usage.format_retries) == (0, 0, 0)
