"""The ``grounded-rl`` command line.

Command groups live in the modules below and register on :data:`app`. Torch and transformers are imported inside
commands, never at module level, so ``grounded-rl --help`` does not pay for them.
"""

from __future__ import annotations

import importlib
from typing import Annotated

import typer

from trace_forge.cli import one_progress_display, run, version_option

app = typer.Typer(
    name="grounded-rl",
    help="SFT, DPO and GRPO (single- and multi-turn zoom) for visually grounded reasoning, and pinned evaluation.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

# Commands whose flags are a TRL config's fields (sft, grpo): typer hands every argument, --help included, to TRL's
# parser (grounded_rl.training.parse_command_line), which knows the fields.
TRL_COMMAND = {
    "context_settings": {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    "add_help_option": False,
}


def _versions() -> str:
    import grounded_rl
    import trace_forge

    return f"grounded-rl {grounded_rl.__version__} (trace-forge {trace_forge.__version__})"


@app.callback()
def _root(version: Annotated[bool, version_option(_versions)] = False) -> None:
    """SFT, DPO and GRPO (single- and multi-turn zoom) for visually grounded reasoning, and pinned evaluation."""
    one_progress_display()


@app.command()
def version() -> None:
    """Print the grounded-rl and trace-forge versions."""
    typer.echo(_versions())


for _name in ("models", "eval", "sft", "dpo", "train"):
    importlib.import_module(f"grounded_rl.cli.{_name}")


def main() -> None:
    run(app)


__all__ = ["TRL_COMMAND", "app", "main"]
