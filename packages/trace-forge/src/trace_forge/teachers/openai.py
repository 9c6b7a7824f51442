"""The ``openai`` backend: the Chat Completions API of OpenAI or of an OpenAI-compatible server (``vllm serve``).

Several ``--base-url`` values are replicas of one model; each request goes to the replica with the fewest requests
in flight (round-robin among ties). Images travel as ``data:`` URLs of the bytes the shared
:class:`~trace_forge.teachers.images.ImageEncoder` made, identical on every call so vLLM's caches hit. ``n`` is sent
as is; a server that returns fewer choices is detected and topped up by the runtime.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import openai
from openai.types.chat import ChatCompletion

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
from trace_forge.teachers.errors import TeacherFormatError, translate_sdk_errors
from trace_forge.teachers.images import ImageEncoder, ImageRef
from trace_forge.teachers.usage import token_shares

__all__ = ["OpenAITeacher"]

_POOLS_PER_REPLICA = 8


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
            first.
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
    ) -> None:
        super().__init__(model, encoder=encoder)
        self.base_urls = tuple(base_urls)
        key = resolve_api_key(api_key_env, "OPENAI_API_KEY", local=bool(self.base_urls))
        # The runtime owns retries; the SDK must not retry behind its back. Each replica gets several SDK
        # clients: httpx scans its whole connection pool on every request, which costs more CPU than the request
        # itself once hundreds are in flight; a few smaller pools keep that cost flat.
        self._replicas = [
            [openai.AsyncOpenAI(api_key=key, base_url=url, max_retries=0, timeout=timeout_s)
             for _ in range(_POOLS_PER_REPLICA)]
            for url in (self.base_urls or (None,))
        ]
        self._in_flight = [[0] * _POOLS_PER_REPLICA for _ in self._replicas]
        self._next = 0

    async def _generate(self, chat: Chat, params: SamplingParams) -> list[Completion]:
        body = self._body(chat, params)
        replica = self._pick_replica()
        counts = self._in_flight[replica]
        pool = counts.index(min(counts))
        counts[pool] += 1
        try:
            with translate_sdk_errors(openai, self.name):
                # The SDK's documented raw `post` skips its typed-parameter transform, which walks every message
                # part and costs more CPU than the HTTP exchange; status errors and response parsing are the same.
                response = await self._replicas[replica][pool].post(
                    "/chat/completions", body=body, cast_to=ChatCompletion
                )
        finally:
            counts[pool] -= 1
        return self._completions(response)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_urls": list(self.base_urls)}

    async def aclose(self) -> None:
        for pools in self._replicas:
            for client in pools:
                await client.close()

    def __repr__(self) -> str:
        return f"OpenAITeacher(model={self.model!r}, base_urls={self.base_urls!r})"

    def _pick_replica(self) -> int:
        """Least requests in flight; ties go to the next replica in round-robin order."""
        k = len(self._replicas)
        best = min(((self._next + j) % k for j in range(k)), key=lambda r: sum(self._in_flight[r]))
        self._next = (best + 1) % k
        return best

    def _body(self, chat: Chat, params: SamplingParams) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": self._content(m)} for m in map(as_user_turn, chat)],
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

    def _content(self, message: Message) -> str | list[dict[str, Any]]:
        if not message.images:
            return message.text
        return [
            {"type": "text", "text": p} if isinstance(p, str) else self._image_part(p)
            for p in message.content
        ]

    def _image_part(self, ref: ImageRef) -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": self.encoder.encode(ref).data_url}}

    def _completions(self, response: Any) -> list[Completion]:
        choices = getattr(response, "choices", None)
        if not choices:
            raise TeacherFormatError(f"{self.name}: reply has no choices")
        choices = sorted(choices, key=lambda c: getattr(c, "index", 0) or 0)
        texts = []
        for choice in choices:
            text = getattr(getattr(choice, "message", None), "content", None)
            if not isinstance(text, str):
                raise TeacherFormatError(f"{self.name}: choice {getattr(choice, 'index', '?')} has no text content")
            texts.append((text, getattr(choice, "finish_reason", None)))
        usage = getattr(response, "usage", None)
        prompt = token_shares(getattr(usage, "prompt_tokens", 0) or 0, len(texts))
        completion = token_shares(getattr(usage, "completion_tokens", 0) or 0, len(texts))
        return [Completion(t, f, p, c) for (t, f), p, c in zip(texts, prompt, completion, strict=True)]


