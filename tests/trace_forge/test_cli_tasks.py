"""``trace-forge tasks list / show`` through typer's CliRunner, and the exit code of a data error."""

import sys

import pytest
from typer.testing import CliRunner

from tests.trace_forge.test_tasks_loaders import make_blink, make_sat, make_vstar
from trace_forge.cli import app
from trace_forge.cli._app import run
from trace_forge.errors import ConfigError, DataError

runner = CliRunner()


def test_list_shows_every_task_with_hub_and_zoom():
    result = runner.invoke(app, ["tasks", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("vstar", "craigwu/vstar_bench", "screenspot-pro", "likaixin/ScreenSpot-Pro", "sat2", "generic"):
        assert text in result.stdout
    assert "100->384 px +dot" in result.stdout and "364->672 px" in result.stdout


def test_show_prints_samples_options_and_boxes(tmp_path):
    result = runner.invoke(app, ["tasks", "show", "vstar", "--data-dir", str(make_vstar(tmp_path))],
                           env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "direct_attributes/sa_10" in result.stdout and "A. white *" in result.stdout
    assert "[10, 5, 30, 15]" in result.stdout
    assert "2 sample(s) shown (limit 10); skipped: none" in result.stdout


def test_show_with_options_split_limit_and_skipped_counts(tmp_path):
    args = ["tasks", "show", "sat2", "--data-dir", str(make_sat(tmp_path)), "--split", "val", "--limit", "1",
            "-o", "circular=true"]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    # sat2's limit counts questions, so the one question shows with both rotations.
    assert "val_0#r0" in result.stdout and "val_0#r1" in result.stdout and "val_1" not in result.stdout
    result = runner.invoke(app, ["tasks", "show", "blink", "--data-dir", str(make_blink(tmp_path / "b")), "--split",
                                 "test", "--skip-bad"], env={"COLUMNS": "200"})
    # Nothing to show is an error (exit 2) that says why: here the test split's answers are hidden.
    assert isinstance(result.exception, DataError) and "skipped hidden answer: 1" in str(result.exception)


def test_show_errors_are_typed(tmp_path):
    result = runner.invoke(app, ["tasks", "show", "nope"])
    assert isinstance(result.exception, ConfigError) and "vstar" in str(result.exception)
    result = runner.invoke(app, ["tasks", "show", "sat2", "-o", "spin=1", "--data-dir", str(tmp_path)])
    assert isinstance(result.exception, ConfigError) and "spin" in str(result.exception)
    result = runner.invoke(app, ["tasks", "show", "sat2", "-o", "circular", "--data-dir", str(tmp_path)])
    assert isinstance(result.exception, ConfigError) and "KEY=VALUE" in str(result.exception)


def test_bad_data_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    root = make_vstar(tmp_path)
    (root / "direct_attributes" / "sa_10.json").write_text("{")
    monkeypatch.setattr(sys, "argv", ["trace-forge", "tasks", "show", "vstar", "--data-dir", str(root)])
    monkeypatch.delenv("TRACE_FORGE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        run(app)
    assert exit_info.value.code == DataError.exit_code == 2
    assert "sa_10.json" in capsys.readouterr().err
