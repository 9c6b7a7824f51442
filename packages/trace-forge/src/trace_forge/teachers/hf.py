"""The ``hf`` backend: a local transformers VLM (``AutoModelForImageTextToText``) as the teacher.

Needs the ``hf`` extra (torch, transformers); this module is imported only when ``hf`` is chosen. Concurrent
requests are gathered into one batched ``generate`` (see :class:`~trace_forge.teachers.inprocess.Batcher`), which
runs in a worker thread; a seeded sampling request runs alone, so its samples depend on its seed only. Chats are
rendered with the processor's chat template, or the one given; images go in as the bytes the shared encoder made,
at the processor's own resize, so the model's coordinates are in the client's ``model`` frame. A chat that ends
with an assistant turn is continued (a prefill), not answered anew.
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
        chat_template: Jinja chat template to render chats with instead of the checkpoint's own (e.g. the one a
            model was fine-tuned with, when the checkpoint ships another).

    Attributes:
        resize: how the processor resizes images, i.e. the frame the model's coordinates are in.
        vlm: the loaded model; ``processor``: its processor.

    Sampling: temperature 0 is greedy decoding (``n`` copies of one sequence); stop strings end a sequence and are
    cut from its text, as chat APIs do. A seeded sampling request runs alone under ``torch.manual_seed(seed)``
    (its ``n`` samples from one call): all rows of a batch draw from one random stream, so batched samples would
    depend on which other requests arrived in the same few milliseconds. Greedy and unseeded requests with equal
    sampling parameters share one ``generate`` call.
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
        chat_template: str | None = None,
    ) -> None:
        super().__init__(model, encoder=encoder)
        self.chat_template = chat_template
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
        described = {**super().describe(), "device": self.device, "dtype": str(self.vlm.dtype)}
        if self.chat_template is not None:  # it changes every prompt, hence the replies (and their cache keys)
            described["chat_template_sha256"] = hashlib.sha256(self.chat_template.encode()).hexdigest()
        return described

    def render(self, chat: Chat) -> str:
        """The prompt text of ``chat``: its messages through the chat template, ready for the model to continue."""
        messages = [
            {"role": m.role, "content": [{"type": "text", "text": p} if isinstance(p, str) else {"type": "image"}
                                         for p in m.content]}
            for m in chat
        ]
        prefill = chat[-1].role == "assistant"
        return self.processor.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=not prefill,
            continue_final_message=prefill,
        )

    # --- one batch, in the worker thread -----------------------------------------------------------------------

    def _run(self, requests: list[tuple[Chat, SamplingParams]]) -> list[list[Completion]]:
        """Completions for each request: one ``generate`` per seeded sampling request, one per group of the rest
        with equal sampling parameters."""
        out: list[list[Completion]] = [[] for _ in requests]
        keys = [_share_key(i, params) for i, (_, params) in enumerate(requests)]
        for indices in group_indices(keys).values():
            chats = [requests[i][0] for i in indices]
            params = requests[indices[0]][1]
            for i, completions in zip(indices, self._generate_batch(chats, params), strict=True):
                out[i] = completions
        return out

    def _generate_batch(self, chats: list[Chat], params: SamplingParams) -> list[list[Completion]]:
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
        if params.seed is not None and not greedy:  # alone in its batch (see _share_key)
            torch.manual_seed(params.seed)
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


def _share_key(index: int, params: SamplingParams) -> object:
    """Requests with equal keys share one ``generate`` call.

    A seeded sampling request gets a key of its own: the rows of a batch draw from one random stream, so its
    samples would otherwise depend on its batch mates, and an evaluation would change with its concurrency or
    on resume. Greedy decoding ignores the seed, and unseeded requests promise nothing, so those share.
    """
    if params.seed is not None and params.temperature > 0:
        return ("alone", index)
    return dataclasses.replace(params, seed=None)
