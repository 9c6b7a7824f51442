"""Every task's splits: declared, listed by ``trace-forge tasks list``, checked on load; and ``tasks show`` on each
bundled sample of the thinking-with-images benchmarks."""

import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trace_forge.cli import app
from trace_forge.cli._app import run
from trace_forge.errors import ConfigError, DataError
from trace_forge.tasks import get_task, task_names

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
runner = CliRunner()

NEW_TASKS = ["hrbench-4k", "hrbench-8k", "mme-realworld", "mme-realworld-lite", "treebench", "visualprobe",
             "robospatial", "osatlas"]


def test_every_task_declares_its_splits_and_defaults_to_one():
    assert set(NEW_TASKS) <= set(task_names())
    for name in task_names():
        task = get_task(name)
        assert isinstance(task.splits, tuple), name
        assert not task.splits or task.default_split in task.splits, name
        assert task.resolve_split(None) == task.default_split
    assert get_task("generic").splits == () and get_task("generic").resolve_split("dev") == "dev"  # any split
    with pytest.raises(ConfigError, match="task 'blink' has no split 'train'; its splits: val, test"):
        get_task("blink").resolve_split("train")


def test_list_shows_the_new_tasks_with_their_splits():
    result = runner.invoke(app, ["tasks", "list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    for text in (*NEW_TASKS, "splits", "DreamMr/HR-Bench", "HaochenWang/TreeBench", "all, easy, medium, hard",
                 "vqa, configuration, compatibility", "train, val", "train, static, val, test", "any"):
        assert text in result.stdout, text
    osatlas = next(line for line in result.stdout.splitlines() if " osatlas " in line)
    assert "100->384 px +dot" in osatlas  # GUI screenshots zoom like ScreenSpot


@pytest.mark.parametrize(
    ("task", "folder", "shown"),
    [
        ("hrbench-4k", "hrbench", 4),
        ("hrbench-8k", "hrbench", 4),
        ("mme-realworld", "mme_realworld", 5),
        ("mme-realworld-lite", "mme_realworld_lite", 3),
        ("treebench", "treebench", 4),
        ("visualprobe", "visualprobe", 6),
        ("robospatial", "robospatial", 4),
        ("osatlas", "osatlas", 7),
    ],
)
def test_show_reads_each_bundled_sample(task, folder, shown):
    result = runner.invoke(app, ["tasks", "show", task, "--data-dir", str(SAMPLES / folder)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    skipped = "context (pointing): 1" if task == "robospatial" else "none"
    assert f"{shown} sample(s) shown (limit 10); skipped: {skipped}" in result.stdout


def test_bad_new_task_data_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "TreeBench.tsv").write_text('"index"\t"question"\n"0"\t"q"\n')
    monkeypatch.setattr(sys, "argv", ["trace-forge", "tasks", "show", "treebench", "--data-dir", str(tmp_path)])
    monkeypatch.delenv("TRACE_FORGE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run(app)
    assert exit_info.value.code == DataError.exit_code == 2
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "TreeBench.tsv: missing column(s) ['A', 'B', 'answer'" in err and "Traceback" not in err
