"""Every command of both CLIs says how to use it: an example in its help, choices listed, ``--version``."""

import os
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

from grounded_rl.cli import app as grounded_rl_app
from trace_forge.cli import app as trace_forge_app

runner = CliRunner()


def _commands(app: typer.Typer) -> list[list[str]]:
    """The path of every leaf command (``["tasks", "show"]``)."""
    paths = []

    def walk(command, path):
        children = getattr(command, "commands", None)
        if children is None:
            paths.append(path)
            return
        for name, child in children.items():
            walk(child, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


COMMANDS = [(trace_forge_app, p) for p in _commands(trace_forge_app) if p != ["version"]] + [
    (grounded_rl_app, p) for p in _commands(grounded_rl_app) if p != ["version"]
]


@pytest.mark.parametrize("app,path", COMMANDS, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_every_command_help_has_an_example(app, path):
    result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "example" in result.output.lower(), f"{' '.join(path)} --help shows no example"


def test_choices_are_listed_in_help():
    result = runner.invoke(trace_forge_app, ["search", "--help"], env={"COLUMNS": "300"})
    assert "anthropic|hf|openai|sim|vllm" in result.output


def test_generic_task_options_are_documented():
    result = runner.invoke(trace_forge_app, ["tasks", "show", "--help"], env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    for option in ("image", "question", "answer", "options", "boxes", "box_format", "answer_kind"):
        assert f"generic -o {option}=" in text


@pytest.mark.parametrize("app,name", [(trace_forge_app, "trace-forge"), (grounded_rl_app, "grounded-rl")])
def test_version(app, name):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith(f"{name} ")


@pytest.mark.parametrize(
    ("cli", "args", "said"),
    [
        ("trace_forge.cli", ["search", "--task", "vstar", "--simulaton", "3"], "No such option: --simulaton"),
        ("trace_forge.cli", ["search", "--task", "vstar", "--out", "o", "--simulations", "many"],
         "Invalid value for '--simulations'"),
        ("grounded_rl.cli", ["evl"], "No such command 'evl'. Did you mean 'eval'?"),
    ],
)
def test_a_usage_error_is_one_line_whatever_the_width(cli, args, said, tmp_path):
    """Through the installed entry point (``run``), not CliRunner: at 40 columns the message stays whole, names
    the help to read, and exits 2 with nothing on stdout."""
    env = {**os.environ, "COLUMNS": "40"}
    result = subprocess.run([sys.executable, "-m", cli, *args], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"error: {said}") and "--help)" in result.stderr


def test_no_arguments_show_the_help():
    result = subprocess.run([sys.executable, "-m", "trace_forge.cli"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "search" in result.stdout + result.stderr and "Usage" in result.stdout + result.stderr
