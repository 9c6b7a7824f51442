"""``trace-forge tasks``: list the registered benchmarks and preview the samples a loader reads.

Examples:
    trace-forge tasks list
    trace-forge tasks show vstar --data-dir data/samples/vstar --limit 5
    trace-forge tasks show sat2 --data-dir data/samples/sat2 --split val -o circular=true
    trace-forge tasks show generic --data-dir my.jsonl -o options=choices -o boxes=bbox --skip-bad
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from trace_forge.cli._app import app, out
from trace_forge.errors import DataError
from trace_forge.tasks import Sample, TaskSpec, get_task, parse_task_options, task_names, task_options

tasks_app = typer.Typer(help="Benchmark tasks: list them and preview their samples.", no_args_is_help=True)
app.add_typer(tasks_app, name="tasks")



def options_help() -> str:
    """Every task's options (``-o KEY=VALUE``), one paragraph per task that takes any: for command help."""
    parts = ["Task options (-o KEY=VALUE, repeatable; VALUE is read as JSON when it parses):"]
    for name in task_names():
        docs = task_options(name)
        parts += [f"{name} -o {key}=...: {text.rstrip('.')}." for key, text in docs.items()]
    return "\n\n".join(parts)


@tasks_app.command("list", epilog="Example: trace-forge tasks list")
def list_tasks() -> None:
    """List the registered tasks with their answer kind, Hub dataset, splits, options (-o) and zoom crop."""
    table = Table()
    for column in ("name", "answer kind", "hub id", "splits", "default split", "options (-o)", "zoom crop"):
        table.add_column(column, no_wrap=column in ("name", "hub id"))
    for name in task_names():
        task = get_task(name)
        zoom = f"{task.zoom.crop}->{task.zoom.out} px" + (" +dot" if task.zoom.dot else "")
        splits = ", ".join(task.splits) or "any"
        options = ", ".join(task_options(name)) or "-"
        table.add_row(name, task.answer_kind.value, task.hub_id or "-", splits, task.default_split, options, zoom)
    out.print(table)
    out.print("What each option does: trace-forge tasks show --help", highlight=False)


@tasks_app.command("show", epilog=(
    "Examples:\n\n"
    "  trace-forge tasks show vstar --data-dir data/samples/vstar --limit 5\n\n"
    "  trace-forge tasks show generic --data-dir my.jsonl -o options=choices -o boxes=bbox --skip-bad\n\n"
    + options_help()))
def show(
    task_name: Annotated[str, typer.Argument(metavar="TASK", help="A registered task (see `tasks list`).")],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Folder (or file) in the official layout; default: the task's Hub dataset."),
    ] = None,
    split: Annotated[str | None, typer.Option(help="Split to read; default: the task's default split.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many samples.")] = 10,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip and count bad records instead of stopping at the first.")
    ] = False,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Task option KEY=VALUE, repeatable; each task's options are below."),
    ] = None,
) -> None:
    """Load a task's samples and print them with the counts of what was read and skipped."""
    task = TaskSpec(task_name, parse_task_options(option or [])).build()
    samples = list(task.load(data_dir=data_dir, split=split, limit=limit, skip_bad=skip_bad))
    if not samples:
        skipped = ", ".join(f"{reason}: {n}" for reason, n in sorted(task.skipped.items()))
        raise DataError(f"no {task.name} samples here (split {split or task.default_split}"
                        + (f"; skipped {skipped}" if skipped else "") + "): check --data-dir and --split",
                        path=data_dir or task.hub_id)
    table = Table("id", "category", "question", "options / answer", "boxes (xyxy px)", "images", title=task.name)
    for sample in samples:
        table.add_row(
            sample.id,
            sample.category,
            sample.question,
            _answer_cell(sample),
            "\n".join(f"[{b.x1:g}, {b.y1:g}, {b.x2:g}, {b.y2:g}]" for b in sample.target_boxes),
            str(len(sample.images)),
        )
    out.print(table)
    skipped = ", ".join(f"{reason}: {n}" for reason, n in sorted(task.skipped.items())) or "none"
    out.print(f"{len(samples)} sample(s) shown (limit {limit}); skipped: {skipped}", highlight=False)


def _answer_cell(sample: Sample) -> str:
    """Options one per line with the correct one starred, or the answer alone."""
    if sample.options:
        return "\n".join(
            f"{chr(ord('A') + i)}. {o}" + (" *" if o == sample.answer else "") for i, o in enumerate(sample.options)
        )
    return sample.answer or "-"
