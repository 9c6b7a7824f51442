"""``grounded-rl eval`` against servers that refuse or garble some requests: one bad item fails its own sample, the
run finishes with a summary that counts it, and ``--max-failure-rate`` decides the exit code.

The scripted server of ``test_eval`` answers every question right or wrong by a known rule; here some questions get
vLLM's context-overflow 400, malformed bodies, or an auth error instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from grounded_rl.cli import app
from grounded_rl.eval import SAMPLES_FILE, SUMMARY_FILE, SUMMARY_MD, TooManyFailures, evaluate
from tests.grounded_rl.test_eval import DATA, Script, config, load, right_rule, run
from tests.trace_forge.fake_servers import FakeOpenAIServer, Reply, Request, hang, malformed
from trace_forge.durable import OutputLock, read_records
from trace_forge.errors import ConfigError
from trace_forge.teachers import TeacherRejected

# What a vLLM server answers for a prompt longer than --max-model-len (observed, see real-vllm-cpu.md).
OVERFLOW = Reply(400, {"object": "error", "type": "BadRequestError", "param": None, "code": 400,
                       "message": "Input length (2314) exceeds model's maximum context length (2048)."})
UNAUTHORIZED = Reply(401, {"error": {"message": "invalid api key", "type": "authentication_error"}})


def serve_failing(script: Script, fail: Callable[[int, Request], Reply | None]) -> FakeOpenAIServer:
    """The scripted model, except that ``fail(question index, request)`` may answer a request instead."""

    def reply(request: Request, k: int) -> str:
        i, sample, geometry = script.lookup(request)
        return script.answer(sample, geometry, right_rule(i, k))

    return FakeOpenAIServer(reply_text=reply, script=lambda request: fail(script.lookup(request)[0], request))


def test_a_context_overflow_fails_its_question_only_and_is_counted(tmp_path: Path) -> None:
    task, k = "screenspot-v2", 2
    samples = load(task)
    script = Script(samples)
    with serve_failing(script, lambda i, request: OVERFLOW if i == 1 else None) as server:
        summary = run(config(task, samples=k, max_failure_rate=0.5), server, tmp_path)
    records = {(r["question_id"], r["k"]): r for r in read_records(tmp_path / SAMPLES_FILE)}
    assert len(records) == len(samples) * k  # every sample recorded, the refused ones too
    for j in range(k):
        failed = records[(samples[1].id, j)]
        assert failed["error"]["kind"] == "prompt_too_long" and "maximum context length" in failed["error"]["message"]
        assert failed["score"] == 0.0 and failed["answer"] is None and failed["turns"] == []
    assert all(r["error"] is None for key, r in records.items() if key[0] != samples[1].id)
    counts = summary["counts"]
    assert counts["failed"] == k and counts["errors"] == {"prompt_too_long": k} and counts["samples"] == len(samples) * k
    assert counts["answered"] == (len(samples) - 1) * k
    # The failed question scores 0 in the benchmark's aggregation; the others as the rule says.
    right = sum(right_rule(i, j) for i in range(len(samples)) for j in range(k) if i != 1)
    assert sum(r["score"] for r in records.values()) == right
    assert f"{k} of {len(samples) * k} samples failed (prompt_too_long {k})" in (tmp_path / SUMMARY_MD).read_text()


def test_the_failure_rate_decides_the_outcome_and_a_rerun_asks_failed_samples_again(tmp_path: Path) -> None:
    task = "vstar"
    samples = load(task, limit=4)
    script = Script(samples)
    broken = {2}
    with serve_failing(script, lambda i, request: malformed() if i in broken else None) as server:
        with pytest.raises(TooManyFailures, match=r"1 of 4 samples failed \(format 1;") as raised:
            run(config(task, limit=4), server, tmp_path)  # the default rate: no failure accepted
        assert raised.value.summary["counts"]["errors"] == {"format": 1}
        assert json.loads((tmp_path / SUMMARY_FILE).read_text())["counts"]["failed"] == 1  # written all the same
        broken.clear()  # the server is fixed
        before = server.request_count
        summary = run(config(task, limit=4), server, tmp_path)
        assert server.request_count - before == 1  # only the failed question is asked again
        assert summary["counts"]["failed"] == 0 and summary["counts"]["samples"] == 4
        assert run(config(task, limit=4), server, tmp_path / "fresh")["metrics"] == summary["metrics"]


def test_multi_turn_overflow_keeps_the_turns_before_it(tmp_path: Path) -> None:
    """A dialog grows with every crop: the turn that no longer fits fails the sample, its earlier turns stay."""
    samples = load("vstar", limit=2)
    script = Script(samples)
    zoom = '<think> Look closer (20, 20). </think>\n<tool_call>\n{"name": "zoom", "arguments": {"point": [20, 20]}}' \
           "\n</tool_call>"

    def reply(request: Request, k: int) -> str:
        i, sample, geometry = script.lookup(request)
        return zoom if len(request.images) == 1 else script.answer(sample, geometry, True)

    def fail(request: Request) -> Reply | None:
        return OVERFLOW if script.lookup(request)[0] == 0 and len(request.images) > 1 else None

    with FakeOpenAIServer(reply_text=reply, script=fail) as server:
        summary = run(config("vstar", limit=2, multi_turn=True, max_failure_rate=1.0), server, tmp_path)
    first, second = sorted(read_records(tmp_path / SAMPLES_FILE), key=lambda r: r["question_id"] != samples[0].id)
    assert first["error"]["kind"] == "prompt_too_long" and len(first["turns"]) == 1 and len(first["zooms"]) == 1
    assert first["answer"] is None and first["score"] == 0.0
    assert second["error"] is None and second["score"] == 1.0 and len(second["turns"]) == 2
    assert summary["counts"]["failed"] == 1 and summary["counts"]["answered"] == 1


def test_an_auth_error_stops_the_run_instead_of_failing_every_sample(tmp_path: Path) -> None:
    samples = load("vstar", limit=3)
    with serve_failing(Script(samples), lambda i, request: UNAUTHORIZED) as server:
        with pytest.raises(TeacherRejected, match="401"):
            run(config("vstar", limit=3, concurrency=1), server, tmp_path)
        assert server.request_count == 1
    assert not (tmp_path / SUMMARY_FILE).exists()
    assert not list(read_records(tmp_path / SAMPLES_FILE))  # nothing recorded as answered wrong


def test_a_second_eval_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "ev"
    with OutputLock(out, "eval"):  # held here as another process would hold it (the lock is per open file)
        with pytest.raises(ConfigError, match=rf"{out} is in use by another process \(pid \d+ eval\)"):
            evaluate(config("vstar", limit=1, base_urls=["http://127.0.0.1:9/v1"]), out)
    assert not (out / SAMPLES_FILE).exists()


def test_greedy_samples_never_ask_a_server_for_n_over_1(tmp_path: Path) -> None:
    samples = load("vstar", limit=2)
    refuse = Reply(400, {"object": "error", "type": "BadRequestError", "code": 400,
                         "message": "n must be 1 when using greedy sampling."})
    with serve_failing(Script(samples), lambda i, request: refuse if request.n > 1 else None) as server:
        summary = run(config("vstar", limit=2, samples=3, temperature=0.0), server, tmp_path)
    assert summary["counts"]["failed"] == 0 and summary["counts"]["samples"] == 6


def test_cli_timeout_and_retries_bound_a_dead_server_and_a_failed_run_still_prints_its_table(tmp_path: Path) -> None:
    data = str(DATA["vstar"][0])
    with FakeOpenAIServer(faults=[hang(30.0)] * 3) as server:
        result = CliRunner().invoke(app, ["eval", "--task", "vstar", "--data-dir", data, "--limit", "1", "--model",
                                          "m", "--backend", "openai", "--base-url", server.base_url, "--timeout",
                                          "0.3", "--max-retries", "1", "--out", str(tmp_path / "dead")])
        assert server.request_count == 2  # the first attempt and one retry, each cancelled after 0.3 s
    assert result.exit_code != 0 and "no reply within 0.3s" in str(result.exception)

    samples = load("vstar", limit=2)
    with serve_failing(Script(samples), lambda i, request: OVERFLOW if i == 0 else None) as server:
        result = CliRunner().invoke(app, ["eval", "--task", "vstar", "--data-dir", data, "--limit", "2", "--model",
                                          "m", "--backend", "openai", "--base-url", server.base_url,
                                          "--out", str(tmp_path / "ev")])
        assert isinstance(result.exception, TooManyFailures) and "1 of 2 samples failed" in str(result.exception)
        assert "avg@1" in result.output  # the table, before the error
        accepted = CliRunner().invoke(app, ["eval", "--task", "vstar", "--data-dir", data, "--limit", "2", "--model",
                                            "m", "--backend", "openai", "--base-url", server.base_url,
                                            "--max-failure-rate", "0.5", "--out", str(tmp_path / "ev")])
    assert accepted.exit_code == 0, accepted.output


def test_demo_says_why_there_is_no_answer(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (64, 48), "white").save(tmp_path / "scene.png")
    with FakeOpenAIServer(faults=[OVERFLOW]) as server:
        result = CliRunner().invoke(app, ["demo", "--model", "m", "--image", str(tmp_path / "scene.png"), "--query",
                                          "What is it?", "--backend", "openai", "--base-url", server.base_url,
                                          "--out", str(tmp_path / "demo.png")])
    assert result.exit_code == 1, result.output
    assert "answer: (no answer: the request failed: prompt_too_long:" in result.output
    assert "maximum context length" in result.output and (tmp_path / "demo.png").is_file()


@pytest.mark.parametrize("reply,why", [
    ("<think>The cup is on the left (10, 20).</think>", "no well-formed <answer>"),
    ("", "no well-formed <answer>"),
])
def test_demo_says_why_a_reply_has_no_answer(tmp_path: Path, reply: str, why: str) -> None:
    from PIL import Image

    Image.new("RGB", (64, 48), "white").save(tmp_path / "scene.png")
    with FakeOpenAIServer(reply_text=lambda request, i: reply) as server:
        result = CliRunner().invoke(app, ["demo", "--model", "m", "--image", str(tmp_path / "scene.png"), "--query",
                                          "What is it?", "--backend", "openai", "--base-url", server.base_url,
                                          "--out", str(tmp_path / "demo.png")])
    assert result.exit_code == 0, result.output
    assert f"answer: (no answer: the reply has {why}" in result.stdout and (tmp_path / "demo.png").is_file()


def test_a_full_disk_stops_eval_in_one_error_and_the_rerun_ends_where_a_clean_run_ends(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    from tests.trace_forge.test_full_disk import FullDisk
    from trace_forge.errors import StorageError

    samples = load("vstar", limit=4)
    with serve_failing(Script(samples), lambda i, request: None) as server:
        clean = run(config("vstar", limit=4), server, tmp_path / "clean")
        protocol_bytes = (tmp_path / "clean" / "eval.json").stat().st_size
        record_bytes = len((tmp_path / "clean" / SAMPLES_FILE).read_bytes().splitlines()[0]) + 1
        out = tmp_path / "full"
        with monkeypatch.context() as patch:  # room for eval.json and one and a half records
            FullDisk(patch, out, free=protocol_bytes + record_bytes * 3 // 2)
            with pytest.raises(StorageError, match=rf"{out / SAMPLES_FILE}: cannot write \(No space left"):
                run(config("vstar", limit=4, concurrency=1), server, out)
        assert (out / SAMPLES_FILE).read_bytes().endswith(b"\n") and not (out / SUMMARY_FILE).exists()
        resumed = run(config("vstar", limit=4), server, out)
    assert resumed["metrics"] == clean["metrics"] and resumed["counts"] == clean["counts"]
