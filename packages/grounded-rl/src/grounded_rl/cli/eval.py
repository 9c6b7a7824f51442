"""``grounded-rl eval`` (a benchmark, pinned protocol) and ``grounded-rl demo`` (one image, one picture)."""

from __future__ import annotations

from dataclasses import Field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from grounded_rl.cli import app
from grounded_rl.demo import DemoConfig
from grounded_rl.eval import API_BACKENDS, API_FRAMES, LOCAL_BACKENDS, EvalConfig
from trace_forge.cli import Progress, console
from trace_forge.cli import out as stdout
from trace_forge.tasks import AnswerKind


def _field(config: type, name: str) -> Field[Any]:
    return next(f for f in fields(config) if f.name == name)


def _eval_help(name: str) -> str:
    """A flag's help is its config field's: flags and config share one wording (and one default, below)."""
    return _field(EvalConfig, name).metadata["help"]


def _demo_help(name: str) -> str:
    return _field(DemoConfig, name).metadata["help"]


Backend = Literal[(*LOCAL_BACKENDS, *API_BACKENDS)]  # listed in --help; another value is a usage error
ApiFrame = Literal[API_FRAMES]

_EVAL_DEFAULT = {f.name: f.default for f in fields(EvalConfig)}
_DEMO_DEFAULT = {f.name: f.default for f in fields(DemoConfig)}


_EVAL_EXAMPLES = """\
Examples:

  grounded-rl eval --model runs/vigorl-3b --task vstar --data-dir data/vstar --out runs/eval/vstar

  grounded-rl eval --model runs/vigorl-3b-multi --task vstar --data-dir data/vstar --multi-turn --out ev/vstar-mt

  grounded-rl eval --model runs/vigorl-7b --task screenspot-pro --data-dir data/ScreenSpot-Pro --samples 4 \
--out ev/sspro

  grounded-rl eval --backend openai --base-url http://gpu1:8000/v1 --model Qwen/Qwen2.5-VL-72B-Instruct \
--max-pixels 12845056 --task sat2 --data-dir data/sat2 --split val --out ev/sat2-72b

  grounded-rl eval --backend openai --base-url http://gpu1:8000/v1 --model Qwen/Qwen3-VL-8B-Instruct \
--frame norm1000 --task screenspot-pro --data-dir data/ScreenSpot-Pro --out ev/sspro-qwen3

  # SAT-2 with circular evaluation; a table of your own with the generic task

  grounded-rl eval --model runs/vigorl-3b --task sat2 --data-dir data/sat2 --split val -o circular=true --out ev/sat2

  grounded-rl eval --model runs/vigorl-3b --task generic --data-dir my.jsonl -o options=choices --out ev/mine
"""


@app.command("eval", epilog=_EVAL_EXAMPLES)
def eval_command(
    model: Annotated[str, typer.Option(help=_eval_help("model"))],
    task: Annotated[str, typer.Option(help=_eval_help("task"))],
    out_dir: Annotated[Path, typer.Option("--out", help="Output directory; rerun with the same settings to resume.")],
    data_dir: Annotated[str | None, typer.Option(help=_eval_help("data_dir"))] = _EVAL_DEFAULT["data_dir"],
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help=_eval_help("task_options") + " KEY=VALUE, repeatable (each task's: "
                     "trace-forge tasks show --help)."),
    ] = None,
    split: Annotated[str | None, typer.Option(help=_eval_help("split"))] = _EVAL_DEFAULT["split"],
    limit: Annotated[int | None, typer.Option(help=_eval_help("limit"))] = _EVAL_DEFAULT["limit"],
    multi_turn: Annotated[bool, typer.Option(help=_eval_help("multi_turn"))] = _EVAL_DEFAULT["multi_turn"],
    samples: Annotated[int, typer.Option(help=_eval_help("samples"))] = _EVAL_DEFAULT["samples"],
    temperature: Annotated[float, typer.Option(help=_eval_help("temperature"))] = _EVAL_DEFAULT["temperature"],
    top_p: Annotated[float, typer.Option(help=_eval_help("top_p"))] = _EVAL_DEFAULT["top_p"],
    max_tokens: Annotated[int, typer.Option(help=_eval_help("max_tokens"))] = _EVAL_DEFAULT["max_tokens"],
    seed: Annotated[int, typer.Option(help=_eval_help("seed"))] = _EVAL_DEFAULT["seed"],
    max_images: Annotated[int, typer.Option(help=_eval_help("max_images"))] = _EVAL_DEFAULT["max_images"],
    backend: Annotated[Backend, typer.Option(help=_eval_help("backend"))] = _EVAL_DEFAULT["backend"],
    base_url: Annotated[list[str] | None, typer.Option(help=_eval_help("base_urls") + " Repeat for replicas.")] = None,
    max_pixels: Annotated[int | None, typer.Option(help=_eval_help("max_pixels"))] = _EVAL_DEFAULT["max_pixels"],
    frame: Annotated[ApiFrame, typer.Option(help=_eval_help("frame"))] = _EVAL_DEFAULT["frame"],
    concurrency: Annotated[int, typer.Option(help=_eval_help("concurrency"))] = _EVAL_DEFAULT["concurrency"],
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help=_eval_help("timeout_s"))] = _EVAL_DEFAULT[
        "timeout_s"],
    max_retries: Annotated[int, typer.Option(min=0, help=_eval_help("max_retries"))] = _EVAL_DEFAULT["max_retries"],
    max_failure_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help=_eval_help("max_failure_rate"))] = (
        _EVAL_DEFAULT["max_failure_rate"]),
    grounding_margin: Annotated[float, typer.Option(min=0.0, help=_eval_help("grounding_margin"))] = _EVAL_DEFAULT[
        "grounding_margin"],
) -> None:
    """Evaluate a model on a benchmark with the official verifier; writes samples.jsonl, summary.json/.md.

    A killed run resumes from its finished samples when rerun with the same settings. A sample whose request the
    server refuses for good (e.g. a prompt over its context length) or whose replies stay malformed is recorded
    with its error and scored 0; exit 1 when more than --max-failure-rate of the samples failed.
    """
    from grounded_rl.eval import TooManyFailures, evaluate
    from trace_forge.tasks import parse_task_options

    config = EvalConfig(
        task=task, model=model, data_dir=data_dir, task_options=parse_task_options(option or []), split=split,
        limit=limit, multi_turn=multi_turn, samples=samples, temperature=temperature, top_p=top_p,
        max_tokens=max_tokens, seed=seed, max_images=max_images, backend=backend, base_urls=list(base_url or []),
        max_pixels=max_pixels, frame=frame, concurrency=concurrency, timeout_s=timeout, max_retries=max_retries,
        max_failure_rate=max_failure_rate, grounding_margin=grounding_margin,
    )
    scores: list[float] = []
    try:
        with Progress(f"eval {task}", None) as progress:

            def on_record(record: dict[str, Any], done: int, total: int) -> None:
                scores.append(record["score"])
                progress.update(done, total=total, status=f"accuracy so far {100 * sum(scores) / len(scores):.1f}%")

            summary = evaluate(config, out_dir, on_record=on_record)
    except TooManyFailures as e:
        stdout.print(_table(e.summary, samples))
        raise
    stdout.print(_table(summary, samples))
    stdout.print(f"wrote {out_dir / 'summary.json'}", highlight=False)


def _table(summary: dict[str, Any], k: int) -> Table:
    counts = summary["counts"]
    failed = f", {counts['failed']} failed" if counts.get("failed") else ""
    table = Table(title=f"{summary['task']}: {summary['metrics']['questions']} questions, "
                        f"{counts['answered']}/{counts['samples']} samples answered{failed}")
    table.add_column("category")
    table.add_column(f"avg@{k} (%)", justify="right")
    table.add_column(f"pass@{k} (%)", justify="right")
    avg, passed = summary["metrics"][f"avg@{k}"], summary["metrics"][f"pass@{k}"]
    for name in avg:
        table.add_row(name, f"{100 * avg[name]:.2f}", f"{100 * passed[name]:.2f}")
    return table


_DEMO_EXAMPLES = """\
Examples:

  grounded-rl demo --model runs/vigorl-3b --image street.jpg --query "What colour is the umbrella?" --out demo.png

  grounded-rl demo --model runs/vigorl-3b-multi --image screen.png --query "Open the settings" --task-kind point \
--multi-turn --out click.png

  grounded-rl demo --model runs/vigorl-3b --image room.jpg --query "Is the lamp left of the sofa?" \
--task-kind option --choice yes --choice no --out lamp.png
"""


@app.command("demo", epilog=_DEMO_EXAMPLES)
def demo_command(
    model: Annotated[str, typer.Option(help=_demo_help("model"))],
    image: Annotated[Path, typer.Option(exists=True, dir_okay=False, help=_demo_help("image"))],
    query: Annotated[str, typer.Option(help=_demo_help("query"))],
    out: Annotated[Path, typer.Option(help=_demo_help("out"))],
    task_kind: Annotated[AnswerKind, typer.Option(help=_demo_help("task_kind"))] = _DEMO_DEFAULT["task_kind"],
    choice: Annotated[list[str] | None, typer.Option(help=_demo_help("options") + " Repeat per choice.")] = None,
    multi_turn: Annotated[bool, typer.Option(help=_demo_help("multi_turn"))] = _DEMO_DEFAULT["multi_turn"],
    temperature: Annotated[float, typer.Option(help=_demo_help("temperature"))] = _DEMO_DEFAULT["temperature"],
    max_tokens: Annotated[int, typer.Option(help=_demo_help("max_tokens"))] = _DEMO_DEFAULT["max_tokens"],
    seed: Annotated[int, typer.Option(help=_demo_help("seed"))] = _DEMO_DEFAULT["seed"],
    backend: Annotated[Backend, typer.Option(help=_demo_help("backend"))] = _DEMO_DEFAULT["backend"],
    base_url: Annotated[list[str] | None, typer.Option(help=_demo_help("base_urls"))] = None,
    frame: Annotated[ApiFrame, typer.Option(help=_demo_help("frame"))] = _DEMO_DEFAULT["frame"],
) -> None:
    """Run a model on one image and draw its trajectory: numbered points, step texts, zoom crops."""
    from grounded_rl.demo import no_answer, run_demo

    config = DemoConfig(
        model=model, image=str(image), query=query, out=str(out), task_kind=task_kind, options=list(choice or []),
        multi_turn=multi_turn, temperature=temperature, max_tokens=max_tokens, seed=seed, backend=backend,
        base_urls=list(base_url or []), frame=frame,
    )
    dialog, path = run_demo(config)
    for i, turn in enumerate(dialog.turns, 1):
        console.print(f"[bold]turn {i}[/]", highlight=False)
        console.print(turn.text, markup=False, highlight=False)
    typer.echo(f"answer: {dialog.answer if dialog.answer is not None else no_answer(dialog)}")
    typer.echo(f"wrote {path}")
    if dialog.error is not None:
        raise typer.Exit(1)
