"""The teacher runtime: the one place that limits, times out, retries, caches and counts teacher calls.

Search code calls :meth:`TeacherClient.generate` and gets exactly ``n`` completions or a typed
:class:`~trace_forge.teachers.errors.TeacherError`; it never sleeps or retries itself. Per call:

1. samples already in the response cache are served from it;
2. the missing ones are requested: one call for all of them when the backend takes ``n`` (split into several
   concurrent calls once a server is seen to cap or ignore ``n``), else one concurrent call per sample. At
   temperature 0 one sample is requested (``n=1``) and copied ``n`` times: greedy samples are identical by
   definition, and vLLM refuses ``n > 1`` with greedy sampling (HTTP 400);
3. each call waits for a concurrency slot and a rate-limit slot, then runs under a timeout that cancels it;
4. rate limits, timeouts, 5xx and connection failures are retried with capped exponential backoff and jitter, or
   after the server's Retry-After (capped); malformed replies (bad JSON, no choices, a choice without text) are
   retried at most ``max_format_retries`` times; other 4xx are not retried. Everything is counted;
5. a completion longer than :data:`MAX_CHARS_PER_TOKEN` characters per ``max_tokens`` (a server that ignored
   ``max_tokens``) is cut to that length, marked ``finish_reason="length"`` and counted: the caller and the cache
   get the same cut text, so a runaway reply can neither bloat the cache nor change on resume;
6. each call's completions are written to the cache as soon as its reply arrives.

What a resume can pay twice: a kill loses exactly the requests in flight at that moment (at most ``concurrency``);
their replies never reached us, so nothing can be saved of them, and a resumed run sends them again. Everything
received before is in the cache: a completed SQLite transaction survives the kill of the process (WAL), and only an
operating-system crash or power loss can drop the last few (``synchronous=NORMAL``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from trace_forge.errors import ConfigError
from trace_forge.grounding.frames import ImageGeometry, Resize
from trace_forge.teachers.base import Chat, Completion, SamplingParams, Teacher, make_teacher
from trace_forge.teachers.cache import ResponseCache, request_key
from trace_forge.teachers.errors import TeacherError, TeacherFormatError, TeacherTimeout
from trace_forge.teachers.images import ImageEncoder, ImageRef
from trace_forge.teachers.usage import DEFAULT_PRICES, Price, Usage

__all__ = ["RuntimeConfig", "TeacherClient", "build_client", "teacher_settings", "MAX_CHARS_PER_TOKEN"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_JITTER = 0.25  # a backoff delay is shortened by up to 25% at random, so clients that failed together spread out

# Longest completion kept, in characters per token of max_tokens. BPE tokens average about 4 characters of English
# and rarely more than 8 over a whole reply, so 16 never cuts an honest reply; a server that ignores max_tokens
# (one 2-question search wrote a 300 MB cache) is cut at 8,192 characters for max_tokens=512.
MAX_CHARS_PER_TOKEN = 16

# describe() fields that do not change a teacher's replies: where it is served, and how many questions a simulator
# was handed (run.json files of earlier versions record it; a resumed run may search more of them).
VOLATILE_TEACHER_FIELDS = frozenset({"base_urls", "samples"})


def teacher_settings(description: dict[str, Any]) -> dict[str, Any]:
    """A teacher's ``describe()`` without :data:`VOLATILE_TEACHER_FIELDS`: what its replies depend on."""
    return {k: v for k, v in description.items() if k not in VOLATILE_TEACHER_FIELDS}


@dataclass(frozen=True)
class RuntimeConfig:
    """Limits and retry policy of a :class:`TeacherClient`.

    Attributes:
        concurrency: requests in flight at once (a local vLLM server batches them; 64 keeps one 8-GPU server
            busy without queueing minutes of work).
        requests_per_second: start at most this many requests per second; None for no limit.
        timeout_s: a request with no complete reply after this long is cancelled and counts as a timeout.
        max_retries: retries after the first attempt, for rate limits, timeouts, 5xx and connection errors.
        max_format_retries: retries after a malformed reply (bad JSON, no choices, a choice without text); few,
            since a model that writes no text for a prompt does it again.
        backoff_base_s: first retry delay; doubles with each retry.
        backoff_max_s: cap of the exponential delay.
        retry_after_cap_s: longest Retry-After we honour; a longer one waits this long.
    """

    concurrency: int = 64
    requests_per_second: float | None = None
    timeout_s: float = 120.0
    max_retries: int = 6
    max_format_retries: int = 2
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_cap_s: float = 60.0

    def __post_init__(self) -> None:
        problems = []
        if self.concurrency < 1:
            problems.append(f"concurrency={self.concurrency} (need >= 1)")
        if self.requests_per_second is not None and self.requests_per_second <= 0:
            problems.append(f"requests_per_second={self.requests_per_second} (need > 0, or None for no limit)")
        if self.timeout_s <= 0:
            problems.append(f"timeout_s={self.timeout_s} (need > 0)")
        if self.max_retries < 0:
            problems.append(f"max_retries={self.max_retries} (need >= 0)")
        if self.max_format_retries < 0:
            problems.append(f"max_format_retries={self.max_format_retries} (need >= 0)")
        if not 0 <= self.backoff_base_s <= self.backoff_max_s:
            problems.append(f"backoff_base_s={self.backoff_base_s}, backoff_max_s={self.backoff_max_s} "
                            "(need 0 <= base <= max)")
        if self.retry_after_cap_s < 0:
            problems.append(f"retry_after_cap_s={self.retry_after_cap_s} (need >= 0)")
        if problems:
            raise ConfigError("invalid teacher runtime settings: " + "; ".join(problems))

    def backoff(self, retry: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before retry number ``retry`` (0-based).

        The server's Retry-After wins, capped at :attr:`retry_after_cap_s`; otherwise
        ``min(backoff_max_s, backoff_base_s * 2**retry)`` less up to 25% jitter.
        """
        if retry_after is not None:
            return min(retry_after, self.retry_after_cap_s)
        return min(self.backoff_max_s, self.backoff_base_s * 2**retry) * (1 - _JITTER * rng.random())


class _RateLimiter:
    """Spaces request starts at least ``1 / rate`` seconds apart (a reservation per caller, no bursts)."""

    def __init__(self, rate: float, clock: Callable[[], float], sleep: Callable[[float], Awaitable[Any]]) -> None:
        self._interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next = -float("inf")

    async def acquire(self) -> None:
        now = self._clock()
        start = max(now, self._next)
        self._next = start + self._interval  # reserved before awaiting, so concurrent callers queue up in order
        if start > now:
            await self._sleep(start - now)


class TeacherClient:
    """One backend behind the runtime policy: what search code calls.

    Use one client per event loop (its SDK connections and semaphore belong to the loop that first uses them),
    and close it with ``await client.aclose()`` or ``async with``. The client owns the teacher and the cache.

    Args:
        teacher: the backend.
        config: limits and retry policy.
        cache: response cache; None disables caching.
        usage: counters to update; a fresh :class:`Usage` when None.
        sleep: awaitable sleep used for backoff and rate limiting (tests inject a recorder).
        clock: monotonic clock for latency and rate limiting.
        rng: randomness of the backoff jitter.

    Example::

        async with build_client("openai", "qwen", base_urls=["http://127.0.0.1:8000/v1"]) as client:
            chat = [Message("user", (ImageRef(path), "Where is the red dot? Answer as (x, y)."))]
            replies = await client.generate(chat, SamplingParams(n=3))
    """

    def __init__(
        self,
        teacher: Teacher,
        config: RuntimeConfig | None = None,
        *,
        cache: ResponseCache | None = None,
        usage: Usage | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.teacher = teacher
        self.config = config if config is not None else RuntimeConfig()
        self.cache = cache
        self.usage = usage if usage is not None else Usage(teacher.model)
        self.usage.context.update(teacher.describe())
        self.usage.context.update(teacher.encoder.describe())
        self._sleep = sleep
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._slots = asyncio.Semaphore(self.config.concurrency)
        rps = self.config.requests_per_second
        self._rate = _RateLimiter(rps, clock, sleep) if rps is not None else None
        # Settings beyond backend and model (a simulator's skill, a local engine's arguments) change the replies, so
        # they salt the cache key; backends with none keep the plain key, and the caches already paid for.
        extra = {k: v for k, v in teacher_settings(teacher.describe()).items() if k not in ("backend", "model")}
        self._key_salt = json.dumps(extra, sort_keys=True, default=str) if extra else ""
        # Most samples one call has returned when asked for more: None until a server is seen to cap `n`.
        self._n_cap: int | None = None if teacher.supports_n else 1
        self._warned_long = False

    async def generate(self, chat: Chat, params: SamplingParams | None = None) -> list[Completion]:
        """Exactly ``params.n`` completions for ``chat``, in sample-index order.

        At temperature 0 the ``n`` completions are one greedy sample and its copies (the copies carry no tokens,
        so token sums stay what was billed).

        Raises:
            TeacherError: a request failed for good (after retries, when its error is retryable).
        """
        params = params if params is not None else SamplingParams()
        if not chat:
            raise ValueError("a chat needs at least one message")
        for image in dict.fromkeys(image for message in chat for image in message.images):
            await self.teacher.encoder.aencode(image)  # off the event loop; the key and the backend then hit the memo
        wanted = range(1) if params.temperature == 0 else range(params.n)
        key = None
        got: dict[int, Completion] = {}
        if self.cache is not None:
            key = request_key(self.teacher.name, self.teacher.model, chat, params,
                              lambda ref: self.teacher.encoder.encode(ref).sha256)
            if self._key_salt:
                key = hashlib.sha256(f"{key}/{self._key_salt}".encode()).hexdigest()
            got = self.cache.get_many(key, wanted)
            self.usage.cache_hits += len(got)
        missing = [i for i in wanted if i not in got]
        if missing:
            got.update(await self._sample(self.teacher.prepare(chat), params, missing, key))
        out = [got[i] for i in wanted]
        copy = dataclasses.replace(out[0], prompt_tokens=0, completion_tokens=0)
        return out + [copy] * (params.n - len(out))

    def geometry(self, image: ImageRef) -> ImageGeometry:
        """Frames of ``image`` as sent: teacher coordinates are in its ``model`` frame."""
        return self.teacher.encoder.geometry(image)

    def snapshot(self) -> dict[str, Any]:
        """Usage counters plus provenance (backend, model, coordinate frame, images encoded)."""
        return {**self.usage.snapshot(), "images_encoded": self.teacher.encoder.encodes}

    async def aclose(self) -> None:
        await self.teacher.aclose()
        if self.cache is not None:
            self.cache.close()

    async def __aenter__(self) -> TeacherClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"TeacherClient({self.teacher!r}, {self.config!r})"

    # --- sampling --------------------------------------------------------------------------------------------

    async def _sample(self, prepared: Any, params: SamplingParams, indices: list[int],
                      key: str | None) -> dict[int, Completion]:
        """Request the samples ``indices``; returns them by index, topping up when a server returns too few.

        ``prepared`` is the backend's form of the chat (:meth:`Teacher.prepare`); ``key`` the cache key, under
        which each call's completions are stored as soon as they arrive.
        """
        size = self._n_cap or len(indices)
        chunks = [indices[j:j + size] for j in range(0, len(indices), size)]
        replies = await _all([self._request_and_cache(prepared, params, chunk, key) for chunk in chunks])
        out: dict[int, Completion] = {}
        short: list[int] = []
        for chunk, completions in zip(chunks, replies, strict=True):
            out.update(zip(chunk, completions, strict=False))  # a server giving more than asked: extras dropped
            if len(completions) < len(chunk):
                short.extend(chunk[len(completions):])
                if self._n_cap is None or len(completions) < self._n_cap:
                    self._n_cap = len(completions)
                    logger.warning("teacher %s returned %d of n=%d samples; splitting requests into n<=%d",
                                   self.teacher.name, len(completions), len(chunk), self._n_cap)
                self.usage.short_n += 1
        if short:
            out.update(await self._sample(prepared, params, short, key))
        return out

    async def _request_and_cache(self, prepared: Any, params: SamplingParams, chunk: list[int],
                                 key: str | None) -> list[Completion]:
        completions = await self._request(prepared, _chunk_params(params, chunk))
        if self.cache is not None and key is not None:
            self.cache.put_many(key, dict(zip(chunk, completions, strict=False)))
        return completions

    async def _request(self, chat: Any, params: SamplingParams) -> list[Completion]:
        """One API call with the runtime policy: the only retry loop of trace-forge."""
        cfg = self.config
        attempt = 0  # retries so far after rate limits, timeouts, 5xx and connection errors
        format_attempt = 0  # retries so far after malformed replies
        while True:
            async with self._slots:
                if self._rate is not None:
                    await self._rate.acquire()
                self.usage.requests += 1
                start = self._clock()
                try:
                    async with asyncio.timeout(cfg.timeout_s):
                        completions = await self.teacher._generate(chat, params)
                    if not completions:
                        raise TeacherFormatError(f"{self.teacher.name}: backend returned no completions")
                except TimeoutError as e:
                    error: TeacherError = TeacherTimeout(
                        f"{self.teacher.name}: no reply within {cfg.timeout_s:g}s (request cancelled)")
                    error.__cause__ = e
                except TeacherError as e:
                    error = e
                else:
                    completions = [self._capped(c, params.max_tokens) for c in completions]
                    self._record_success(completions, self._clock() - start)
                    return completions
            self.usage.errors[error.kind] += 1
            malformed = isinstance(error, TeacherFormatError)
            done, limit = (format_attempt, cfg.max_format_retries) if malformed else (attempt, cfg.max_retries)
            if not error.retryable or done >= limit:
                self.usage.failures[error.kind] += 1
                # INFO, not WARNING: the caller reports the failure with its context (question id, command).
                logger.info("teacher %s: giving up after %d attempt(s): %s", self.teacher.name,
                            attempt + format_attempt + 1, error)
                raise error
            delay = cfg.backoff(done, error.retry_after, self._rng)
            if malformed:
                self.usage.format_retries += 1
                format_attempt += 1
            else:
                self.usage.retries += 1
                attempt += 1
            logger.info("teacher %s: %s; retry %d/%d in %.2fs", self.teacher.name, error, done + 1, limit, delay)
            await self._sleep(delay)

    def _capped(self, completion: Completion, max_tokens: int) -> Completion:
        """``completion`` cut to :data:`MAX_CHARS_PER_TOKEN` characters per token of ``max_tokens``."""
        limit = max_tokens * MAX_CHARS_PER_TOKEN
        if len(completion.text) <= limit:
            return completion
        self.usage.truncated += 1
        level = logging.INFO if self._warned_long else logging.WARNING
        self._warned_long = True
        logger.log(level, "teacher %s: a reply of %d characters for max_tokens=%d was cut to %d (does the server "
                   "honour max_tokens?)", self.teacher.name, len(completion.text), max_tokens, limit)
        return dataclasses.replace(completion, text=completion.text[:limit], finish_reason="length")

    def _record_success(self, completions: list[Completion], latency: float) -> None:
        u = self.usage
        u.completions += len(completions)
        u.prompt_tokens += sum(c.prompt_tokens for c in completions)
        u.completion_tokens += sum(c.completion_tokens for c in completions)
        u.latencies.append(latency)


def _chunk_params(params: SamplingParams, chunk: list[int]) -> SamplingParams:
    """Parameters of the call for samples ``chunk``: its size as ``n``, and a seed offset by its first index."""
    seed = params.seed + chunk[0] if params.seed is not None else None
    return dataclasses.replace(params, n=len(chunk), seed=seed)


async def _all(calls: Sequence[Awaitable[_T]]) -> list[_T]:
    """Await all calls concurrently; on a failure cancel the rest and raise the first error itself."""
    if len(calls) == 1:
        return [await calls[0]]
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(c) for c in calls]  # type: ignore[arg-type]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0]  # noqa: B904 - the error keeps its own cause; the group adds nothing
    return [t.result() for t in tasks]


def build_client(
    name: str,
    model: str,
    base_urls: Sequence[str] = (),
    api_key_env: str | None = None,
    *,
    config: RuntimeConfig | None = None,
    cache_path: str | Path | None = None,
    resize: Resize | None = None,
    image_format: str = "auto",
    prices: dict[str, Price] | None = None,
    **kwargs: Any,
) -> TeacherClient:
    """Backend ``name`` wrapped in a :class:`TeacherClient`, with its image encoder, cache and usage counters.

    Args:
        name, model, base_urls, api_key_env, kwargs: as for :func:`~trace_forge.teachers.base.make_teacher`.
        config: runtime limits and retry policy.
        cache_path: SQLite response cache file (e.g. in the run directory); None disables caching.
        resize: the teacher model's pixel budget; images are sent at ``resize.model_size`` (None: original size).
        image_format: encoding of sent images: ``auto`` (JPEG for photos, PNG for screenshots; see
            :func:`~trace_forge.teachers.images.auto_format`), ``png`` or ``jpeg``.
        prices: price table for cost estimates (see :func:`~trace_forge.teachers.usage.load_price_table`).
    """
    encoder = ImageEncoder(resize, image_format)
    teacher = make_teacher(name, model, base_urls, api_key_env, encoder=encoder, **kwargs)
    cache = ResponseCache(cache_path) if cache_path is not None else None
    usage = Usage(model, prices if prices is not None else dict(DEFAULT_PRICES))
    return TeacherClient(teacher, config, cache=cache, usage=usage)
