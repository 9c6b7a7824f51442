"""A lean HTTP/1.1 client for OpenAI-compatible servers: keep-alive connections, bodies written as given.

Why not the SDK for ``--base-url`` servers: measured against a loopback server (client CPU per small request, a
2-core machine), the openai SDK spends 3-4.5 ms (request building and validation, httpx's pool scan, pydantic
replies), its httpx alone about 3 ms, aiohttp 0.35 ms, and this client 0.1-0.14 ms. At 0.5 s latency and 256
sequences in flight a search sends hundreds of requests per second, and the SDK made the client, not the server,
the bottleneck. Bodies are written as the caller's pieces (:meth:`HTTPPool.post`), so the megabytes of an image's
data URL, built once per image, are never copied or re-encoded per request.

Scope, on purpose: what ``vllm serve``-style servers speak. POST with a JSON body over http or https; replies
delimited by Content-Length, chunked transfer encoding or the end of the connection; no proxies, redirects,
compression or HTTP/2 (the ``openai`` backend uses the SDK where a proxy applies, and for api.openai.com).

Failures surface as :class:`ConnectionError` (refused, reset, closed before a complete reply: the request may be
sent again) or :class:`ProtocolError` (a reply that is not HTTP); the caller types them. A kept-alive connection
that the server closed while idle is detected before reuse when its close has arrived, and otherwise by a reset
before any reply byte, after which the request is sent once more on a fresh connection, as browsers and httpx do.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["HTTPPool", "Response", "ProtocolError"]

_MAX_HEAD = 64 * 1024  # a reply head larger than this is not from an HTTP server we know
_COALESCE = 64 * 1024  # pieces smaller than this are joined into one write; larger ones are written as they are
# Idle connections older than this are closed instead of reused: uvicorn (vLLM, SGLang) drops idle keep-alive
# connections after 5 s, and a request written into a connection the server is closing is lost.
_IDLE_S = 4.0


class ProtocolError(ValueError):
    """The server's reply is not well-formed HTTP/1.x."""


@dataclass(frozen=True)
class Response:
    """An HTTP reply: status, headers with lower-case names, and the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class _Connection(asyncio.Protocol):
    """One keep-alive connection, carrying one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self._buf = bytearray()
        self._received = 0  # bytes of the current reply so far: a stale connection fails with none
        self._waiter: asyncio.Future[Response] | None = None
        self._eof = False

    # --- asyncio.Protocol ---------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._received += len(data)
        self._try_complete()

    def eof_received(self) -> bool:
        self._eof = True
        self._try_complete()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._eof = True
        self._try_complete()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            reason = f": {exc}" if exc else ""
            waiter.set_exception(ConnectionResetError(f"connection closed before a complete reply{reason}"))

    # --- one exchange -------------------------------------------------------------------------------------------

    async def exchange(self, head: bytes, pieces: Sequence[bytes]) -> Response:
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        self._received = 0
        self._write(head, pieces)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    @property
    def got_reply_bytes(self) -> bool:
        return self._received > 0

    def abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _write(self, head: bytes, pieces: Sequence[bytes]) -> None:
        out = bytearray(head)
        for piece in pieces:
            if len(piece) < _COALESCE:
                out += piece
                continue
            if out:
                self.transport.write(bytes(out))  # type: ignore[union-attr]
                out.clear()
            self.transport.write(piece)  # type: ignore[union-attr]  # sent from the caller's buffer, no copy
        if out:
            self.transport.write(bytes(out))  # type: ignore[union-attr]

    def _try_complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        try:
            response = self._parse()
        except ProtocolError as e:
            self.reusable = False
            waiter.set_exception(e)
            return
        if response is not None:
            waiter.set_result(response)

    def _parse(self) -> Response | None:
        """The complete reply at the start of the buffer (consumed), or None while more bytes are due."""
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > _MAX_HEAD:
                    raise ProtocolError("reply head too large")
                return None
            status, version, headers = _parse_head(bytes(self._buf[:end]))
            if 100 <= status < 200:  # an interim reply (100 Continue): the real one follows
                del self._buf[:end + 4]
                continue
            break
        start = end + 4
        if headers.get("transfer-encoding", "").lower().endswith("chunked"):
            parsed = _dechunk(self._buf, start)
            if parsed is None:
                return None
            body, stop = parsed
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise ProtocolError(f"bad Content-Length {headers['content-length']!r}") from None
            if len(self._buf) < start + length:
                return None
            body, stop = bytes(self._buf[start:start + length]), start + length
        elif status in (204, 304):
            body, stop = b"", start
        else:  # delimited by the end of the connection
            if not self._eof:
                return None
            body, stop = bytes(self._buf[start:]), len(self._buf)
            self.reusable = False
        del self._buf[:stop]
        connection = headers.get("connection", "").lower()
        if connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive") or self._buf:
            self.reusable = False
        return Response(status, headers, body)


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ProtocolError(f"bad header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), parts[0], headers


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """A chunked body starting at ``pos``: (body, end offset), or None when incomplete."""
    body = bytearray()
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        except ValueError:
            raise ProtocolError("bad chunk size") from None
        pos = eol + 2
        if size == 0:  # trailers, if any, end with an empty line
            end = buf.find(b"\r\n\r\n", pos - 2)
            return (bytes(body), end + 4) if end >= 0 else None
        if len(buf) < pos + size + 2:
            return None
        body += buf[pos:pos + size]
        pos += size + 2


class HTTPPool:
    """Keep-alive connections to one server, opened on demand and reused last-in first-out.

    There is no cap on connections: the caller's concurrency limit (the runtime's) bounds requests in flight. Use
    from one event loop.

    Args:
        base_url: ``http://host:port/prefix`` or ``https://...``; request paths are appended to the prefix.
        headers: sent with every request (e.g. ``Authorization``; never logged).
        clock: monotonic clock for idle ages.
    """

    def __init__(self, base_url: str, headers: Mapping[str, str], *, clock=time.monotonic) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base URL must be http(s)://host[:port][/path], got {base_url!r}")
        self.base_url = base_url
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if url.scheme == "https" else None
        self._prefix = url.path.rstrip("/")
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = self._port == (443 if self._ssl else 80)
        authority = host if default_port else f"{host}:{self._port}"
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._head_tail = f"Host: {authority}\r\n{extra}Content-Length: ".encode("latin-1")
        self._clock = clock
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()

    async def post(self, path: str, pieces: Sequence[bytes], content_type: str = "application/json") -> Response:
        """POST the concatenation of ``pieces`` to ``base_url + path``; the whole reply, whatever its status.

        Raises:
            ConnectionError: could not connect, or the connection ended before a complete reply.
            ProtocolError: the reply is not HTTP.
        """
        length = sum(len(p) for p in pieces)
        head = (b"POST " + (self._prefix + path).encode() + b" HTTP/1.1\r\n" + self._head_tail
                + str(length).encode() + b"\r\nContent-Type: " + content_type.encode() + b"\r\n\r\n")
        conn, reused = self._idle_connection(), True
        if conn is None:
            conn, reused = await self._connect(), False
        try:
            try:
                response = await conn.exchange(head, pieces)
            except ConnectionError:
                if not reused or conn.got_reply_bytes:
                    raise
                # The server closed this idle connection as we wrote to it; the request never reached it.
                self._discard(conn)
                conn = await self._connect()
                response = await conn.exchange(head, pieces)
        except BaseException:  # a failure or a cancellation (timeout) leaves the connection mid-reply
            self._discard(conn)
            raise
        if conn.reusable and not conn.closed:
            conn.idle_since = self._clock()
            self._idle.append(conn)
        else:
            self._discard(conn)
        return response

    async def aclose(self) -> None:
        for conn in list(self._open):
            self._discard(conn)
        self._idle.clear()

    def _idle_connection(self) -> _Connection | None:
        now = self._clock()
        while self._idle:
            conn = self._idle.pop()
            if not conn.closed and now - conn.idle_since < _IDLE_S:
                return conn
            self._discard(conn)
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                _Connection, self._host, self._port, ssl=self._ssl,
                server_hostname=self._host if self._ssl else None)
        except OSError as e:
            raise ConnectionRefusedError(f"cannot connect to {self.base_url}: {e}") from e
        self._open.add(conn)
        return conn

    def _discard(self, conn: _Connection) -> None:
        conn.abort()
        self._open.discard(conn)

    def __repr__(self) -> str:
        return f"HTTPPool({self.base_url!r})"
