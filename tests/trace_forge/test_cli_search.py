"""``trace-forge search`` through typer's CliRunner with the simulated teacher on the bundled samples."""

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import trace_forge.teachers as teachers
from trace_forge.cli import app
from trace_forge.cli import search as search_cli
from trace_forge.errors import ConfigError
from trace_forge.grounding import Resize
from trace_forge.search.store import RunStore
from trace_forge.tasks import TaskSpec, get_task
from trace_forge.teachers import Message, SamplingParams, build_client
from trace_forge.teachers.images import ImageRef

runner = CliRunner()
VSTAR = "data/samples/vstar"  # relative on purpose: run.json must store it resolved


def _search(out, *extra, task="vstar", data_dir=VSTAR):
    args = ["search", "--task", task, "--data-dir", data_dir, "--teacher", "sim", "--simulations", "2",
            "--out", str(out), "--quiet", "--no-linearize", *extra]
    return runner.invoke(app, args, env={"COLUMNS": "200"})


def _refused(result, field: str) -> bool:
    """The command stopped with a ConfigError naming ``field`` (``run`` turns it into exit code 2)."""
    return isinstance(result.exception, ConfigError) and field in str(result.exception)


def _run_json(out) -> dict:
    return json.loads((Path(out) / "run.json").read_text())


@pytest.fixture
def resizes(monkeypatch):
    """The ``resize`` each ``build_client`` call of the command received."""
    seen = []
    real = teachers.build_client

    def spy(*args, **kwargs):
        seen.append(kwargs.get("resize"))
        return real(*args, **kwargs)

    monkeypatch.setattr(teachers, "build_client", spy)
    return seen


def test_images_are_sent_smart_resized_to_qwen_bounds_by_default(tmp_path, resizes):
    result = _search(tmp_path / "default", "--limit", "1")
    assert result.exit_code == 0, result.output
    # Qwen2.5-VL's own bounds: a Qwen server's resize is then the identity, so its answers are in the sent frame.
    assert resizes == [Resize(min_pixels=3136, max_pixels=12_845_056)]
    teacher = _run_json(tmp_path / "default")["teacher"]
    assert (teacher["max_pixels"], teacher["min_pixels"]) == (12_845_056, 3136)

    result = _search(tmp_path / "original", "--limit", "1", "--max-pixels", "0")
    assert result.exit_code == 0, result.output
    assert resizes[1] is None  # originals, for APIs that answer in original pixels
    teacher = _run_json(tmp_path / "original")["teacher"]
    assert (teacher["max_pixels"], teacher["min_pixels"]) == (None, None)


def test_run_json_stores_the_resolved_data_dir(tmp_path):
    result = _search(tmp_path / "run", "--limit", "1")
    assert result.exit_code == 0, result.output
    assert _run_json(tmp_path / "run")["data_dir"] == str(Path(VSTAR).resolve())


def test_resume_accumulates_teacher_usage_over_sessions(tmp_path):
    out = tmp_path / "run"
    assert _search(out, "--limit", "1").exit_code == 0
    first = _run_json(out)
    result = _search(out, "--limit", "2", "--resume")
    assert result.exit_code == 0, result.output
    run = _run_json(out)
    assert run["started"] == first["started"] == run["sessions"][0]["started"]
    assert len(run["sessions"]) == 2 and all(s["finished"] for s in run["sessions"])
    assert run["sessions"][0]["usage"] == first["sessions"][0]["usage"]
    requests = [s["usage"]["requests"] for s in run["sessions"]]
    assert requests[1] > 0  # the second question was searched in the resumed session
    assert run["usage"]["requests"] == sum(requests)
    assert run["usage"]["completion_tokens"] == sum(s["usage"]["completion_tokens"] for s in run["sessions"])
    # Settings are kept apart from the counters, never summed over sessions.
    assert "skill" not in run["usage"] and run["sessions"][1]["usage"]["teacher"]["skill"] == 0.5


def test_usage_is_written_during_the_run(tmp_path, monkeypatch):
    calls = []
    real = RunStore.record_usage

    def spy(self, usage, *, finished=False):
        calls.append(finished)
        real(self, usage, finished=finished)

    monkeypatch.setattr(RunStore, "record_usage", spy)
    monkeypatch.setattr(search_cli, "USAGE_SAVE_INTERVAL_S", 0.0)
    result = _search(tmp_path / "run", "--limit", "2")
    assert result.exit_code == 0, result.output
    # Once per finished question while running (a kill loses little), then once more to close the session.
    assert calls == [False, False, True]


def test_resume_refuses_other_teacher_settings(tmp_path):
    out = tmp_path / "run"
    assert _search(out, "--limit", "1").exit_code == 0
    result = _search(out, "--limit", "1", "--resume", "--sim-skill", "0.9")
    assert _refused(result, "teacher.skill")
    result = _search(out, "--limit", "1", "--resume", "--max-pixels", "0")
    assert _refused(result, "teacher.max_pixels")
    # Where the teacher is served and how many questions it was handed may change.
    result = _search(out, "--limit", "2", "--resume")
    assert result.exit_code == 0, result.output


def test_a_different_sim_skill_does_not_hit_the_cache_of_another(tmp_path):
    sample = next(iter(get_task("vstar").load(VSTAR, limit=1)))
    chat = [Message("user", (ImageRef(sample.canvas()), sample.question))]

    async def hits(skill: float) -> int:
        async with build_client("sim", "sim", samples=[sample], skill=skill, cache_path=tmp_path / "c.sqlite") as c:
            await c.generate(chat, SamplingParams(n=2, seed=1))
            return c.usage.cache_hits

    assert asyncio.run(hits(0.5)) == 0
    assert asyncio.run(hits(0.5)) == 2  # same settings: paid once
    assert asyncio.run(hits(0.9)) == 0  # other replies: never served the old ones


def test_task_options_reach_the_task_and_run_json(tmp_path):
    out = tmp_path / "run"
    sat = ("--split", "val", "--limit", "1")
    result = _search(out, *sat, "-o", "circular=true", task="sat2", data_dir="data/samples/sat2")
    assert result.exit_code == 0, result.output
    assert _run_json(out)["task"] == {"name": "sat2", "options": {"circular": True}}
    records = list(RunStore(out).finished().values())
    assert records and all("#r" in r.id for r in records)  # circular evaluation's rotations: the option arrived
    assert {r.question.task for r in records} == {TaskSpec("sat2", {"circular": True})}
    # SAT-2's images come from parquet cells: stored once in the run, shared by every rotation of a question.
    assert len(list((out / "images").glob("*.png"))) == 1
    assert records[0].question.sample(out, None).canvas().size == records[0].question.image_size
    result = _search(out, *sat, "--resume", task="sat2", data_dir="data/samples/sat2")
    assert _refused(result, "task:")


def test_max_calls_help_says_when_it_is_checked():
    result = runner.invoke(app, ["search", "--help"], env={"COLUMNS": "300"})
    assert "checked between simulations" in " ".join(result.output.split())


def test_results_go_to_stdout_and_plain_progress_lines_to_stderr(tmp_path):
    args = ["search", "--task", "vstar", "--data-dir", VSTAR, "--teacher", "sim", "--simulations", "2",
            "--limit", "2", "--out", str(tmp_path / "run"), "--no-linearize"]
    # Not a terminal (CliRunner's streams are buffers): one whole line per update when the interval is 0.
    result = runner.invoke(app, args, env={"COLUMNS": "40", "TRACE_FORGE_PROGRESS_S": "0"})
    assert result.exit_code == 0, result.output
    assert "questions" in result.stdout and "search:" not in result.stdout  # the table; no progress
    lines = [line for line in result.stderr.splitlines() if line.startswith("search: ")]
    assert [line.split(" · ")[0] for line in lines] == ["search: 0/2 (0%)", "search: 1/2 (50%)", "search: 2/2 (100%)"]
    assert "teacher calls/s" in lines[-1]  # whole, although wider than COLUMNS
    assert "cost" not in result.stdout + result.stderr  # the simulated teacher costs nothing


def test_a_resumed_finished_run_counts_its_solved_questions(tmp_path):
    out = tmp_path / "run"
    first = _search(out, "--limit", "2")
    assert first.exit_code == 0
    again = _search(out, "--limit", "2", "--resume")
    assert again.exit_code == 0, again.output
    row = next(line for line in again.stdout.splitlines() if "with a correct trajectory" in line)
    records = [json.loads(line) for line in (out / "trees.jsonl").read_text().splitlines()]
    solved = sum(r["stats"]["correct"] > 0 for r in records)
    assert f"{solved} of 2" in row and solved > 0
