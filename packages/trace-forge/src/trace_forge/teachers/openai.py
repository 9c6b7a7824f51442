"""The ``openai`` backend: the Chat Completions API of OpenAI or of an OpenAI-compatible server (``vllm serve``).

Several ``--base-url`` values are replicas of one model; each request goes to the replica with the fewest requests
in flight (round-robin among ties). Images travel as ``data:`` URLs of the bytes the shared
:class:`~trace_forge.teachers.images.ImageEncoder` made, identical on every call so vLLM's caches hit. ``n`` is sent
as is; a server that returns fewer choices is detected and topped up by the runtime.

Two transports, one behaviour (same request body, same typed errors, same parsing of the reply as plain JSON):

- ``lean`` (``--base-url`` servers): :class:`~trace_forge.teachers.http.HTTPPool`. The chat is serialized once per
  :meth:`TeacherClient.generate <trace_forge.teachers.runtime.TeacherClient.generate>` call (:meth:`prepare`),
  with each image's data URL spliced in as the bytes its encoding keeps; a request adds only its sampling fields.
  About 0.1 ms of client CPU per request where the SDK takes 3-4.5 ms (see :mod:`trace_forge.teachers.http`).
- ``sdk`` (api.openai.com, or a server behind an HTTP(S) proxy from the environment): the official SDK, which
  tracks the hosted API and honours proxies. Its request rate is bounded by the provider's rate limits, so its
  CPU cost does not matter there.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import urlsplit

from trace_forge.errors import ConfigError
from trace_forge.teachers.base import (
    Chat,
    Completion,
    Message,
    SamplingParams,
    Teacher,
    as_user_turn,
    register_teacher,
    resolve_api_key,
)
from trace_forge.teachers.errors import (
    TeacherFormatError,
    TeacherUnavailable,
    base_url_hint,
    error_for_status,
    translate_sdk_errors,
)
from trace_forge.teachers.http import HTTPPool, ProtocolError
from trace_forge.teachers.images import ImageEncoder, ImageRef
from trace_forge.teachers.usage import token_shares

__all__ = ["OpenAITeacher"]

logger = logging.getLogger(__name__)

Transport = Literal["auto", "lean", "sdk"]

# SDK clients per replica: httpx scans its whole connection pool on every request, which costs more CPU than the
# request itself once hundreds are in flight; a few smaller pools keep that cost flat.
_POOLS_PER_REPLICA = 8
_ERROR_TEXT_CHARS = 2000  # of a server's error body kept in the exception message
_DUMPS = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _dumps(value: Any) -> bytes:
    return _DUMPS(value).encode()


@register_teacher
class OpenAITeacher(Teacher):
    """Chat Completions over HTTP.

    Args:
        model: model name (``gpt-4o``, or the ``--served-model-name`` of a vLLM server).
        base_urls: endpoints including ``/v1`` (``http://host:8000/v1``); empty for api.openai.com.
        api_key_env: variable holding the key; default ``OPENAI_API_KEY`` for api.openai.com and ``"EMPTY"``
            for a ``--base-url`` server (which never gets ``OPENAI_API_KEY`` unless named here).
        encoder: shared image encoder.
        timeout_s: the SDK's own timeout, a backstop only: the runtime's shorter per-request timeout cancels
            first (and is the only one of the lean transport).
        transport: ``"lean"``, ``"sdk"`` or ``"auto"``: lean for ``base_urls`` that no proxy variable
            (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``) routes through a proxy, else the SDK.
    """

    name = "openai"
    supports_n = True

    def __init__(
        self,
        model: str,
        *,
        base_urls: Sequence[str] = (),
        api_key_env: str | None = None,
        encoder: ImageEncoder | None = None,
        timeout_s: float = 600.0,
        transport: Transport = "auto",
    ) -> None:
        super().__init__(model, encoder=encoder)
        self.base_urls = tuple(base_urls)
        key = resolve_api_key(api_key_env, "OPENAI_API_KEY", local=bool(self.base_urls))
        self.transport = _choose_transport(transport, self.base_urls)
        self._urls: tuple[str | None, ...] = self.base_urls or (None,)
        self._in_flight = [0] * len(self._urls)
        self._next = 0
        self._model_json = b'{"model":' + _dumps(model) + b',"messages":'
        if self.transport == "lean":
            headers = {"Authorization": f"Bearer {key}", "Accept": "application/json", "User-Agent": "trace-forge"}
            self._pools = [HTTPPool(url, headers) for url in self.base_urls]
        else:
            import openai

            self._sdk = openai
            # The runtime owns retries; the SDK must not retry behind its back.
            self._clients = [
                [openai.AsyncOpenAI(api_key=key, base_url=url, max_retries=0, timeout=timeout_s)
                 for _ in range(_POOLS_PER_REPLICA)]
                for url in self._urls
            ]
            self._pool_in_flight = [[0] * _POOLS_PER_REPLICA for _ in self._urls]

    def prepare(self, chat: Chat) -> Any:
        """The messages, serialized once for every request of a generate call (lean: bytes pieces)."""
        if self.transport == "lean":
            return self._message_pieces(chat)
        return [{"role": m.role, "content": self._content(m)} for m in map(as_user_turn, chat)]

    async def _generate(self, chat: Any, params: SamplingParams) -> list[Completion]:
        replica = self._pick_replica()
        self._in_flight[replica] += 1
        try:
            if self.transport == "lean":
                reply = await self._post_lean(replica, chat, params)
            else:
                reply = await self._post_sdk(replica, chat, params)
        finally:
            self._in_flight[replica] -= 1
        return self._completions(reply)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_urls": list(self.base_urls)}

    async def aclose(self) -> None:
        if self.transport == "lean":
            for pool in self._pools:
                await pool.aclose()
        else:
            for clients in self._clients:
                for client in clients:
                    await client.close()

    def __repr__(self) -> str:
        return f"OpenAITeacher(model={self.model!r}, base_urls={self.base_urls!r}, transport={self.transport!r})"

    # --- transports ------------------------------------------------------------------------------------------

    async def _post_lean(self, replica: int, pieces: list[bytes], params: SamplingParams) -> Any:
        pool = self._pools[replica]
        sampling = _dumps(_sampling(params))
        try:
            response = await pool.post("/chat/completions", [self._model_json, *pieces, b"," + sampling[1:]])
        except ConnectionError as e:
            raise TeacherUnavailable(f"{self.name} at {pool.base_url}: {e}") from e
        except ProtocolError as e:
            raise TeacherUnavailable(f"{self.name} at {pool.base_url}: not an HTTP reply: {e}") from e
        if response.status >= 400:
            text = _error_text(response.body)
            hint = base_url_hint(response.status, pool.base_url, wants_v1=True)
            raise error_for_status(response.status, response.headers,
                                   f"{self.name} at {pool.base_url}: HTTP {response.status}: {text}{hint}")
        try:
            return json.loads(response.body)
        except ValueError as e:
            raise TeacherFormatError(
                f"{self.name} at {pool.base_url}: malformed response: {e}: {response.body[:200]!r}") from e

    async def _post_sdk(self, replica: int, messages: list[dict[str, Any]], params: SamplingParams) -> Any:
        counts = self._pool_in_flight[replica]
        pool = counts.index(min(counts))
        counts[pool] += 1
        try:
            with translate_sdk_errors(self._sdk, self.name, self._urls[replica]):
                # The SDK's documented raw `post` skips its typed-parameter transform, which walks every message
                # part; `cast_to=object` returns the JSON as it is, read by the same code as the lean transport's.
                return await self._clients[replica][pool].post(
                    "/chat/completions", body={"model": self.model, "messages": messages, **_sampling(params)},
                    cast_to=object)
        finally:
            counts[pool] -= 1

    def _pick_replica(self) -> int:
        """Least requests in flight; ties go to the next replica in round-robin order."""
        k = len(self._in_flight)
        best = min(((self._next + j) % k for j in range(k)), key=self._in_flight.__getitem__)
        self._next = (best + 1) % k
        return best

    # --- request and reply -----------------------------------------------------------------------------------

    def _message_pieces(self, chat: Chat) -> list[bytes]:
        """The JSON of the message list as pieces; an image is its encoding's own data-URL bytes, never copied."""
        pieces = [b"["]
        for i, message in enumerate(map(as_user_turn, chat)):
            sep = b"," if i else b""
            if not message.images:
                pieces.append(sep + _dumps({"role": message.role, "content": message.text}))
                continue
            pieces.append(sep + b'{"role":' + _dumps(message.role) + b',"content":[')
            for j, part in enumerate(message.content):
                sep = b"," if j else b""
                if isinstance(part, str):
                    pieces.append(sep + _dumps({"type": "text", "text": part}))
                else:
                    pieces += [sep + b'{"type":"image_url","image_url":{"url":',
                               self.encoder.encode(part).data_url_json, b"}}"]
            pieces.append(b"]}")
        pieces.append(b"]")
        return pieces

    def _content(self, message: Message) -> str | list[dict[str, Any]]:
        if not message.images:
            return message.text
        return [
            {"type": "text", "text": p} if isinstance(p, str) else self._image_part(p)
            for p in message.content
        ]

    def _image_part(self, ref: ImageRef) -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": self.encoder.encode(ref).data_url}}

    def _completions(self, reply: Any) -> list[Completion]:
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not choices or not isinstance(choices, list):
            raise TeacherFormatError(f"{self.name}: reply has no choices")
        choices = sorted(choices, key=lambda c: (c.get("index") or 0) if isinstance(c, dict) else 0)
        texts = []
        for choice in choices:
            message = choice.get("message") if isinstance(choice, dict) else None
            text = message.get("content") if isinstance(message, dict) else None
            if not isinstance(text, str):
                index = choice.get("index", "?") if isinstance(choice, dict) else "?"
                raise TeacherFormatError(f"{self.name}: choice {index} has no text content")
            texts.append((text, choice.get("finish_reason")))
        usage = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        prompt = token_shares(_count(usage.get("prompt_tokens")), len(texts))
        completion = token_shares(_count(usage.get("completion_tokens")), len(texts))
        return [Completion(t, f, p, c) for (t, f), p, c in zip(texts, prompt, completion, strict=True)]


def _sampling(params: SamplingParams) -> dict[str, Any]:
    """The request fields besides model and messages."""
    body: dict[str, Any] = {
        "n": params.n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        # max_tokens, not max_completion_tokens: every OpenAI-compatible server (vLLM, SGLang) accepts it.
        "max_tokens": params.max_tokens,
    }
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    # vLLM sampling extensions, unknown to the OpenAI API itself: sent only when set.
    extra = {"top_k": params.top_k, "repetition_penalty": params.repetition_penalty}
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def _count(value: Any) -> int:
    """A token count from a reply; a missing or garbled one counts 0 (accounting, not the sample, is lost)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _error_text(body: bytes) -> str:
    """The server's own words from an error body: ``error.message`` (OpenAI, new vLLM), ``message`` (old vLLM)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error if isinstance(error, str) else None
        message = message or data.get("message") or data.get("detail")
        if isinstance(message, str) and message:
            return message[:_ERROR_TEXT_CHARS]
    return body[:_ERROR_TEXT_CHARS].decode("utf-8", "replace").strip() or "(empty body)"


def _choose_transport(transport: str, base_urls: tuple[str, ...]) -> str:
    if transport not in ("auto", "lean", "sdk"):
        raise ConfigError(f"openai transport must be auto, lean or sdk, got {transport!r}")
    if transport == "lean" and not base_urls:
        raise ConfigError("the lean transport needs --base-url servers; api.openai.com goes through the SDK")
    if transport != "auto":
        return transport
    if not base_urls:
        return "sdk"
    proxied = [url for url in base_urls if _proxied(url)]
    if proxied:
        logger.info("openai: %s is reached through a proxy from the environment; using the SDK", proxied[0])
        return "sdk"
    return "lean"


def _proxied(url: str) -> bool:
    """Whether the proxy environment variables (as httpx and urllib read them) route ``url`` through a proxy."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if parts.scheme not in proxies and "all" not in proxies:
        return False
    return not urllib.request.proxy_bypass(parts.netloc)
