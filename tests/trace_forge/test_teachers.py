"""Teacher interface, runtime, cache, images and usage, through the real SDK clients against loopback fakes."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import io
import json
import logging
import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest
from PIL import Image

from tests.trace_forge.fake_servers import (
    FakeAnthropicServer,
    FakeOpenAIServer,
    Reply,
    dropped,
    hang,
    malformed,
    openai_no_text,
    rate_limited,
    server_error,
    too_long,
)
from trace_forge.errors import ConfigError
from trace_forge.grounding.frames import Resize
from trace_forge.teachers import (
    Completion,
    ImageEncoder,
    ImageRef,
    Message,
    PromptTooLong,
    RateLimited,
    ResponseCache,
    RuntimeConfig,
    SamplingParams,
    Teacher,
    TeacherClient,
    TeacherFormatError,
    TeacherRejected,
    TeacherTimeout,
    TeacherUnavailable,
    Usage,
    build_client,
    load_price_table,
    make_teacher,
    register_backend,
    register_teacher,
)
from trace_forge.teachers.cache import request_key
from trace_forge.teachers.errors import error_for_status
from trace_forge.teachers.images import auto_format
from trace_forge.teachers.runtime import MAX_CHARS_PER_TOKEN

FAST = RuntimeConfig(timeout_s=2.0, max_retries=2, backoff_base_s=0.01, backoff_max_s=0.05)


class RecordingSleep:
    """Stands in for asyncio.sleep: records each delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture(autouse=True)
def _no_real_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    # Local servers need no key; a developer's real key must never reach a test server.
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


def client_for(
    name: str,
    *urls: str,
    config: RuntimeConfig = FAST,
    sleep: RecordingSleep | None = None,
    cache: ResponseCache | None = None,
    resize: Resize | None = None,
    model: str = "test-model",
    **options: str,
) -> TeacherClient:
    teacher = make_teacher(name, model, urls, encoder=ImageEncoder(resize), **options)
    kwargs = {"sleep": sleep} if sleep is not None else {}
    return TeacherClient(teacher, config, cache=cache, rng=random.Random(0), **kwargs)


def ask(client: TeacherClient, chats: list[list[Message]], params: SamplingParams) -> list[list[Completion]]:
    """Run the chats concurrently through the client and close it."""

    async def go() -> list[list[Completion]]:
        async with client:
            return list(await asyncio.gather(*(client.generate(c, params) for c in chats)))

    return asyncio.run(go())


def ask_one(client: TeacherClient, params: SamplingParams | None = None, text: str = "Where is the dot?"):
    return ask(client, [user(text)], params or SamplingParams())[0]


def user(text: str, *images: Image.Image | ImageRef | Path) -> list[Message]:
    return [Message("user", (*images, text))]


def dot_image(size: tuple[int, int] = (640, 480), dot: tuple[int, int] = (100, 50)) -> Image.Image:
    image = Image.new("RGB", size, (30, 60, 90))
    image.putpixel(dot, (255, 0, 0))
    return image


# --- success paths ---------------------------------------------------------------------------------------------


def test_openai_success_sends_params_and_reads_text_usage_finish_reason() -> None:
    with FakeOpenAIServer() as server:
        client = client_for("openai", server.base_url)
        chat = [Message("system", ("Be brief.",)), *user("Where is the dot?", dot_image())]
        params = SamplingParams(n=1, temperature=0.3, top_p=0.9, max_tokens=64, stop=("</think>",), seed=7, top_k=20)
        [[reply]] = ask(client, [chat], params)

    assert reply == Completion("reply 0.0", "stop", prompt_tokens=16, completion_tokens=2, cached=False)
    body = server.requests[0].body
    assert body["model"] == "test-model"
    assert (body["n"], body["temperature"], body["top_p"], body["max_tokens"]) == (1, 0.3, 0.9, 64)
    assert (body["stop"], body["seed"], body["top_k"]) == (["</think>"], 7, 20)
    assert "repetition_penalty" not in body  # vLLM extras are omitted when None
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [p["type"] for p in body["messages"][1]["content"]] == ["image_url", "text"]
    assert client.usage.snapshot()["prompt_tokens"] == 16


def test_openai_n_is_one_request_and_tokens_are_shared_exactly() -> None:
    with FakeOpenAIServer() as server:
        client = client_for("openai", server.base_url)
        replies = ask_one(client, SamplingParams(n=3))
    assert server.request_count == 1 and server.requests[0].n == 3
    assert [r.text for r in replies] == ["reply 0.0", "reply 0.1", "reply 0.2"]
    # The call billed 4 prompt tokens once and 6 completion tokens; shares sum to exactly that.
    assert sum(r.prompt_tokens for r in replies) == 4 and sum(r.completion_tokens for r in replies) == 6
    assert (client.usage.requests, client.usage.completions, client.usage.short_n) == (1, 3, 0)


def test_server_ignoring_n_is_topped_up_and_learned() -> None:
    with FakeOpenAIServer(honour_n=False) as server:
        client = client_for("openai", server.base_url)

        async def go() -> tuple[list[Completion], list[Completion]]:
            async with client:
                first = await client.generate(user("a"), SamplingParams(n=3, seed=7))
                second = await client.generate(user("b"), SamplingParams(n=2))
                return first, second

        first, second = asyncio.run(go())
    assert len(first) == 3 and len({r.text for r in first}) == 3
    assert [r.n for r in server.requests[:3]] == [3, 1, 1]
    # Samples split over calls get distinct seeds (seed + first sample index), or they would repeat.
    assert sorted(r.body["seed"] for r in server.requests[:3]) == [7, 8, 9]
    assert client.usage.short_n == 1
    # Once the cap is known, n=2 goes straight out as two single calls, with no short reply.
    assert len(second) == 2 and [r.n for r in server.requests[3:]] == [1, 1]
    assert server.request_count == 5 and client.usage.short_n == 1


def test_anthropic_success_and_n_as_concurrent_calls() -> None:
    with FakeAnthropicServer(latency_s=0.05) as server:
        client = client_for("anthropic", server.base_url)
        chat = [Message("system", ("Be brief.",)), *user("Where?", dot_image())]
        [replies] = ask(client, [chat], SamplingParams(n=3, stop=("</answer>",), top_k=5))
    assert server.request_count == 3 and server.max_in_flight == 3
    assert sorted(r.text for r in replies) == ["reply 0.0", "reply 1.0", "reply 2.0"]
    assert all(r.finish_reason == "stop" and r.completion_tokens == 2 for r in replies)
    body = server.requests[0].body
    assert body["system"] == "Be brief." and all(m["role"] != "system" for m in body["messages"])
    assert (body["stop_sequences"], body["top_k"]) == (["</answer>"], 5)
    assert "top_p" not in body and "temperature" not in body and "seed" not in body  # API defaults: omitted
    assert body["messages"][0]["content"][0]["source"]["media_type"] == "image/png"
    assert client.usage.prompt_tokens == 3 * (2 + 1 + 10)  # each call bills its own prompt: words + 10 per image


@pytest.mark.parametrize("server_cls", [FakeOpenAIServer, FakeAnthropicServer])
def test_greedy_n_is_one_request_for_one_sample_copied(server_cls: type) -> None:
    # vLLM refuses n > 1 at temperature 0 (HTTP 400 "n must be 1 when using greedy sampling").
    with server_cls() as server:
        name = "openai" if server_cls is FakeOpenAIServer else "anthropic"
        client = client_for(name, server.base_url)
        replies = ask_one(client, SamplingParams(n=3, temperature=0))
    assert server.request_count == 1 and server.requests[0].n == 1
    assert [r.text for r in replies] == ["reply 0.0"] * 3
    assert sum(r.completion_tokens for r in replies) == replies[0].completion_tokens == 2  # what was billed
    assert (client.usage.requests, client.usage.completions) == (1, 1)


def test_anthropic_rejects_repetition_penalty() -> None:
    with FakeAnthropicServer() as server:
        client = client_for("anthropic", server.base_url)
        with pytest.raises(ConfigError, match="repetition_penalty"):
            ask_one(client, SamplingParams(repetition_penalty=1.1))
    assert server.request_count == 0


# --- faults and retries ----------------------------------------------------------------------------------------


def test_429_waits_retry_after_then_succeeds() -> None:
    sleep = RecordingSleep()
    with FakeOpenAIServer(faults=[rate_limited(0.2)]) as server:
        [reply] = ask_one(client_for("openai", server.base_url, sleep=sleep))
    assert reply.text == "reply 1.0"
    assert sleep.delays == [0.2]
    assert server.request_count == 2


def test_429_real_wait_and_counts() -> None:
    with FakeOpenAIServer(faults=[rate_limited(0.2)]) as server:
        client = client_for("openai", server.base_url)
        start = time.monotonic()
        ask_one(client)
        elapsed = time.monotonic() - start
    assert elapsed >= 0.2  # waited as told (a lower bound: true on any machine)
    assert (client.usage.retries, client.usage.requests) == (1, 2)
    assert client.usage.errors == {"rate_limited": 1} and not client.usage.failures
    assert server.requests[1].arrived - server.requests[0].arrived >= 0.2


def test_retry_after_is_capped() -> None:
    sleep = RecordingSleep()
    config = RuntimeConfig(timeout_s=2, max_retries=1, retry_after_cap_s=0.5)
    with FakeOpenAIServer(faults=[rate_limited(3600)]) as server:
        ask_one(client_for("openai", server.base_url, config=config, sleep=sleep))
    assert sleep.delays == [0.5]


@pytest.mark.parametrize("fault", [server_error(500), server_error(503), dropped()], ids=["500", "503", "reset"])
def test_server_errors_and_resets_are_retried_with_backoff(fault: Reply) -> None:
    sleep = RecordingSleep()
    with FakeOpenAIServer(faults=[fault]) as server:
        client = client_for("openai", server.base_url, sleep=sleep)
        [reply] = ask_one(client)
    assert reply.text == "reply 1.0" and server.request_count == 2
    assert client.usage.errors == {"unavailable": 1} and client.usage.retries == 1
    assert len(sleep.delays) == 1 and 0.75 * 0.01 <= sleep.delays[0] <= 0.01  # base delay less jitter


def test_hang_is_cancelled_at_timeout_and_retried() -> None:
    config = RuntimeConfig(timeout_s=0.2, max_retries=2, backoff_base_s=0.01)
    with FakeOpenAIServer(faults=[hang(30)]) as server:
        client = client_for("openai", server.base_url, config=config)
        start = time.monotonic()
        [reply] = ask_one(client)
        elapsed = time.monotonic() - start
    assert reply.text == "reply 1.0"
    assert elapsed < 15  # the hung call was cancelled, not waited out (30 s): true on a slow machine too
    assert client.usage.errors == {"timeout": 1} and client.usage.retries == 1 and client.usage.requests == 2


def test_permanent_hang_raises_teacher_timeout_after_max_retries() -> None:
    config = RuntimeConfig(timeout_s=0.15, max_retries=2, backoff_base_s=0.01)
    with FakeOpenAIServer(script=lambda req: hang(30)) as server:
        client = client_for("openai", server.base_url, config=config)
        start = time.monotonic()
        with pytest.raises(TeacherTimeout, match="0.15s"):
            ask_one(client)
        elapsed = time.monotonic() - start
    assert elapsed < 15  # three cancelled attempts, not one 30 s hang
    assert server.request_count == 3
    u = client.usage
    assert (u.requests, u.retries, u.completions) == (3, 2, 0)
    assert u.errors == {"timeout": 3} and u.failures == {"timeout": 1}


@pytest.mark.parametrize("transport", ["lean", "sdk"])
def test_permanent_500_raises_unavailable_naming_the_server(transport: str) -> None:
    with FakeOpenAIServer(script=lambda req: server_error(502)) as server:
        client = client_for("openai", server.base_url, transport=transport)
        with pytest.raises(TeacherUnavailable) as info:
            ask_one(client)
    assert info.value.status == 502 and server.base_url in str(info.value) and "internal error" in str(info.value)
    if transport == "sdk":
        assert info.value.__cause__ is not None  # the SDK's exception, chained
    assert server.request_count == 3 and client.usage.failures == {"unavailable": 1}


MALFORMED = {"json": lambda s: malformed(), "no choices": lambda s: s.empty(), "no text": lambda s: openai_no_text()}


@pytest.mark.parametrize("transport", ["lean", "sdk"])
@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_reply_is_retried_and_counted_apart(kind: str, transport: str) -> None:
    sleep = RecordingSleep()
    with FakeOpenAIServer() as server:
        server.faults.append(MALFORMED[kind](server))
        client = client_for("openai", server.base_url, sleep=sleep, transport=transport)
        [reply] = ask_one(client)
    assert reply.text == "reply 1.0" and server.request_count == 2
    u = client.usage
    assert (u.format_retries, u.retries, u.errors, u.failures) == (1, 0, {"format": 1}, {})
    assert len(sleep.delays) == 1  # backed off like a transient error


@pytest.mark.parametrize("server_cls", [FakeOpenAIServer, FakeAnthropicServer])
def test_a_reply_malformed_every_time_is_a_format_error_after_the_format_retries(server_cls: type) -> None:
    config = dataclasses.replace(FAST, max_format_retries=1)
    with server_cls() as server:
        server.script = lambda req: server.empty()
        name = "openai" if server_cls is FakeOpenAIServer else "anthropic"
        client = client_for(name, server.base_url, config=config)

        async def go() -> list[Completion]:
            async with client:
                with pytest.raises(TeacherFormatError, match="no (choices|text)"):
                    await client.generate(user("a"))
                server.script = None
                return await client.generate(user("b"))  # the client keeps working

        [reply] = asyncio.run(go())
    assert server.request_count == 3 and reply.text == "reply 2.0"
    u = client.usage
    assert (u.format_retries, u.retries, u.errors, u.failures) == (1, 0, {"format": 2}, {"format": 1})


@pytest.mark.parametrize("transport", ["lean", "sdk"])
def test_a_prompt_over_the_context_is_rejected_with_the_servers_words(transport: str) -> None:
    with FakeOpenAIServer(faults=[too_long(2314, 2048)]) as server:
        client = client_for("openai", server.base_url, transport=transport)
        with pytest.raises(PromptTooLong) as info:
            ask_one(client)
    assert isinstance(info.value, TeacherRejected) and info.value.status == 400
    assert "Input length (2314) exceeds model's maximum context length (2048)" in str(info.value)
    assert server.request_count == 1 and client.usage.failures == {"prompt_too_long": 1}


@pytest.mark.parametrize("transport", ["lean", "sdk"])
def test_a_404_from_a_base_url_without_v1_suggests_adding_it(transport: str) -> None:
    with FakeOpenAIServer() as server:
        bare = server.base_url.removesuffix("/v1")
        with pytest.raises(TeacherRejected, match=f"404.*does not end in /v1: try {bare}/v1$"):
            ask_one(client_for("openai", bare, transport=transport))
        with FakeAnthropicServer() as other:
            with pytest.raises(TeacherRejected, match=f"404.*ends in /v1.*try {other.base_url}$"):
                ask_one(client_for("anthropic", other.base_url + "/v1"))
        wrong_model = Reply(404, {"error": {"message": "The model `x` does not exist."}})
        server.faults.append(wrong_model)
        with pytest.raises(TeacherRejected) as info:
            ask_one(client_for("openai", server.base_url, transport=transport))
    assert "does not exist" in str(info.value) and "try" not in str(info.value)  # /v1 is there: no advice


def test_client_errors_are_not_retried() -> None:
    with FakeOpenAIServer(faults=[Reply(401, {"error": {"message": "bad key"}})]) as server:
        client = client_for("openai", server.base_url)
        with pytest.raises(TeacherRejected, match="401"):
            ask_one(client)
    assert server.request_count == 1 and client.usage.retries == 0


def test_anthropic_sdk_errors_are_translated_and_retried() -> None:
    sleep = RecordingSleep()
    with FakeAnthropicServer(faults=[rate_limited(0.1), server_error(529)]) as server:
        client = client_for("anthropic", server.base_url, sleep=sleep)
        [reply] = ask_one(client)
    assert reply.text == "reply 2.0" and server.request_count == 3
    assert client.usage.errors == {"rate_limited": 1, "unavailable": 1} and sleep.delays[0] == 0.1


@pytest.mark.parametrize(
    ("status", "cls"),
    [(429, RateLimited), (408, TeacherTimeout), (409, TeacherUnavailable), (503, TeacherUnavailable),
     (400, TeacherRejected), (404, TeacherRejected)],
)
def test_error_for_status(status: int, cls: type) -> None:
    error = error_for_status(status, {"Retry-After": "3"}, "x")
    assert type(error) is cls and error.status == status and error.retry_after == 3.0


def test_backoff_is_exponential_capped_and_jittered() -> None:
    config = RuntimeConfig(backoff_base_s=0.5, backoff_max_s=4.0, retry_after_cap_s=10)
    rng = random.Random(1)
    delays = [config.backoff(i, None, rng) for i in range(6)]
    for i, d in enumerate(delays):
        nominal = min(4.0, 0.5 * 2**i)
        assert 0.75 * nominal <= d <= nominal
    assert config.backoff(0, 7.0, rng) == 7.0 and config.backoff(0, 99.0, rng) == 10


def test_runtime_config_validation() -> None:
    with pytest.raises(ConfigError, match="concurrency=0.*timeout_s=0"):
        RuntimeConfig(concurrency=0, timeout_s=0)
    with pytest.raises(ConfigError, match="top_p"):
        SamplingParams(top_p=0)


# --- limits and replicas ---------------------------------------------------------------------------------------


def test_concurrency_limit_is_respected_and_reached() -> None:
    config = RuntimeConfig(concurrency=3, timeout_s=5)
    with FakeOpenAIServer(latency_s=0.05) as server:
        client = client_for("openai", server.base_url, config=config)
        replies = ask(client, [user(f"q{i}") for i in range(12)], SamplingParams())
    assert len(replies) == 12 and server.request_count == 12
    assert server.max_in_flight == 3


def test_requests_per_second_spaces_request_starts() -> None:
    # A frozen clock and a recording sleep make the schedule exact, whatever the machine's load.
    config = RuntimeConfig(requests_per_second=40, timeout_s=5)
    sleep = RecordingSleep()
    with FakeOpenAIServer() as server:
        client = TeacherClient(make_teacher("openai", "test-model", (server.base_url,)), config,
                               sleep=sleep, clock=lambda: 100.0, rng=random.Random(0))
        ask(client, [user(f"q{i}") for i in range(5)], SamplingParams())
        assert server.request_count == 5
    assert sorted(sleep.delays) == pytest.approx([k / 40 for k in range(1, 5)])


def test_load_is_spread_over_replicas() -> None:
    config = RuntimeConfig(concurrency=8, timeout_s=5)
    with FakeOpenAIServer(latency_s=0.05) as a, FakeOpenAIServer(latency_s=0.05) as b:
        client = client_for("openai", a.base_url, b.base_url, config=config)
        ask(client, [user(f"q{i}") for i in range(8)], SamplingParams())
    assert (a.request_count, b.request_count) == (4, 4)


# --- cache -----------------------------------------------------------------------------------------------------


def test_second_run_with_the_cache_sends_no_requests(tmp_path: Path) -> None:
    chats = [user(f"q{i}", dot_image()) for i in range(3)]
    with FakeOpenAIServer() as first:
        cold = ask(client_for("openai", first.base_url, cache=ResponseCache(tmp_path / "c.sqlite")), chats,
                   SamplingParams(n=2))
    with FakeOpenAIServer() as second:
        client = client_for("openai", second.base_url, cache=ResponseCache(tmp_path / "c.sqlite"))
        warm = ask(client, chats, SamplingParams(n=2))
    assert first.request_count == 3 and second.request_count == 0
    assert [[r.text for r in rs] for rs in warm] == [[r.text for r in rs] for rs in cold]
    assert all(r.cached and r.prompt_tokens == 0 for rs in warm for r in rs)
    assert client.usage.cache_hits == 6 and client.usage.requests == 0


def test_partially_cached_n_requests_only_the_missing_samples(tmp_path: Path) -> None:
    with FakeOpenAIServer() as server:
        first = ask_one(client_for("openai", server.base_url, cache=ResponseCache(tmp_path / "c.sqlite")),
                        SamplingParams(n=2))
        client = client_for("openai", server.base_url, cache=ResponseCache(tmp_path / "c.sqlite"))
        more = ask_one(client, SamplingParams(n=3))
    assert server.request_count == 2 and server.requests[1].n == 1
    assert [r.text for r in more[:2]] == [r.text for r in first] and more[2].text == "reply 1.0"
    assert [r.cached for r in more] == [True, True, False] and client.usage.cache_hits == 2


def test_a_runaway_reply_is_cut_before_it_reaches_the_cache(tmp_path: Path) -> None:
    cap = 10 * MAX_CHARS_PER_TOKEN
    with FakeOpenAIServer(reply_text=lambda req, i: "x" * 100_000 if i == 0 else "short") as server:
        client = client_for("openai", server.base_url, cache=ResponseCache(tmp_path / "c.sqlite"))
        fresh = ask_one(client, SamplingParams(n=2, max_tokens=10))
        again = client_for("openai", server.base_url, cache=ResponseCache(tmp_path / "c.sqlite"))
        cached = ask_one(again, SamplingParams(n=2, max_tokens=10))
    assert [(r.text, r.finish_reason) for r in fresh] == [("x" * cap, "length"), ("short", "stop")]
    assert [r.text for r in cached] == [r.text for r in fresh] and server.request_count == 1
    assert client.usage.truncated == 1 and client.snapshot()["truncated"] == 1


def test_replies_are_cached_as_they_arrive_so_a_kill_repays_only_what_was_in_flight(tmp_path: Path) -> None:
    # Anthropic has no n: n=2 is two concurrent calls. The second hangs (a kill would lose it); the first's
    # reply is in the cache all the same, and the next run asks only for the second.
    config = RuntimeConfig(timeout_s=0.3, max_retries=0)
    with FakeAnthropicServer(script=lambda req: hang(30) if req.index == 1 else None) as server:
        with pytest.raises(TeacherTimeout):
            ask_one(client_for("anthropic", server.base_url, config=config,
                               cache=ResponseCache(tmp_path / "c.sqlite")), SamplingParams(n=2))
    with FakeAnthropicServer() as server:
        client = client_for("anthropic", server.base_url, cache=ResponseCache(tmp_path / "c.sqlite"))
        replies = ask_one(client, SamplingParams(n=2))
    # The two calls race to the server, so which sample hung is not fixed: one of them comes from the cache.
    assert server.request_count == 1 and client.usage.cache_hits == 1
    assert sorted(r.cached for r in replies) == [False, True]


def test_request_key_ignores_n_and_image_identity_but_not_content_or_params() -> None:
    encoder = ImageEncoder()

    def key(chat: list[Message], params: SamplingParams) -> str:
        return request_key("openai", "m", chat, params, lambda ref: encoder.encode(ref).sha256)

    base = key(user("q", dot_image()), SamplingParams(n=1))
    assert key(user("q", dot_image()), SamplingParams(n=5)) == base
    assert key(user("q", dot_image(dot=(1, 1))), SamplingParams()) != base
    assert key(user("q", dot_image()), SamplingParams(temperature=0.5)) != base
    assert key(user("q2", dot_image()), SamplingParams()) != base


def test_cache_is_wal_and_safe_for_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite"
    caches = [ResponseCache(path, busy_timeout_s=10) for _ in range(4)]

    def write(w: int) -> None:
        for i in range(50):
            caches[w].put_many(f"k{w}-{i}", {0: Completion(f"t{w}-{i}", "stop"), 1: Completion("x", None)})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(caches[0]) == 400
    assert caches[1].get_many("k3-49", [0, 1, 2])[0].text == "t3-49"
    for c in caches:
        c.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# --- keys, images, usage, registry -----------------------------------------------------------------------------


def test_api_key_never_logged_or_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-test-SECRET-4242"
    monkeypatch.setenv("MY_TEACHER_KEY", secret)
    caplog.set_level(logging.DEBUG)  # every logger, the SDKs' and httpx's included
    # Request 0 is rate limited (a logged retry), request 1 succeeds, requests 2.. are malformed (a logged failure).
    with FakeOpenAIServer(faults=[rate_limited(0)], script=lambda r: malformed() if r.index >= 2 else None) as server:
        client = build_client("openai", "gpt-4o", [server.base_url], api_key_env="MY_TEACHER_KEY",
                              config=FAST, cache_path=tmp_path / "run" / "cache.sqlite")

        async def go() -> None:
            async with client:
                await client.generate(user("a", dot_image()), SamplingParams(n=2))
                with pytest.raises(TeacherFormatError):
                    await client.generate(user("b"))

        asyncio.run(go())
    assert server.requests[0].headers["authorization"] == f"Bearer {secret}"  # the key was really used
    assert "retry" in caplog.text and secret not in caplog.text
    for f in (tmp_path / "run").iterdir():
        assert secret.encode() not in f.read_bytes(), f
    assert secret not in repr(client) + repr(client.teacher) + json.dumps(client.snapshot())


@pytest.mark.parametrize("server_cls", [FakeOpenAIServer, FakeAnthropicServer])
def test_provider_key_never_reaches_a_base_url_server_unless_named(
    monkeypatch: pytest.MonkeyPatch, server_cls: type
) -> None:
    name = "openai" if server_cls is FakeOpenAIServer else "anthropic"
    provider_env = f"{name.upper()}_API_KEY"
    monkeypatch.setenv(provider_env, "sk-provider-SECRET")
    monkeypatch.setenv("MY_SERVER_KEY", "server-key")
    with server_cls() as server:
        ask_one(client_for(name, server.base_url))
        named = make_teacher(name, "test-model", [server.base_url], api_key_env="MY_SERVER_KEY")
        ask_one(TeacherClient(named, FAST, rng=random.Random(0)))
    sent = [" ".join(r.headers.get(h, "") for h in ("authorization", "x-api-key")) for r in server.requests]
    assert "SECRET" not in sent[0] and "EMPTY" in sent[0]
    assert "server-key" in sent[1]


def test_missing_key_errors_name_the_variable_only(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="NOPE_KEY"):
        make_teacher("openai", "m", ["http://127.0.0.1:1/v1"], api_key_env="NOPE_KEY")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        make_teacher("openai", "gpt-4o")  # the real API needs a key; only --base-url servers default to EMPTY


def test_image_is_encoded_once_resized_and_sent_identically(tmp_path: Path) -> None:
    image = dot_image((640, 480), dot=(320, 240))
    image.save(tmp_path / "same.png")
    resize = Resize(max_pixels=50_000)
    refs = [ImageRef(image), ImageRef(image), ImageRef(image.copy()), ImageRef(tmp_path / "same.png")]
    with FakeOpenAIServer() as server:
        client = client_for("openai", server.base_url, resize=resize)
        chats = [user(f"q{i}", ref) for i, ref in enumerate(refs)] + [user("again", refs[0])]
        ask(client, chats, SamplingParams())
    assert client.teacher.encoder.encodes == 1
    sent = {r.images[0] for r in server.requests}
    assert len(sent) == 1 and server.request_count == 5
    with Image.open(io.BytesIO(sent.pop())) as im:
        assert im.size == resize.model_size(640, 480) == (252, 168)
    geometry = client.geometry(refs[3])
    x, y = geometry.convert(125.5, 83.5, "model", "pixel")  # the centre of the sent image (cell centres)...
    assert (round(x, 6), round(y, 6)) == (319.5, 239.5)  # ...is the centre of the original
    assert client.snapshot()["teacher"]["coordinate_frame"] == "model" and client.snapshot()["images_encoded"] == 1


def test_encoder_memo_is_bounded_so_a_long_run_keeps_flat_memory() -> None:
    encoder = ImageEncoder(max_images=4)
    alive = []
    for i in range(20):  # one question after another: each ref dies when its question ends
        alive.append(weakref.ref(encoder.encode(ImageRef(dot_image((64, 48), dot=(i, i))))))
    gc.collect()
    assert encoder.encodes == 20
    assert sum(r() is not None for r in alive) <= 4  # only the most recent few are still held
    live = ImageRef(dot_image((64, 48), dot=(40, 40)))
    first = encoder.encode(live)
    for i in range(10):  # however many images pass since, a live ref keeps its encoding: never paid twice
        encoder.encode(ImageRef(dot_image((64, 48), dot=(i, 30))))
    assert encoder.encode(live) is first and encoder.encodes == 31


def test_unresized_jpeg_and_png_files_are_sent_as_their_own_bytes(tmp_path: Path) -> None:
    photo, shot, rgba = tmp_path / "photo.jpg", tmp_path / "shot.png", tmp_path / "alpha.png"
    dot_image((640, 480)).save(photo, quality=90)
    dot_image((320, 200)).save(shot)
    dot_image((320, 200)).convert("RGBA").save(rgba, compress_level=1)  # unlike what the encoder would write
    with Image.open(photo) as im:
        canvas = im.convert("RGB")  # what Sample.canvas() holds: the decoded pixels, tied to their file
    refs = [ImageRef(photo), ImageRef(canvas, file=photo), ImageRef(shot), ImageRef(rgba)]
    with FakeOpenAIServer() as server:
        client = client_for("openai", server.base_url)
        ask(client, [user(f"q{i}", ref) for i, ref in enumerate(refs)] + [user("again", refs[1])], SamplingParams())
    sent = {r.texts[-1]: r.images[0] for r in server.requests}
    assert sent["q0"] == sent["q1"] == sent["again"] == photo.read_bytes() and sent["q2"] == shot.read_bytes()
    assert sent["q3"] != rgba.read_bytes() and Image.open(io.BytesIO(sent["q3"])).mode == "RGBA"  # re-encoded
    assert client.teacher.encoder.encode(refs[0]).mime == "image/jpeg"
    assert client.teacher.encoder.encodes == 3  # the JPEG once for both refs, the PNG, the RGBA re-encode
    # A resize that scales, or a PIL image that is not the file's size, is never replaced by the file.
    resized = ImageEncoder(Resize(max_pixels=50_000)).encode(ImageRef(photo))
    assert resized.mime == "image/jpeg" and resized.model_size == (252, 168)  # a JPEG photo stays JPEG
    cropped = ImageEncoder(format="png").encode(ImageRef(canvas.crop((0, 0, 100, 100)), file=photo))
    assert cropped.model_size == (100, 100) and cropped.mime == "image/png"


def test_jpeg_option_encodes_at_quality_95() -> None:
    image = Image.effect_noise((96, 64), 40).convert("RGB")
    expected = io.BytesIO()
    image.save(expected, format="JPEG", quality=95)  # Pillow's default 75 would blur the details steps point at
    encoded = ImageEncoder(format="JPEG").encode(ImageRef(image))
    assert encoded.mime == "image/jpeg" and encoded.data == expected.getvalue()


def colour_noise(size: tuple[int, int]) -> Image.Image:
    """A photo stand-in: thousands of colours (grey noise has only 256)."""
    return Image.merge("RGB", [Image.effect_noise(size, 60 + 10 * band) for band in range(3)])


def test_auto_format_keeps_jpeg_photos_jpeg_and_screenshots_png(tmp_path: Path) -> None:
    photo = colour_noise((300, 200))
    shot = dot_image((300, 200))  # two colours, like a flat GUI screenshot
    photo.save(tmp_path / "photo.jpg", quality=90)
    photo.save(tmp_path / "photo.png")
    shot.save(tmp_path / "shot.jpg")
    resize = Resize(max_pixels=30_000)  # so that no file is sent as it is

    def mime(source: Image.Image | Path, fmt: str = "auto") -> str:
        return ImageEncoder(resize, fmt).encode(ImageRef(source)).mime

    # the source file decides first, then (without a file) the number of colours
    assert mime(tmp_path / "photo.jpg") == mime(tmp_path / "shot.jpg") == mime(photo) == "image/jpeg"
    assert mime(tmp_path / "photo.png") == mime(shot) == mime(photo.convert("RGBA")) == "image/png"
    assert mime(tmp_path / "photo.jpg", "png") == "image/png" and mime(shot, "JPEG") == "image/jpeg"
    assert auto_format(Image.new("RGB", (64, 64), "white"), "BMP") == "PNG"
    with pytest.raises(ValueError, match="auto, png, jpeg"):
        ImageEncoder(format="gif")


def test_the_image_part_is_built_once_and_sent_in_every_request_as_is() -> None:
    ref = ImageRef(colour_noise((200, 150)))
    with FakeOpenAIServer(honour_n=False) as server:
        client = client_for("openai", server.base_url)
        ask(client, [user(f"q{i}", ref) for i in range(3)], SamplingParams(n=2))  # 3 chats, each split in two
    encoded = client.teacher.encoder.encode(ref)
    assert json.loads(encoded.data_url_json) == encoded.data_url == f"data:image/jpeg;base64,{encoded.base64}"
    assert server.request_count == 6 and {r.images[0] for r in server.requests} == {encoded.data}
    assert encoded.mime == "image/jpeg" and client.teacher.encoder.encodes == 1


def test_lean_and_sdk_transports_send_the_same_body() -> None:
    chat = [Message("system", ("Be brief. \u00e9\u4e2d",)), *user("Where is the \"dot\"?", dot_image()),
            Message("assistant", ("<think>(1, 2)</think>",)), Message("tool", (dot_image((32, 32), dot=(5, 5)), "crop"))]
    params = SamplingParams(n=2, temperature=0.7, top_p=0.9, max_tokens=64, stop=("</think>",), seed=7, top_k=20,
                            repetition_penalty=1.05)
    bodies = []
    for transport in ("lean", "sdk"):
        with FakeOpenAIServer() as server:
            client = client_for("openai", server.base_url, transport=transport)
            replies = ask(client, [chat], params)[0]
        assert [r.text for r in replies] == ["reply 0.0", "reply 0.1"] and replies[0].prompt_tokens > 0
        bodies.append(server.requests[0].body)
    assert bodies[0] == bodies[1]


def test_the_sdk_carries_requests_that_a_proxy_variable_routes(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy",
                 "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert make_teacher("openai", "m", ["http://gpu1:8000/v1"]).transport == "lean"
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert make_teacher("openai", "m", ["http://gpu1:8000/v1"]).transport == "sdk"
    monkeypatch.setenv("NO_PROXY", "gpu1")
    assert make_teacher("openai", "m", ["http://gpu1:8000/v1"]).transport == "lean"
    with pytest.raises(ConfigError, match="auto, lean or sdk"):
        make_teacher("openai", "m", ["http://gpu1:8000/v1"], transport="h2")


def test_a_one_file_sample_is_sent_as_its_file_and_a_composed_one_as_its_canvas() -> None:
    from trace_forge.tasks import get_task

    sample = next(iter(get_task("vstar").load(Path(__file__).parents[2] / "data" / "samples" / "vstar", limit=1)))
    assert ImageEncoder().encode(ImageRef.of_sample(sample)).data == Path(sample.images[0]).read_bytes()
    pair = ImageRef.of_sample(dataclasses.replace(sample, images=[sample.images[0]] * 2))
    assert pair.file is None and pair.open().size[0] == 2 * sample.canvas().size[0]
    # Resized: decoded once for both refs (the file identifies the pixels), and no ref holds the decoded photo.
    encoder = ImageEncoder(Resize(max_pixels=50_000))
    a, b = ImageRef.of_sample(sample), ImageRef.of_sample(sample)
    assert encoder.encode(a) is encoder.encode(b) and encoder.encodes == 1
    assert not isinstance(a.source, Image.Image)
    with Image.open(io.BytesIO(encoder.encode(a).data)) as sent:
        assert sent.size == encoder.resize.model_size(*sample.canvas().size)


def test_aencode_and_the_runtime_encode_off_the_event_loop() -> None:
    class SlowEncoder(ImageEncoder):
        def _encode(self, image: Image.Image, fmt: str):  # a 40 MP photo: seconds of CPU
            time.sleep(0.4)
            return super()._encode(image, fmt)

    async def ticks_while(work) -> tuple[int, object]:
        ticks = 0
        task = asyncio.ensure_future(work)
        while not task.done():
            await asyncio.sleep(0.01)
            ticks += 1
        return ticks, task.result()

    encoder = SlowEncoder()
    ref = ImageRef(dot_image())
    ticks, encoded = asyncio.run(ticks_while(encoder.aencode(ref)))
    assert ticks >= 10 and encoded is encoder.encode(ref) and encoder.encodes == 1
    with FakeOpenAIServer() as server:
        teacher = make_teacher("openai", "m", [server.base_url], encoder=SlowEncoder())
        client = TeacherClient(teacher, FAST, rng=random.Random(0))
        ticks, _ = asyncio.run(ticks_while(client.generate(user("q", dot_image((64, 64), dot=(5, 5))))))
    assert ticks >= 10  # other questions' requests kept running while the image was encoded


def test_encoding_threads_leave_a_core_to_the_event_loop() -> None:
    busy, most = [0], [0]
    lock = threading.Lock()

    class CountingEncoder(ImageEncoder):
        def _encode(self, image: Image.Image, fmt: str):
            with lock:
                busy[0] += 1
                most[0] = max(most[0], busy[0])
            time.sleep(0.05)
            with lock:
                busy[0] -= 1
            return super()._encode(image, fmt)

    encoder = CountingEncoder()
    threads = [threading.Thread(target=encoder.encode, args=(ImageRef(dot_image((64, 48), dot=(i, i))),))
               for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert encoder.encodes == 8 and most[0] == max(1, (os.cpu_count() or 2) - 1)


def test_usage_percentiles_and_cost(tmp_path: Path) -> None:
    u = Usage("gpt-4o-mini-2024-07-18", prompt_tokens=1_000_000, completion_tokens=2_000_000,
              latencies=[float(i) for i in range(1, 101)])
    assert u.cost_usd() == pytest.approx(0.15 + 2 * 0.60)  # longest prefix: gpt-4o-mini, not gpt-4o
    assert u.latency_percentiles() == {"p50": 50.0, "p90": 90.0, "p99": 99.0}
    assert Usage("Qwen/Qwen2.5-VL-72B-Instruct", prompt_tokens=5).cost_usd() is None  # unknown, not free
    table = tmp_path / "prices.json"
    table.write_text(json.dumps({"Qwen/": {"input": 0.5, "output": 1.0}}))
    local = Usage("Qwen/Qwen2.5-VL-72B-Instruct", prices=load_price_table(table), prompt_tokens=2_000_000)
    assert local.cost_usd() == pytest.approx(1.0) and local.snapshot()["cost_usd"] == pytest.approx(1.0)
    table.write_text(json.dumps({"x": {"input": "cheap"}}))
    with pytest.raises(ConfigError, match="'x'"):
        load_price_table(table)


class _Echo(Teacher):
    name = "echo-test"
    supports_n = False

    async def _generate(self, chat, params):
        return [Completion(chat[-1].text, "stop")]


def test_registry_custom_backends_and_errors() -> None:
    register_teacher(_Echo)
    client = TeacherClient(make_teacher("echo-test", "m"), FAST)
    assert [r.text for r in ask_one(client, SamplingParams(n=2), text="hi")] == ["hi", "hi"]
    with pytest.raises(ConfigError, match="does not accept"):
        make_teacher("echo-test", "m", ["http://x/v1"])
    with pytest.raises(ConfigError, match="unknown teacher 'nope'.*anthropic, .*openai"):
        make_teacher("nope", "m")
    register_backend("ghost-test", "trace_forge.teachers.no_such_module")
    with pytest.raises(ConfigError, match="not available"):
        make_teacher("ghost-test", "m")


def test_teachers_package_imports_no_sdk_or_torch() -> None:
    code = ("import sys, trace_forge.teachers, trace_forge.cli.teacher; "
            "print(sorted(m for m in ('openai', 'anthropic', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_message_validation() -> None:
    with pytest.raises(ValueError, match="user and tool messages only"):
        Message("system", (dot_image(), "x"))
    with pytest.raises(ValueError, match="role"):
        Message("robot", ("x",))  # type: ignore[arg-type]
    assert Message("user", "plain").content == ("plain",)
    assert Message("tool", (dot_image(), "crop")).images  # a zoom result carries its crop


def test_tool_turns_reach_chat_apis_as_user_turns_in_tool_response_tags() -> None:
    chat = [*user("Where is the dot?", dot_image()), Message("assistant", ("<tool_call>{}</tool_call>",)),
            Message("tool", (dot_image((64, 64), (5, 5)), "Here is the crop."))]
    with FakeOpenAIServer() as server:
        ask(client_for("openai", server.base_url), [chat], SamplingParams())
    tool_turn = server.requests[0].body["messages"][-1]
    assert tool_turn["role"] == "user"
    assert [p.get("text", p["type"]) for p in tool_turn["content"]] == [
        "<tool_response>\n", "image_url", "Here is the crop.", "\n</tool_response>"]
    with FakeAnthropicServer() as server:
        ask(client_for("anthropic", server.base_url), [chat], SamplingParams())
    tool_turn = server.requests[0].body["messages"][-1]
    assert tool_turn["role"] == "user"
    assert [p.get("text", p["type"]) for p in tool_turn["content"]] == [
        "<tool_response>\n", "image", "Here is the crop.", "\n</tool_response>"]
