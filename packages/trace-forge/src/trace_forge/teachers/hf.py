"""The ``hf`` backend: a local transformers VLM (``AutoModelForImageTextToText``) as the teacher.

Needs the ``hf`` extra (torch, transformers); this module is imported only when ``hf`` is chosen. Concurrent
requests are gathered into one batched ``generate`` (see :class:`~trace_forge.teachers.inprocess.Batcher`), which
runs in a worker thread. Chats are rendered with the processor's chat template; images go in as the bytes the
shared encoder made, at the processor's own resize, so the model's coordinates are in the client's ``model``
frame. A chat that ends with an assistant turn is continued (a prefill), not answered anew.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from typing import Any

import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from trace_forge.teachers.base import Chat, Completion, SamplingParams, Teacher, register_teacher
from trace_forge.teachers.images import ImageEncoder, ImageRef
from trace_forge.teachers.inprocess import (
    Batcher,
    encoder_for_processor,
    group_indices,
    processor_resize,
)
from trace_forge.teachers.usage import token_shares

__all__ = ["HFTeacher"]

logger = logging.getLogger(__name__)


@register_teacher
class HFTeacher(Teacher):
    """A transformers model in this process.

    Args:
        model: checkpoint directory or Hub id. Weights load from safetensors only.
        encoder: shared image encoder; one without a resize is replaced by one with the processor's resize.
        device: where the model runs; ``"cuda"`` when available, else ``"cpu"``.
        dtype: torch dtype name (``"bfloat16"``, ``"auto"``); transformers' default when None.
        trust_remote_code: run code shipped with the checkpoint (off unless asked).
        max_batch: most requests per ``generate`` call.
        batch_wait_s: how long a request waits for others to share its batch.

    Attributes:
        resize: how the processor resizes images, i.e. the frame the model's coordinates are in.
        vlm: the loaded model; ``processor``: its processor.

    Sampling: temperature 0 is greedy decoding (``n`` copies of one sequence); stop strings end a sequence and are
    cut from its text, as chat APIs do. Requests with equal sampling parameters share one ``generate`` call, seeded
    from their seeds, so a request is reproducible when it is batched with the same requests.
    """

    name = "hf"
    supports_n = True

    def __init__(
        self,
        model: str,
        *,
        encoder: ImageEncoder | None = None,
        device: str | None = None,
        dtype: str | None = None,
        trust_remote_code: bool = False,
        max_batch: int = 8,
        batch_wait_s: float = 0.005,
    ) -> None:
        super().__init__(model, encoder=encoder)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
        if dtype is not None:
            kwargs["dtype"] = dtype
        self.vlm = AutoModelForImageTextToText.from_pretrained(model, **kwargs).to(self.device).eval()
        self.processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.processor.tokenizer.padding_side = "left"  # batched generation continues every row at the same column
        self.resize = processor_resize(self.processor)
        self.encoder = encoder_for_processor(self.encoder, self.resize, self.name)
        tokenizer, config = self.processor.tokenizer, self.vlm.generation_config
        self._pad_id = config.pad_token_id if config.pad_token_id is not None else tokenizer.pad_token_id
        eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
        # A finished row is padded up to the longest one; the first end token or pad ends its completion.
        self._end_ids = {*(eos if isinstance(eos, list) else [eos]), self._pad_id} - {None}
        self._batcher = Batcher(self._run, max_batch=max_batch, wait_s=batch_wait_s)
        logger.info("hf teacher %s on %s (images at %s)", model, self.device, self.resize)

    async def _generate(self, chat: Chat, params: SamplingParams) -> list[Completion]:
        return await self._batcher.submit(chat, params)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": self.device, "dtype": str(self.vlm.dtype)}

    def render(self, chat: Chat) -> str:
        """The prompt text of ``chat``: its messages through the chat template, ready for the model to continue."""
        messages = [
            {"role": m.role, "content": [{"type": "text", "text": p} if isinstance(p, str) else {"type": "image"}
                                         for p in m.content]}
            for m in chat
        ]
        prefill = chat[-1].role == "assistant"
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=not prefill, continue_final_message=prefill
        )

    # --- one batch, in the worker thread -----------------------------------------------------------------------

    def _run(self, requests: list[tuple[Chat, SamplingParams]]) -> list[list[Completion]]:
        """Completions for each request; one ``generate`` per group of equal sampling parameters."""
        out: list[list[Completion]] = [[] for _ in requests]
        keys = [dataclasses.replace(params, seed=None) for _, params in requests]
        for params, indices in group_indices(keys).items():
            chats = [requests[i][0] for i in indices]
            seeds = [requests[i][1].seed for i in indices]
            for i, completions in zip(indices, self._generate_batch(chats, params, seeds), strict=True):
                out[i] = completions
        return out

    def _generate_batch(self, chats: list[Chat], params: SamplingParams, seeds: list[int | None]) -> list[list[Completion]]:
        images = [self._image(ref) for chat in chats for m in chat for ref in m.images]
        inputs = self.processor(
            text=[self.render(chat) for chat in chats], images=images or None, padding=True, return_tensors="pt"
        ).to(self.device)
        greedy = params.temperature == 0
        sequences = 1 if greedy else params.n  # greedy copies would all be equal: decode once, repeat
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "num_return_sequences": sequences,
            "pad_token_id": self._pad_id,
            "repetition_penalty": params.repetition_penalty or 1.0,
        }
        if greedy:
            kwargs["do_sample"] = False
        else:
            # top_k 0 switches off the top-k filter transformers applies by default (50): None means no top-k.
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or 0)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.processor.tokenizer)
        if any(seed is not None for seed in seeds):
            torch.manual_seed(_batch_seed(seeds))
        with torch.inference_mode():
            output = self.vlm.generate(**inputs, **kwargs)
        new_tokens = output[:, inputs["input_ids"].shape[1]:].tolist()
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        results = []
        for b, prompt in enumerate(prompt_tokens):
            rows = new_tokens[b * sequences:(b + 1) * sequences] * (params.n if greedy else 1)
            shares = token_shares(prompt, params.n)
            results.append([self._completion(row, params.stop, share) for row, share in zip(rows, shares, strict=True)])
        return results

    def _completion(self, row: list[int], stop: tuple[str, ...], prompt_tokens: int) -> Completion:
        end = next((i for i, token in enumerate(row) if token in self._end_ids), None)
        text = self.processor.tokenizer.decode(row[:end], skip_special_tokens=True)
        cuts = [text.find(s) for s in stop if s in text]
        if cuts:  # a stop string ended the row; the padding after it was not generated
            return Completion(text[:min(cuts)], "stop", prompt_tokens, len(row) if end is None else end)
        if end is None:
            return Completion(text, "length", prompt_tokens, len(row))
        return Completion(text, "stop", prompt_tokens, end + 1)

    def _image(self, ref: ImageRef) -> Image.Image:
        """The image exactly as an API backend would send it: the encoder's bytes, decoded."""
        with Image.open(io.BytesIO(self.encoder.encode(ref).data)) as image:
            return image.convert("RGB")


def _batch_seed(seeds: list[int | None]) -> int:
    """One seed for a batch: a request's own seed when alone, else a hash of all of them."""
    if len(seeds) == 1 and seeds[0] is not None:
        return seeds[0]
    return int.from_bytes(hashlib.sha256(repr(seeds).encode()).digest()[:8], "big") >> 1
