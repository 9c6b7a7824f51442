"""``trace-forge linearize``: turn a search run into a Hugging Face training dataset.

Examples:
    trace-forge linearize runs/vstar-001 --mode single
    trace-forge linearize runs/vstar-001 --mode multi --max-zooms 3 --out data/vstar-multi --overwrite
    trace-forge linearize runs/vstar-001 --mode single --no-backtracking --max-per-question 0
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from trace_forge.cli._app import app, console
from trace_forge.grounding import DEFAULT_CONNECTOR

out = Console()  # the summary table is the command's output: stdout (errors go to stderr through cli._app)


@app.command("linearize")
def linearize_command(
    run_dir: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, help="Search run folder (run.json, trees.jsonl).")
    ],
    mode: Annotated[str, typer.Option(help="single: one response per chain; multi: zoom tool dialogs.")],
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Output folder; default RUN_DIR/dataset-<mode>.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Task data folder, when it moved since the run.")
    ] = None,
    connector: Annotated[
        str, typer.Option(help="Sentence between the wrong and the right path.")
    ] = DEFAULT_CONNECTOR,
    max_per_question: Annotated[
        int, typer.Option(min=0, help="Chains kept per question (seeded draw); 0 keeps all.")
    ] = 16,
    backtracking: Annotated[
        bool, typer.Option("--backtracking/--no-backtracking", help="Emit backtracking chains.")
    ] = True,
    max_zooms: Annotated[int, typer.Option(min=0, help="Zoom turns per multi-turn dialog.")] = 4,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.99, help="Share of questions in the validation split.")
    ] = 0.05,
    seed: Annotated[int, typer.Option(help="Seeds the per-question cap and the split.")] = 0,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier dataset in the output.")
    ] = False,
) -> None:
    """Linearize every tree of a run into chains and write them as a DatasetDict and parquet shards."""
    from trace_forge.dataset import MODES, linearize_run  # datasets is slow to import; keep --help fast
    from trace_forge.errors import ConfigError
    from trace_forge.linearize import LinearizeConfig

    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    config = LinearizeConfig(
        connector=connector,
        max_per_question=max_per_question or None,
        include_backtracking=backtracking,
        seed=seed,
        max_zooms=max_zooms,
    )
    target = out_dir or run_dir / f"dataset-{mode}"
    with console.status(f"linearizing {run_dir} ({mode}-turn)"):
        dataset = linearize_run(run_dir, target, mode, config, data_dir, val_fraction=val_fraction,
                                overwrite=overwrite)

    title = f"{run_dir.name} ({mode}-turn)"
    table = Table("split", "questions", "direct", "backtracking", "chains", title=title)
    for split, ds in dataset.items():
        kinds = Counter(ds["kind"])
        counts = (len(set(ds["question_id"])), kinds["direct"], kinds["backtracking"], len(ds))
        table.add_row(split, *map(str, counts))
    out.print(table)
    out.print(f"saved to {target / 'hf'} and {target / 'parquet'}", highlight=False)
