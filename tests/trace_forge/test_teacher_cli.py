"""``trace-forge teacher check`` against loopback fake servers."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.trace_forge.fake_servers import FakeAnthropicServer, FakeOpenAIServer, rate_limited, server_error
from trace_forge.cli import app
from trace_forge.errors import ConfigError
from trace_forge.teachers import RuntimeConfig

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_real_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


def check(*args: str):
    return runner.invoke(app, ["teacher", "check", "--model", "test-model", *args])


def test_check_openai_reports_replies_usage_and_n_honoured() -> None:
    with FakeOpenAIServer() as server:
        result = check("--teacher", "openai", "--base-url", server.base_url)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "reply 1 [stop]: reply 0.0" in out and "reply 2 [stop]: reply 0.1" in out
    assert "latency:" in out and "tokens: prompt" in out and "requests: 1 (0 retries)" in out
    assert "n honoured: yes" in out
    assert "448x336 seen as 448x336" in out  # the generated test image, seen at its size without --max-pixels
    assert server.request_count == 1 and server.requests[0].n == 2 and len(server.requests[0].images) == 1
    assert server.requests[0].headers["authorization"] == "Bearer EMPTY"  # a local server needs no key


def test_check_detects_a_server_that_ignores_n() -> None:
    with FakeOpenAIServer(honour_n=False) as server:
        result = check("--teacher", "openai", "--base-url", server.base_url)
    assert result.exit_code == 0, result.output
    assert "n honoured: no" in result.stdout and "reply 2" in result.stdout
    assert server.request_count == 2


def test_check_anthropic_sends_one_request_per_sample() -> None:
    with FakeAnthropicServer() as server:
        result = check("--teacher", "anthropic", "--base-url", server.base_url)
    assert result.exit_code == 0, result.output
    assert "n honoured: n/a" in result.stdout and server.request_count == 2


def test_check_sends_the_given_image_resized(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    Image.new("RGB", (1000, 500), "navy").save(path)
    with FakeOpenAIServer() as server:
        result = check("--teacher", "openai", "--base-url", server.base_url, "--image", str(path),
                       "--max-pixels", "200000")
    assert result.exit_code == 0, result.output
    assert "1000x500 seen as 616x308" in result.stdout
    with Image.open(io.BytesIO(server.requests[0].images[0])) as im:
        assert im.size == (616, 308)


def test_check_failure_exits_1_with_one_line_naming_the_url() -> None:
    with FakeOpenAIServer(script=lambda req: server_error(500)) as server:
        result = check("--teacher", "openai", "--base-url", server.base_url, "--retries", "0")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "teacher check failed" in lines[0] and "HTTP 500" in lines[0]
    assert server.base_url in lines[0]
    assert result.stdout == "" and server.request_count == 1


def test_check_without_v1_says_to_add_it() -> None:
    with FakeOpenAIServer() as server:
        bare = server.base_url.removesuffix("/v1")
        result = check("--teacher", "openai", "--base-url", bare)
    assert result.exit_code == 1 and f"try {bare}/v1" in result.stderr.replace("\n", "")


@pytest.mark.parametrize("server_cls", [FakeOpenAIServer, FakeAnthropicServer])
def test_check_retries_as_a_search_does(server_cls: type) -> None:
    # Three rate limits in a row: more than the old single retry of the check, within the search's default.
    assert RuntimeConfig().max_retries > 3
    with server_cls(faults=[rate_limited(0)] * 3) as server:
        name = "openai" if server_cls is FakeOpenAIServer else "anthropic"
        result = check("--teacher", name, "--base-url", server.base_url)
    assert result.exit_code == 0, result.output
    assert "(3 retries)" in result.stdout and server.request_count == 3 + (1 if name == "openai" else 2)


def test_check_anthropic_passes_a_server_that_rate_limits_every_second_request() -> None:
    with FakeAnthropicServer(script=lambda req: rate_limited(0) if req.index % 2 else None) as server:
        result = check("--teacher", "anthropic", "--base-url", server.base_url)
    assert result.exit_code == 0, result.output
    assert "reply 1" in result.stdout and "reply 2" in result.stdout


def test_check_missing_key_variable_is_a_config_error() -> None:
    result = check("--teacher", "openai", "--base-url", "http://127.0.0.1:9/v1", "--api-key-env", "NO_SUCH_KEY")
    assert isinstance(result.exception, ConfigError) and "NO_SUCH_KEY" in str(result.exception)


def test_check_with_a_file_that_is_no_image_names_it_in_words(tmp_path: Path) -> None:
    from trace_forge.errors import DataError

    text = tmp_path / "README.md"
    text.write_text("# not an image\n")
    with FakeOpenAIServer() as server:
        result = runner.invoke(app, ["teacher", "check", "--teacher", "openai", "--model", "m", "--base-url",
                                     server.base_url, "--image", str(text)])
    assert isinstance(result.exception, DataError)
    message = str(result.exception)
    assert message.startswith(f"{text}: cannot read image: not an image file") and "BytesIO" not in message
