"""``grounded-rl make-tiny-model``: write a random-init tiny VLM checkpoint for tests and smoke runs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from grounded_rl.cli import app
from grounded_rl.models import Family

_EXAMPLES = """\
Examples:

  grounded-rl make-tiny-model /tmp/tiny-qwen2_5_vl

  grounded-rl make-tiny-model /tmp/tiny-qwen3_vl --family qwen3_vl --seed 1
"""


@app.command("make-tiny-model", epilog=_EXAMPLES)
def make_tiny_model(
    out: Annotated[Path, typer.Argument(help="Output directory (created if missing; files overwritten).")],
    family: Annotated[Family, typer.Option(help="Model family: architecture, processor, chat template.")] = (
        Family.QWEN2_5_VL
    ),
    seed: Annotated[int, typer.Option(help="Seed of the random weights (same seed, same weights).")] = 0,
) -> None:
    """Write a random-init tiny VLM (0.35-0.45M parameters) with tokenizer, processor and our chat template.

    The directory loads offline with AutoModelForImageTextToText / AutoProcessor, like a Hub checkpoint.
    """
    from grounded_rl.tiny import make_tiny_model as build

    path = build(out, family=family, seed=seed)
    typer.echo(f"wrote tiny {family.value} model to {path}")
