"""Look at traces and ship them: ``show``, ``stats``, ``merge``, ``publish``.

Examples:
    trace-forge show runs/vstar --index 3 --out trace.png        # most informative trajectory of question 3
    trace-forge show runs/vstar --index 3 --all-correct --out t.png
    trace-forge show runs/vstar/dataset-multi --split validation --index 0 --out row.png
    trace-forge stats runs/vstar [--json] [--grounding-margin 20]
    trace-forge merge runs/vstar runs/vstar-shard0 runs/vstar-shard1
    trace-forge publish runs/vstar/dataset-single --repo-id my-org/vstar-traces
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from trace_forge.cli._app import app, console, out
from trace_forge.cli.options import default, flag
from trace_forge.linearize import LinearizeConfig

if TYPE_CHECKING:
    from trace_forge.stats import OnTarget, RunStats


@app.command("show")
def show(
    path: Annotated[
        Path, typer.Argument(metavar="DIR", help="A search run directory or a linearized dataset.")
    ],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="PNG to write (several get -1, -2, ...).")],
    index: Annotated[int, typer.Option(min=0, help="Question (run) or row (dataset) to draw.")] = 0,
    split: Annotated[str, typer.Option(help="Dataset split to read the row from.")] = "train",
    all_correct: Annotated[
        bool, typer.Option("--all-correct", help="Run: every correct trajectory, not only the best.")
    ] = False,
    zoom: Annotated[
        bool, typer.Option("--zoom/--no-zoom", help="Run: also show the crop each step zooms to.")
    ] = True,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Run: the task data, if not where run.json says.")
    ] = None,
    max_side: Annotated[int, typer.Option(min=64, help="Scale the image down to this longer side.")] = 1024,
    grounding_margin: Annotated[float, flag(LinearizeConfig, "grounding_margin", min=0.0)] = default(
        LinearizeConfig, "grounding_margin"),
) -> None:
    """Draw a trace: the image with numbered point markers (ringed green on a target box, red off it), the question,
    steps and answer beside it, zoom crops below.

    From a run, the question's most informative trajectory: a correct one with the most distinct grounded points.

    Example: trace-forge show runs/vstar-sim --index 0 --out trace.png
    """
    from trace_forge.show import load_views, save_views

    views = load_views(path, index, split=split, all_correct=all_correct, zoom_crops=zoom, data_dir=data_dir,
                       grounding_margin=grounding_margin)
    for written in save_views(views, out_file, max_side):
        out.print(str(written), highlight=False)


def _histogram(title: str, label: str, hist: dict[int, int]) -> Table:
    table = Table(label, "count", title=title)
    for key, count in hist.items():
        table.add_row(str(key), str(count))
    return table


@app.command("stats")
def stats(
    run_dir: Annotated[Path, typer.Argument(metavar="DIR", help="A search run directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    grounding_margin: Annotated[float, flag(LinearizeConfig, "grounding_margin", min=0.0)] = default(
        LinearizeConfig, "grounding_margin"),
) -> None:
    """Summarize a search run: yield, tree shape, rollout accuracy, grounding precision (steps on a target box),
    dead samples, the teacher and its usage.

    Example: trace-forge stats runs/vstar-sim --json > stats.json
    """
    from trace_forge.stats import run_stats

    s = run_stats(run_dir, grounding_margin)
    if as_json:
        typer.echo(json.dumps(s.to_dict(), indent=2, sort_keys=True))
        return
    summary = Table("", "value", title=str(run_dir))
    for name, value in (
        ("questions", s.questions),
        ("with a correct trajectory", f"{s.solved} ({s.solved_share:.1%})"),
        ("failed (errors.jsonl)", s.failed),
        ("nodes", s.nodes),
        ("rollouts (correct)", f"{s.rollouts} ({s.rollouts_correct}, {s.rollout_accuracy:.1%})"),
        ("terminal answers (correct)", f"{s.terminals} ({s.terminals_correct})"),
        ("correct trajectories", s.correct_trajectories),
        ("dead samples", s.dead),
        ("dropped repeated points", s.dropped),
        ("stop reasons", ", ".join(f"{k}: {v}" for k, v in s.stop_reasons.items()) or "-"),
    ):
        summary.add_row(name, str(value))
    out.print(summary)
    out.print(_histogram("nodes by depth", "depth", s.depth_histogram))
    out.print(_histogram("branching", "children", s.branching_histogram))
    categories = Table("category", "questions", "solved", "share", "correct trajectories", title="yield")
    for name, c in s.categories.items():
        categories.add_row(
            name, str(c.questions), str(c.solved), f"{c.solved_share:.1%}", str(c.correct_trajectories)
        )
    out.print(categories)
    out.print(_grounding_table(s))
    teacher = Table("", "value", title="teacher")
    for key, value in s.teacher.items():
        teacher.add_row(key, str(value))
    out.print(teacher)
    usage = Table("counter", "sum of question stats", "run.json usage", title="teacher usage")
    for key in sorted(set(s.usage) | set(s.run_usage)):
        usage.add_row(key, _number(s.usage.get(key)), _number(s.run_usage.get(key)))
    out.print(usage)


def _grounding_table(s: RunStats) -> Table | str:
    """Grounding precision overall and per category: on-target steps / steps (share), all and correct ones."""
    if not s.grounding.questions:
        return "grounding precision: not applicable (no question has target boxes)"
    table = Table("", "questions", "all steps on target", "steps of correct trajectories on target",
                  title=f"grounding precision (points inside a target box, margin {s.grounding_margin:g} px)")

    def share(counts: OnTarget) -> str:
        if counts.precision is None:
            return "-"
        return f"{counts.on_target}/{counts.steps} ({counts.precision:.1%})"

    for name, g in [("all questions", s.grounding), *s.grounding_categories.items()]:
        table.add_row(name, str(g.questions), share(g.all_steps), share(g.correct_steps))
    return table


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.6g}" if isinstance(value, float) else f"{value:,}"


@app.command("merge")
def merge(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="The merged run directory to create.")],
    shards: Annotated[list[Path], typer.Argument(metavar="DIR...", help="Shard run directories of one run.")],
) -> None:
    """Merge the run directories of one search split over several machines (search --shard I/N).

    Example: trace-forge merge runs/vstar runs/vstar-s0 runs/vstar-s1 runs/vstar-s2 runs/vstar-s3
    """
    from trace_forge.search.merge import merge_runs

    report = merge_runs(out_dir, shards)
    out.print(
        f"{out_dir}: {report.questions} questions, {report.duplicates} duplicate(s), "
        f"{len(report.conflicts)} conflict(s), {report.errors} error record(s)",
        highlight=False,
    )
    for name, rows in report.cache_rows.items():
        out.print(f"{name}: {rows} cached completions", highlight=False)
    if report.conflicts:
        console.print(f"[yellow]conflicting records (first shard kept):[/] {', '.join(report.conflicts)}")


@app.command("publish")
def publish(
    dataset_dir: Annotated[
        Path, typer.Argument(metavar="DIR", help="A dataset from `trace-forge linearize`.")
    ],
    repo_id: Annotated[str, typer.Option("--repo-id", help="Hub dataset id, ORG/NAME.")],
    private: Annotated[bool, typer.Option("--private", help="Create the repository as private.")] = False,
    license_id: Annotated[
        str | None,
        typer.Option("--license", help="Licence id to set in the card first (default: the card's, else other)."),
    ] = None,
    card_only: Annotated[
        bool, typer.Option("--card-only", help="Print the dataset card and upload nothing.")
    ] = False,
) -> None:
    """Upload a dataset folder (card, provenance, parquet shards) to the Hub in one commit.

    The token comes from HF_TOKEN or `hf auth login`, never from a flag.

    Example: trace-forge publish runs/vstar-sim/dataset-multi --repo-id my-org/vstar-zoom-traces --private
    """
    from trace_forge import publish as pub
    from trace_forge.card import CARD

    if card_only:
        pub.check_dataset_dir(dataset_dir)
        typer.echo((dataset_dir / CARD).read_text(encoding="utf-8"), nl=False)
        return
    url = pub.publish(dataset_dir, repo_id, private, license_id=license_id)
    out.print(url, highlight=False)
