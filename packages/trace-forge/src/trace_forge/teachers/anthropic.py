"""The ``anthropic`` backend: the Messages API, one sample per call.

The Messages API has no ``n``, so :attr:`AnthropicTeacher.supports_n` is False and the runtime sends ``n``
concurrent calls. System turns become the ``system`` parameter, images base64 blocks, ``stop`` ``stop_sequences``;
temperature, top_p and top_k go in the request body only when they differ from the API defaults. Anthropic has no
``seed`` (it is not sent) and no repetition penalty (asking for one is an error).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anthropic

from trace_forge.errors import ConfigError
from trace_forge.teachers.base import (
    Chat,
    Completion,
    SamplingParams,
    Teacher,
    as_user_turn,
    register_teacher,
    resolve_api_key,
)
from trace_forge.teachers.errors import TeacherFormatError, translate_sdk_errors
from trace_forge.teachers.images import ImageEncoder, ImageRef

__all__ = ["AnthropicTeacher"]

# Anthropic stop reasons in the OpenAI words Completion uses.
_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


@register_teacher
class AnthropicTeacher(Teacher):
    """Claude through the Messages API.

    Args:
        model: model name (``claude-sonnet-4-20250514``, ...).
        base_urls: at most one endpoint, *without* ``/v1`` (the SDK appends ``/v1/messages``); empty for
            api.anthropic.com.
        api_key_env: variable holding the key; default ``ANTHROPIC_API_KEY`` for api.anthropic.com and
            ``"EMPTY"`` for a ``--base-url`` server (which never gets ``ANTHROPIC_API_KEY`` unless named here).
        encoder: shared image encoder.
        timeout_s: the SDK's own timeout, a backstop behind the runtime's per-request timeout.
    """

    name = "anthropic"
    supports_n = False

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
        if len(base_urls) > 1:
            raise ConfigError("the anthropic teacher takes at most one --base-url")
        self.base_url = base_urls[0] if base_urls else None
        key = resolve_api_key(api_key_env, "ANTHROPIC_API_KEY", local=self.base_url is not None)
        # The runtime owns retries; the SDK must not retry behind its back.
        self._client = anthropic.AsyncAnthropic(api_key=key, base_url=self.base_url, max_retries=0,
                                                timeout=timeout_s)

    async def _generate(self, chat: Chat, params: SamplingParams) -> list[Completion]:
        if params.n != 1:
            raise ValueError(f"the anthropic backend samples one completion per call, got n={params.n}")
        body = self._body(chat, params)
        with translate_sdk_errors(anthropic, self.name, self.base_url, wants_v1=False):
            response = await self._client.messages.create(**body)
        return [self._completion(response)]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "base_urls": [self.base_url] if self.base_url else []}

    async def aclose(self) -> None:
        await self._client.close()

    def __repr__(self) -> str:
        return f"AnthropicTeacher(model={self.model!r}, base_url={self.base_url!r})"

    def _body(self, chat: Chat, params: SamplingParams) -> dict[str, Any]:
        if params.repetition_penalty is not None:
            raise ConfigError("the anthropic teacher does not support repetition_penalty")
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens,
            "messages": [
                {"role": m.role, "content": [self._block(p) for p in m.content]}
                for m in map(as_user_turn, chat)
                if m.role != "system"
            ],
        }
        system = "\n\n".join(m.text for m in chat if m.role == "system")
        if system:
            body["system"] = system
        if params.stop:
            body["stop_sequences"] = list(params.stop)
        # anthropic>=1 dropped the sampling keywords from create(); the API still takes them in the body on
        # models that allow sampling, and newer models reject non-default values, so send only what was changed
        # from the API defaults (temperature 1, top_p 1, no top_k).
        sampling = {
            "temperature": params.temperature if params.temperature != 1.0 else None,
            "top_p": params.top_p if params.top_p != 1.0 else None,
            "top_k": params.top_k,
        }
        sampling = {k: v for k, v in sampling.items() if v is not None}
        if sampling:
            body["extra_body"] = sampling
        return body

    def _block(self, part: str | ImageRef) -> dict[str, Any]:
        if isinstance(part, str):
            return {"type": "text", "text": part}
        image = self.encoder.encode(part)
        return {"type": "image", "source": {"type": "base64", "media_type": image.mime, "data": image.base64}}

    def _completion(self, response: Any) -> Completion:
        blocks = getattr(response, "content", None) or []
        texts = [b.text for b in blocks if getattr(b, "type", None) == "text" and isinstance(getattr(b, "text", None), str)]
        if not texts:
            raise TeacherFormatError(f"{self.name}: reply has no text content")
        reason = getattr(response, "stop_reason", None)
        usage = getattr(response, "usage", None)
        return Completion(
            "".join(texts),
            _FINISH.get(reason, reason),
            getattr(usage, "input_tokens", 0) or 0,
            getattr(usage, "output_tokens", 0) or 0,
        )
