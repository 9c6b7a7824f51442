"""One definition of each setting: a command's flag has its config field's default (and help)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import typer

from grounded_rl.cli import app as grounded_rl
from grounded_rl.demo import DemoConfig
from grounded_rl.eval import EvalConfig
from trace_forge.cli import app as trace_forge
from trace_forge.linearize import LinearizeConfig
from trace_forge.search.mcts import SearchConfig
from trace_forge.teachers.runtime import RuntimeConfig
from trace_forge.teachers.sim import SimTeacher

# command -> the configs its flags fill, and flag names that differ from their field's name
COMMANDS = {
    (trace_forge, "search"): ([SearchConfig, RuntimeConfig], {"timeout": "timeout_s"}),
    (trace_forge, "linearize"): ([LinearizeConfig], {}),
    (grounded_rl, "eval"): ([EvalConfig], {"base_url": "base_urls", "option": "task_options", "timeout": "timeout_s"}),
    (grounded_rl, "demo"): ([DemoConfig], {"base_url": "base_urls", "choice": "options"}),
}


def _default(field: dataclasses.Field):
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


@pytest.mark.parametrize("command", list(COMMANDS), ids=lambda c: c[1])
def test_flag_defaults_are_their_fields_defaults(command):
    app, name = command
    configs, renamed = COMMANDS[command]
    fields = {f.name: f for config in configs for f in dataclasses.fields(config)}
    params = typer.main.get_command(app).commands[name].params
    checked = 0
    for param in params:
        field = fields.get(renamed.get(param.name, param.name))
        if field is None or (field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING):
            continue  # a required setting: no default to agree on
        default = param.default
        want = _default(field)
        if isinstance(want, list | dict) and not want:
            assert default in (None, [], {}, ()), param.name
        else:
            assert default == want, f"--{param.name}: {default!r} != {field.name} {want!r}"
        help_text = field.metadata.get("help")
        if help_text:
            assert help_text in (param.help or ""), param.name
        checked += 1
    assert checked >= 5


def test_the_sim_teachers_settings_have_one_default():
    params = {p.name: p for p in typer.main.get_command(trace_forge).commands["search"].params}
    sim = inspect.signature(SimTeacher).parameters
    assert params["sim_skill"].default == sim["skill"].default
    assert params["sim_accuracy"].default == sim["answer_accuracy"].default


# Retry tuning of the teacher client: settable from Python (RuntimeConfig), kept off the command line on purpose.
NOT_FLAGS = {"max_format_retries", "backoff_base_s", "backoff_max_s", "retry_after_cap_s"}


@pytest.mark.parametrize("command", list(COMMANDS), ids=lambda c: c[1])
def test_every_config_field_is_a_flag(command):
    app, name = command
    configs, renamed = COMMANDS[command]
    flags = {renamed.get(p.name, p.name) for p in typer.main.get_command(app).commands[name].params}
    missing = [f.name for config in configs for f in dataclasses.fields(config) if f.name not in flags | NOT_FLAGS]
    assert not missing, f"{name}: config fields without a flag: {missing}"
