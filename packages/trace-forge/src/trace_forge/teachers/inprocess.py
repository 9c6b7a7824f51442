"""What the in-process backends (``sim``, ``hf``, ``vllm``) share: token shares, request batching, processor sizes.

A local model is fastest when one forward pass serves many requests, while the search sends requests one by one
from many coroutines. :class:`Batcher` sits between: it collects the requests that arrive within a few
milliseconds (or until a batch is full) and runs them as one batch in a worker thread, so the event loop stays
free while the model runs.

Local models resize images in their processor, so their coordinates are in the processor's frame; the client
only knows the frame of the image as encoded. :func:`encoder_for_processor` makes the two the same.

Nothing here imports torch, transformers or vLLM.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trace_forge.errors import ConfigError
from trace_forge.grounding.frames import Resize
from trace_forge.teachers.base import Chat, Completion, SamplingParams
from trace_forge.teachers.images import ImageEncoder

__all__ = ["Batcher", "BatchRunner", "group_indices", "processor_resize", "encoder_for_processor"]

BatchRunner = Callable[[list[tuple[Chat, SamplingParams]]], list[list[Completion]]]


@dataclass
class _Pending:
    chat: Chat
    params: SamplingParams
    future: asyncio.Future[list[Completion]]


class Batcher:
    """Gathers concurrent requests into batches for a blocking ``run`` function.

    A request waits at most ``wait_s`` for company, less when ``max_batch`` requests are already waiting. Batches
    run one at a time (one model, one worker thread); requests arriving meanwhile form the next batch. A caller
    that gave up (the runtime's timeout cancelled it) is dropped from a batch that has not started yet.

    Args:
        run: blocking function from a batch of ``(chat, params)`` to one completion list per request, in order.
        max_batch: most requests per batch.
        wait_s: how long the first request of a batch waits for others.

    Attributes:
        batches: batches run so far (for tests and provenance).
    """

    def __init__(self, run: BatchRunner, max_batch: int = 8, wait_s: float = 0.005) -> None:
        if max_batch < 1 or wait_s < 0:
            raise ConfigError(f"invalid batching: max_batch={max_batch} (need >= 1), wait_s={wait_s} (need >= 0)")
        self.run = run
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.batches = 0
        self._queue: list[_Pending] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._full = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, chat: Chat, params: SamplingParams) -> list[Completion]:
        """Queue one request and wait for its completions (exceptions of its batch are raised here)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (a new asyncio.run): asyncio primitives are per loop
            self._loop, self._queue, self._full, self._worker = loop, [], asyncio.Event(), None
        pending = _Pending(chat, params, loop.create_future())
        self._queue.append(pending)
        if len(self._queue) >= self.max_batch:
            self._full.set()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await pending.future

    async def _drain(self) -> None:
        while self._queue:
            if len(self._queue) < self.max_batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.wait_s):
                        await self._full.wait()
            self._full.clear()
            batch = [p for p in self._queue[: self.max_batch] if not p.future.done()]
            del self._queue[: self.max_batch]
            if not batch:
                continue
            self.batches += 1
            try:
                results = await asyncio.to_thread(self.run, [(p.chat, p.params) for p in batch])
            except Exception as error:  # every caller of the failed batch gets the error; none is lost
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(error)
                continue
            for p, completions in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(completions)


def processor_resize(processor: Any) -> Resize:
    """:meth:`Resize.of_processor` of an in-process model's processor, failing as a configuration error.

    Raises:
        ConfigError: the processor has no Qwen-VL-style resize bounds.
    """
    try:
        return Resize.of_processor(processor)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def encoder_for_processor(encoder: ImageEncoder, resize: Resize, backend: str) -> ImageEncoder:
    """The encoder to send images with to a model whose processor applies ``resize``.

    The processor must leave the sent images alone, or the model's coordinates would be in a frame the client
    does not know. An encoder without a resize is replaced by one with the processor's; an encoder with its own
    resize must use the same grid factor and stay within the processor's pixel bounds.

    Raises:
        ConfigError: the encoder's resize would be resized again by the processor.
    """
    if encoder.resize is None:
        return ImageEncoder(resize, encoder.format)
    mine = encoder.resize
    if mine.factor != resize.factor or mine.min_pixels < resize.min_pixels or mine.max_pixels > resize.max_pixels:
        raise ConfigError(
            f"teacher {backend!r}: images resized to min_pixels={mine.min_pixels}, max_pixels={mine.max_pixels}, "
            f"factor={mine.factor} would be resized again by the model's processor (min_pixels={resize.min_pixels}, "
            f"max_pixels={resize.max_pixels}, factor={resize.factor}); choose bounds within the processor's"
        )
    return encoder


def group_indices(keys: Sequence[Any]) -> dict[Any, list[int]]:
    """Indices of equal keys, grouped in first-seen order (requests one model call can serve together)."""
    groups: dict[Any, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return groups
