"""``trace-forge search``: the front door. MCTS over a task's questions with a teacher, then linearization."""

from __future__ import annotations

import asyncio
import itertools
import platform
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from trace_forge.cli._app import app, console
from trace_forge.errors import ConfigError
from trace_forge.grounding.frames import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS

_EXAMPLES = (
    "Examples:\n\n"
    "  # offline dry run on the bundled samples with the simulated teacher\n\n"
    "  trace-forge search --task vstar --data-dir data/samples/vstar --teacher sim --out runs/vstar-sim\n\n"
    "  # a vLLM server (two replicas) with the paper's 20 simulations, first of 4 shards\n\n"
    "  trace-forge search --task vstar --data-dir /data/vstar --teacher openai "
    "--model Qwen/Qwen2.5-VL-72B-Instruct --base-url http://gpu1:8000/v1 --base-url http://gpu2:8000/v1 "
    "--simulations 20 --shard 0/4 --out runs/vstar-72b-s0"
)

# Parameters that must match for --resume to continue a run (others, like concurrency, may change); the teacher's
# settings are compared too, less where it is served (see _resume_identity).
_RESUME_KEYS = ("task", "task_options", "data_dir", "split", "params", "teacher_name", "teacher_model",
                "prompt_version")

# Seconds between writes of the teacher usage to run.json during a run: what a kill can lose of the accounting.
USAGE_SAVE_INTERVAL_S = 30.0


def _parse_shard(shard: str | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must look like I/N (e.g. 0/4), got {shard!r}") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard {shard}: need 0 <= I < N")
    return i, n


@app.command(epilog=_EXAMPLES)
def search(
    task: Annotated[str, typer.Option(help="Task name (see `trace-forge tasks list`).")],
    out: Annotated[Path, typer.Option(help="Run directory (trees.jsonl, run.json, teacher cache, datasets).")],
    teacher: Annotated[str, typer.Option(help="Teacher backend: openai, anthropic, hf, vllm or sim.")] = "sim",
    model: Annotated[str | None, typer.Option(help="Teacher model name (sim: optional).")] = None,
    base_url: Annotated[
        list[str] | None, typer.Option(help="Teacher endpoint (OpenAI style includes /v1). Repeat for replicas.")
    ] = None,
    api_key_env: Annotated[str | None, typer.Option(help=(
        "Environment variable holding the API key (default OPENAI_API_KEY / ANTHROPIC_API_KEY; a --base-url "
        "server gets EMPTY unless this names its key)."))] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Local copy of the benchmark in its official layout (else the Hub).")
    ] = None,
    split: Annotated[str | None, typer.Option(help="Dataset split (task default when omitted).")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Task option KEY=VALUE (VALUE read as JSON if it parses); repeatable."),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Search at most this many questions.")] = None,
    shard: Annotated[str | None, typer.Option(help="I/N: search only questions i with i % N == I.")] = None,
    simulations: Annotated[int, typer.Option(min=1, help="MCTS simulations per question (paper: 20).")] = 8,
    children: Annotated[int, typer.Option(min=1, help="Children per expansion (one request with n=k).")] = 3,
    rollouts: Annotated[int, typer.Option(min=1, help="Rollouts per new child.")] = 2,
    max_depth: Annotated[int, typer.Option(min=1, help="Tree depth at which an answer is forced.")] = 10,
    rollout_max_steps: Annotated[int, typer.Option(min=1, help="Steps per rollout; the last is forced.")] = 5,
    c: Annotated[float, typer.Option(min=0.0, help="UCB exploration constant.")] = 2.0,
    temperature: Annotated[float, typer.Option(min=0.0, help="Teacher sampling temperature.")] = 1.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="Teacher nucleus sampling.")] = 1.0,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens per teacher step.")] = 512,
    max_calls: Annotated[
        int | None,
        typer.Option(min=1, help="Per-question budget of teacher requests (checked between simulations; one "
                     "simulation may overshoot)."),
    ] = None,
    max_question_tokens: Annotated[
        int | None, typer.Option(min=1, help="Per-question budget of prompt + completion tokens.")
    ] = None,
    stop_after_correct: Annotated[
        int | None, typer.Option(min=1, help="Stop a question once it has this many correct trajectories.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every teacher request (with the cache: reproducible).")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, help="Teacher requests in flight at once.")] = 64,
    requests_per_second: Annotated[float | None, typer.Option(help="Rate limit of teacher requests.")] = None,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds before a teacher request is cancelled.")] = 120.0,
    max_retries: Annotated[int, typer.Option(min=0, help="Retries per request on 429/5xx/timeouts.")] = 6,
    max_pixels: Annotated[
        int,
        typer.Option(min=0, help="Resize images before sending (Qwen2.5-VL smart_resize, multiples of 28) to at "
                     "most this many pixels; teacher points are read in that frame. The default is Qwen2.5-VL's own "
                     "bound, so a Qwen server's resize changes nothing and its frame is known. 0 sends originals: "
                     "for APIs that answer in original pixels."),
    ] = QWEN_MAX_PIXELS,
    min_pixels: Annotated[int, typer.Option(min=1, help="Lower pixel bound of the resize (unused with "
                                            "--max-pixels 0).")] = QWEN_MIN_PIXELS,
    sim_skill: Annotated[float, typer.Option(help="sim: probability a step points at the target.")] = 0.5,
    sim_accuracy: Annotated[float, typer.Option(help="sim: probability a final answer is right.")] = 0.5,
    resume: Annotated[bool, typer.Option(help="Continue a run in OUT, skipping finished questions.")] = False,
    linearize: Annotated[bool, typer.Option(help="Write the single-turn dataset when the search ends.")] = True,
    quiet: Annotated[bool, typer.Option(help="No progress display.")] = False,
) -> None:
    """Mine grounded reasoning trees for a task's questions with MCTS over a teacher VLM.

    Each finished question is appended to OUT/trees.jsonl at once (a kill loses at most the questions in flight);
    teacher replies are cached in OUT/cache.sqlite, so --resume pays nothing twice. At the end the trees are
    linearized into a Hugging Face dataset under OUT/dataset-single (see `trace-forge linearize` for multi-turn).
    """
    from trace_forge import __version__
    from trace_forge.cli.tasks import make_task, parse_task_options
    from trace_forge.grounding import Resize
    from trace_forge.search.mcts import SearchConfig
    from trace_forge.search.store import RunStore
    from trace_forge.tasks.prompts import PROMPT_VERSION
    from trace_forge.teachers import RuntimeConfig, build_client

    shard_in = _parse_shard(shard)
    config = SearchConfig(
        simulations=simulations, c=c, children=children, rollouts=rollouts, max_depth=max_depth,
        rollout_max_steps=rollout_max_steps, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
        seed=seed, max_calls=max_calls, max_tokens_total=max_question_tokens, stop_after_correct=stop_after_correct,
    )
    model = model or ("sim" if teacher == "sim" else None)
    if model is None:
        raise ConfigError(f"--model is required for teacher {teacher!r}")
    store = RunStore(out)
    if store.trees_path.exists() and not resume:
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    task_options = parse_task_options(option or [])
    task_obj = make_task(task, task_options)
    samples = list(task_obj.load(data_dir, split=split, limit=limit))
    if shard_in is not None:
        samples = [s for i, s in enumerate(samples) if i % shard_in[1] == shard_in[0]]
    if not samples:
        raise ConfigError(f"no questions to search (task {task}, split {split}, shard {shard})")

    extra = {}
    if teacher == "sim":
        extra = {"samples": samples, "skill": sim_skill, "answer_accuracy": sim_accuracy, "seed": seed}
    resize = Resize(min_pixels=min_pixels, max_pixels=max_pixels) if max_pixels else None
    runtime = RuntimeConfig(concurrency=concurrency, requests_per_second=requests_per_second, timeout_s=timeout,
                            max_retries=max_retries)
    client = build_client(teacher, model, base_url or (), api_key_env, config=runtime,
                          cache_path=store.cache_path, resize=resize, **extra)
    run_info = {
        "command": shlex.join(["trace-forge", *sys.argv[1:]]),
        "task": task,
        "task_options": task_options,
        "data_dir": str(data_dir.resolve()) if data_dir else None,
        "split": split,
        "limit": limit,
        "shard": shard,
        "params": asdict(config),
        "teacher_name": teacher,
        "teacher_model": model,
        "teacher": {"backend": teacher, "model": model, "base_urls": list(base_url or []),
                    "max_pixels": resize.max_pixels if resize else None,
                    "min_pixels": resize.min_pixels if resize else None,
                    **client.teacher.describe()},
        "prompt_version": PROMPT_VERSION,
        "versions": {"trace_forge": __version__, "python": platform.python_version()},
    }
    previous = store.read_run_json()
    if resume and previous is not None:
        changed = _resume_changes(previous, run_info)
        if changed:
            asyncio.run(client.aclose())
            raise ConfigError(f"--resume: {out} was made with different {', '.join(changed)}; use another --out")
    store.start_session(run_info, resume=resume)

    usage_log = _UsageLog(store, client)
    try:
        summary = asyncio.run(_search_with_progress(samples, task_obj, client, config, store, quiet, usage_log))
    finally:  # an interrupted run still records what it spent
        usage_log.save(finished=True)
    usage = client.snapshot()
    _print_summary(summary, usage, len(samples))

    if linearize and store.trees_path.exists():
        from trace_forge.dataset import linearize_run
        from trace_forge.errors import DataError

        try:
            dataset = linearize_run(out, out / "dataset-single", "single", data_dir=data_dir, overwrite=True)
        except DataError as e:  # e.g. no correct trajectory yet: the trees are still worth keeping
            console.print(f"[yellow]no dataset written:[/] {escape(str(e))}")
        else:
            sizes = ", ".join(f"{name} {len(split_ds)}" for name, split_ds in dataset.items())
            console.print(f"single-turn dataset: {out / 'dataset-single'} ({sizes})")
    if summary.failed:
        console.print(f"[yellow]{summary.failed} question(s) failed; see {store.errors_path}[/]")
        raise typer.Exit(1)


def _resume_identity(info: dict) -> dict:
    """What must match between a run and its resumption: the keys above and the teacher's settings."""
    from trace_forge.teachers.runtime import teacher_settings

    return {**{k: info.get(k) for k in _RESUME_KEYS}, "teacher": teacher_settings(info.get("teacher") or {})}


def _resume_changes(previous: dict, current: dict) -> list[str]:
    """Names of the resume-identity fields that differ; teacher fields are named one by one (``teacher.skill``)."""
    old, new = _resume_identity(previous), _resume_identity(current)
    changed = [k for k in _RESUME_KEYS if old[k] != new[k]]
    changed += [f"teacher.{k}" for k in sorted(old["teacher"].keys() | new["teacher"].keys())
                if old["teacher"].get(k) != new["teacher"].get(k)]
    return changed


class _UsageLog:
    """Writes the teacher usage of this session to run.json as the run goes (at most every
    ``USAGE_SAVE_INTERVAL_S``) and at its end, so a killed run loses little of its accounting."""

    def __init__(self, store, client) -> None:
        self.store, self.client = store, client
        self.last = time.monotonic()

    def tick(self) -> None:
        if time.monotonic() - self.last >= USAGE_SAVE_INTERVAL_S:
            self.save()

    def save(self, *, finished: bool = False) -> None:
        self.store.record_usage(self.client.snapshot(), finished=finished)
        self.last = time.monotonic()


async def _search_with_progress(samples, task, client, config, store, quiet, usage_log):
    from trace_forge.search.mcts import run_search

    progress = Progress(
        TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    bar = progress.add_task("search", total=len(samples))
    stats = Text("")
    start = time.monotonic()
    counts = {"done": 0, "correct": 0}

    def on_done(sample, result):
        usage_log.tick()
        if quiet:
            return
        counts["done"] += 1
        counts["correct"] += bool(result and result.correct)
        u = client.usage
        rate = u.requests / max(time.monotonic() - start, 1e-6)
        cost = u.cost_usd()
        stats.plain = (
            f"with a correct trajectory {counts['correct']}/{counts['done']} · {rate:.1f} teacher calls/s · "
            f"{u.prompt_tokens + u.completion_tokens:,} tokens · {u.cache_hits} cache hits · "
            + (f"${cost:.2f}" if cost is not None else "cost unknown")
        )
        progress.advance(bar)

    async with client:
        finished = store.finished()
        progress.update(bar, completed=sum(s.id in finished for s in samples))
        with nullcontext() if quiet else Live(Group(progress, stats), console=console, refresh_per_second=4):
            return await run_search(samples, task, client, config, store, on_done=on_done)


def _print_summary(summary, usage, total) -> None:
    table = Table(title="search", show_header=False)
    share = summary.with_correct / summary.done if summary.done else 0.0
    cost = usage.get("cost_usd")
    for key, value in itertools.chain(
        [("questions", total), ("searched now", summary.done), ("already done (resume)", summary.skipped),
         ("failed", summary.failed), ("with a correct trajectory", f"{summary.with_correct} ({share:.0%})")],
        [("teacher requests", usage.get("requests")), ("cache hits", usage.get("cache_hits")),
         ("prompt / completion tokens", f"{usage.get('prompt_tokens')} / {usage.get('completion_tokens')}"),
         ("estimated cost", f"${cost:.2f}" if cost is not None else "unknown")],
    ):
        table.add_row(key, escape(str(value)))
    console.print(table)
