"""The ``vllm`` backend: an in-process ``vllm.LLM`` engine as the teacher, with prefix caching on.

Needs the ``vllm`` extra; this module is the only one that imports vLLM, and only when ``vllm`` is chosen. For a
vLLM *server*, use the ``openai`` backend with ``--base-url`` instead.

Concurrent requests are gathered into one ``LLM.chat`` call (a list of conversations with one ``SamplingParams``
each) run in a worker thread; vLLM schedules them together, and the shared system prompt, image and question of a
search tree hit its prefix cache. Images travel as ``data:`` URLs of the shared encoder's bytes, already at the
model processor's resize, so vLLM's processor leaves them alone and coordinates are in the client's ``model``
frame. Tool turns are sent as ``<tool_response>`` user turns, as to every chat API.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import vllm
from transformers import AutoProcessor

from trace_forge.teachers.base import (
    Chat,
    Completion,
    Message,
    SamplingParams,
    Teacher,
    as_user_turn,
    register_teacher,
)
from trace_forge.teachers.errors import TeacherFormatError
from trace_forge.teachers.images import ImageEncoder
from trace_forge.teachers.inprocess import (
    Batcher,
    encoder_for_processor,
    group_indices,
    processor_resize,
)
from trace_forge.teachers.usage import token_shares

__all__ = ["VLLMTeacher"]

logger = logging.getLogger(__name__)


@register_teacher
class VLLMTeacher(Teacher):
    """A vLLM engine in this process.

    Args:
        model: checkpoint directory or Hub id.
        encoder: shared image encoder; one without a resize is replaced by one with the processor's resize.
        max_images: most images in one prompt (vLLM's ``limit_mm_per_prompt``): the question image plus zoom crops.
        trust_remote_code: run code shipped with the checkpoint (off unless asked).
        engine_args: further ``vllm.LLM`` arguments (``tensor_parallel_size``, ``gpu_memory_utilization``,
            ``max_model_len``, ``dtype``, ...).
        max_batch: most conversations per ``LLM.chat`` call.
        batch_wait_s: how long a request waits for others to share its batch.
        chat_template: Jinja chat template to render chats with instead of the checkpoint's own (``LLM.chat``'s
            ``chat_template``).

    Attributes:
        resize: how the model's processor resizes images, i.e. the frame its coordinates are in.
        llm: the engine.
    """

    name = "vllm"
    supports_n = True

    def __init__(
        self,
        model: str,
        *,
        encoder: ImageEncoder | None = None,
        max_images: int = 8,
        trust_remote_code: bool = False,
        engine_args: Mapping[str, Any] | None = None,
        max_batch: int = 256,
        batch_wait_s: float = 0.01,
        chat_template: str | None = None,
    ) -> None:
        super().__init__(model, encoder=encoder)
        self.chat_template = chat_template
        # Only the processor's config is read here, to learn its resize; vLLM loads its own copy.
        processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.resize = processor_resize(processor)
        self.encoder = encoder_for_processor(self.encoder, self.resize, self.name)
        self.engine_args = {
            "enable_prefix_caching": True,
            "limit_mm_per_prompt": {"image": max_images},
            "trust_remote_code": trust_remote_code,
            **(engine_args or {}),
        }
        self.llm = vllm.LLM(model=model, **self.engine_args)
        self._batcher = Batcher(self._run, max_batch=max_batch, wait_s=batch_wait_s)
        logger.info("vllm teacher %s (images at %s)", model, self.resize)

    async def _generate(self, chat: Chat, params: SamplingParams) -> list[Completion]:
        return await self._batcher.submit(chat, params)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "engine_args": dict(self.engine_args),
                "vllm": vllm.__version__}

    # --- one batch, in the worker thread -----------------------------------------------------------------------

    def _run(self, requests: list[tuple[Chat, SamplingParams]]) -> list[list[Completion]]:
        """One ``LLM.chat`` call per group of chats that do or do not continue a final assistant turn."""
        out: list[list[Completion]] = [[] for _ in requests]
        prefills = [chat[-1].role == "assistant" for chat, _ in requests]
        for prefill, indices in group_indices(prefills).items():
            outputs = self.llm.chat(
                [self._messages(requests[i][0]) for i in indices],
                [_sampling_params(requests[i][1]) for i in indices],
                use_tqdm=False,
                chat_template=self.chat_template,
                add_generation_prompt=not prefill,
                continue_final_message=prefill,
            )
            for i, output in zip(indices, outputs, strict=True):
                out[i] = self._completions(output)
        return out

    def _messages(self, chat: Chat) -> list[dict[str, Any]]:
        return [{"role": m.role, "content": self._content(m)} for m in map(as_user_turn, chat)]

    def _content(self, message: Message) -> str | list[dict[str, Any]]:
        if not message.images:
            return message.text
        return [
            {"type": "text", "text": p} if isinstance(p, str)
            else {"type": "image_url", "image_url": {"url": self.encoder.encode(p).data_url}}
            for p in message.content
        ]

    def _completions(self, output: Any) -> list[Completion]:
        samples = sorted(output.outputs, key=lambda o: o.index)
        if not samples:
            raise TeacherFormatError(f"{self.name}: engine returned no outputs")
        prompt = token_shares(len(output.prompt_token_ids or ()), len(samples))
        return [Completion(o.text, o.finish_reason, p, len(o.token_ids)) for o, p in zip(samples, prompt, strict=True)]


def _sampling_params(params: SamplingParams) -> vllm.SamplingParams:
    """Our sampling parameters as vLLM's; the optional extras are passed only when set, keeping vLLM's defaults."""
    kwargs: dict[str, Any] = {
        "n": params.n,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "stop": list(params.stop),
        "seed": params.seed,
    }
    if params.top_k is not None:
        kwargs["top_k"] = params.top_k
    if params.repetition_penalty is not None:
        kwargs["repetition_penalty"] = params.repetition_penalty
    return vllm.SamplingParams(**kwargs)
