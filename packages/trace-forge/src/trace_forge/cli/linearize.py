"""``trace-forge linearize``: turn a search run into a Hugging Face training dataset: SFT chains, preference pairs
or step-level labels."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from trace_forge.cli._app import app, out
from trace_forge.cli.options import default, flag
from trace_forge.cli.progress import Progress
from trace_forge.grounding import Frame
from trace_forge.grounding.frames import QWEN_FACTOR, QWEN_MAX_PIXELS, QWEN_MIN_PIXELS
from trace_forge.linearize import SFT_MODES, LinearizeConfig, Mode

FrameName = Literal[tuple(f.value for f in Frame)]  # listed in --help; another value is a usage error

_EXAMPLES = """\
Examples:

  trace-forge linearize runs/vstar-sim --mode multi

  # points written in the frame a model reads (its processor's resize), for plain TRL on that model

  trace-forge linearize runs/vstar-sim --mode single --processor runs/tiny --out runs/vstar-sim/dataset-tiny

  trace-forge linearize runs/vstar-72b --mode single --frame model --max-pixels 4194304 --no-backtracking

  # only chains whose steps are at least 75% on a target box (within 20 px)

  trace-forge linearize runs/vstar-sim --mode single --min-grounding 0.75 --grounding-margin 20

  # DPO pairs (TRL's preference format) and step-level labels (TRL's stepwise supervision) from the same trees

  trace-forge linearize runs/vstar-sim --mode preference --processor runs/tiny

  trace-forge linearize runs/vstar-sim --mode stepwise --label-threshold 0.5
"""


@app.command("linearize", epilog=_EXAMPLES)
def linearize_command(
    run_dir: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, help="Search run folder (run.json, trees.jsonl).")
    ],
    mode: Annotated[Mode, typer.Option(help=(
        "single: one response per chain; multi: zoom tool dialogs; preference: chosen/rejected pairs of sibling "
        "branches (TRL DPO); stepwise: paths of tree steps labelled by their MCTS values (TRL stepwise "
        "supervision)."))],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder; default RUN_DIR/dataset-<mode>.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Task data folder, when it moved since the run.")
    ] = None,
    frame: Annotated[FrameName, typer.Option(help=(
        "The frame to write points in: pixel (of the image; model-agnostic), model (pixels of the image as a "
        "Qwen2.5-VL processor resizes it, see --max-pixels) or norm1000 (Qwen3-VL's 0-1000 grid)."))] = "pixel",
    processor: Annotated[Path | None, typer.Option(exists=True, file_okay=False, help=(
        "A model checkpoint folder: write points in its frame and resize (config.json + "
        "preprocessor_config.json); overrides --frame and the pixel bounds."))] = None,
    max_pixels: Annotated[int, typer.Option(min=1, help="--frame model: the processor's max_pixels.")] = (
        QWEN_MAX_PIXELS),
    min_pixels: Annotated[int, typer.Option(min=1, help="--frame model: the processor's min_pixels.")] = (
        QWEN_MIN_PIXELS),
    factor: Annotated[int, typer.Option(min=1, help="--frame model: patch size x merge size.")] = QWEN_FACTOR,
    connector: Annotated[str, flag(LinearizeConfig, "connector")] = default(LinearizeConfig, "connector"),
    max_per_question: Annotated[int, flag(LinearizeConfig, "max_per_question", min=0)] = default(
        LinearizeConfig, "max_per_question"),
    include_backtracking: Annotated[bool, flag(LinearizeConfig, "include_backtracking",
                                               "--backtracking/--no-backtracking")] = default(
        LinearizeConfig, "include_backtracking"),
    max_zooms: Annotated[int, flag(LinearizeConfig, "max_zooms", min=0)] = default(LinearizeConfig, "max_zooms"),
    seed: Annotated[int, flag(LinearizeConfig, "seed")] = default(LinearizeConfig, "seed"),
    min_grounding: Annotated[float | None, flag(LinearizeConfig, "min_grounding", min=0.0, max=1.0)] = default(
        LinearizeConfig, "min_grounding"),
    grounding_margin: Annotated[float, flag(LinearizeConfig, "grounding_margin", min=0.0)] = default(
        LinearizeConfig, "grounding_margin"),
    label_threshold: Annotated[float, flag(LinearizeConfig, "label_threshold", min=0.0, max=1.0)] = default(
        LinearizeConfig, "label_threshold"),
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Share of questions in the validation split.")
    ] = 0.05,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier dataset in the output.")
    ] = False,
) -> None:
    """Linearize every tree of a run into chains, preference pairs or step-level labels, and write them as a dataset
    folder (Hub layout, one copy)."""
    from trace_forge.dataset import linearize_run  # datasets is slow: keep --help fast
    from trace_forge.errors import ConfigError
    from trace_forge.grounding import Resize, View

    if processor is not None:
        try:
            view = View.of_checkpoint(processor)
        except ValueError as e:
            raise ConfigError(f"--processor: {e}") from None
    else:
        resize = Resize(min_pixels=min_pixels, max_pixels=max_pixels, factor=factor) if frame == "model" else None
        view = View(Frame(frame), resize)
    config = LinearizeConfig(connector=connector, max_per_question=max_per_question,
                             include_backtracking=include_backtracking, seed=seed, max_zooms=max_zooms,
                             min_grounding=min_grounding, grounding_margin=grounding_margin,
                             label_threshold=label_threshold)
    target = out_dir or run_dir / f"dataset-{mode}"
    with Progress(f"linearize {mode}", None) as progress:
        counts = linearize_run(run_dir, target, mode, config, view=view, data_dir=data_dir,
                               val_fraction=val_fraction, overwrite=overwrite,
                               on_question=lambda done, total: progress.update(done, total=total))

    kinds = ("direct", "backtracking") if mode in SFT_MODES else ()
    table = Table("split", "questions", *kinds, counts.unit,
                  title=f"{run_dir.name} ({mode}, points in the {view.frame.value} frame)")
    for split, found in counts.rows.items():
        values = (counts.questions[split], *(found[k] for k in kinds), sum(found.values()))
        table.add_row(split, *map(str, values))
    out.print(table)
    out.print(f"saved to {target}", highlight=False)
