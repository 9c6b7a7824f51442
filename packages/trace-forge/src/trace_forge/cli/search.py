"""``trace-forge search``: the front door. MCTS over a task's questions with a teacher, then linearization."""

from __future__ import annotations

import asyncio
import inspect
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from trace_forge.cli._app import app, console
from trace_forge.cli._app import out as stdout
from trace_forge.cli.options import IMAGE_FORMAT_HELP, Backend, ImageFormat, default, flag
from trace_forge.cli.progress import Progress
from trace_forge.errors import ConfigError
from trace_forge.grounding.frames import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS
from trace_forge.search.mcts import SearchConfig
from trace_forge.teachers.runtime import RuntimeConfig
from trace_forge.teachers.sim import SimTeacher

_EXAMPLES = (
    "Examples:\n\n"
    "  # offline dry run on the bundled samples with the simulated teacher\n\n"
    "  trace-forge search --task vstar --data-dir data/samples/vstar --teacher sim --out runs/vstar-sim\n\n"
    "  # a vLLM server (two replicas) with the paper's 20 simulations, first of 4 shards\n\n"
    "  trace-forge search --task vstar --data-dir /data/vstar --teacher openai "
    "--model Qwen/Qwen2.5-VL-72B-Instruct --base-url http://gpu1:8000/v1 --base-url http://gpu2:8000/v1 "
    "--simulations 20 --shard 0/4 --out runs/vstar-72b-s0"
)

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


_SIM = inspect.signature(SimTeacher).parameters  # the sim teacher's settings: one default each


@app.command(epilog=_EXAMPLES)
def search(
    task: Annotated[str, typer.Option(help="Task name (see `trace-forge tasks list`).")],
    out: Annotated[Path, typer.Option(help="Run directory (trees.jsonl, run.json, teacher cache, datasets).")],
    teacher: Annotated[Backend, typer.Option(
        help="Teacher backend: an OpenAI-compatible server or API, Anthropic, local transformers (hf), vLLM in "
             "process, or the simulator (sim: no model, for dry runs).")] = "sim",
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
        typer.Option("--option", "-o", help="Task option KEY=VALUE, repeatable (each task's: trace-forge tasks show "
                                            "--help)."),
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Search at most this many questions.")] = None,
    shard: Annotated[str | None, typer.Option(help="I/N: search only questions i with i % N == I.")] = None,
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help=(
        "Skip and count bad benchmark records (unreadable or oversized images, duplicate ids, boxes off the image, "
        "...) instead of stopping at the first."))] = False,
    simulations: Annotated[int, flag(SearchConfig, "simulations", min=1)] = default(SearchConfig, "simulations"),
    children: Annotated[int, flag(SearchConfig, "children", min=1)] = default(SearchConfig, "children"),
    rollouts: Annotated[int, flag(SearchConfig, "rollouts", min=1)] = default(SearchConfig, "rollouts"),
    max_depth: Annotated[int, flag(SearchConfig, "max_depth", min=1)] = default(SearchConfig, "max_depth"),
    rollout_max_steps: Annotated[int, flag(SearchConfig, "rollout_max_steps", min=1)] = default(
        SearchConfig, "rollout_max_steps"),
    c: Annotated[float, flag(SearchConfig, "c", min=0.0)] = default(SearchConfig, "c"),
    temperature: Annotated[float, flag(SearchConfig, "temperature", min=0.0)] = default(SearchConfig, "temperature"),
    top_p: Annotated[float, flag(SearchConfig, "top_p", min=0.0, max=1.0)] = default(SearchConfig, "top_p"),
    max_tokens: Annotated[int, flag(SearchConfig, "max_tokens", min=1)] = default(SearchConfig, "max_tokens"),
    max_calls: Annotated[int | None, flag(SearchConfig, "max_calls", min=1)] = default(SearchConfig, "max_calls"),
    max_question_tokens: Annotated[int | None, flag(SearchConfig, "max_question_tokens", min=1)] = default(
        SearchConfig, "max_question_tokens"),
    stop_after_correct: Annotated[int | None, flag(SearchConfig, "stop_after_correct", min=1)] = default(
        SearchConfig, "stop_after_correct"),
    seed: Annotated[int, flag(SearchConfig, "seed")] = default(SearchConfig, "seed"),
    concurrency: Annotated[int, flag(RuntimeConfig, "concurrency", min=1, help="Teacher requests in flight at once.")
                           ] = default(RuntimeConfig, "concurrency"),
    requests_per_second: Annotated[float | None, flag(RuntimeConfig, "requests_per_second", help=(
        "Rate limit of teacher requests."))] = default(RuntimeConfig, "requests_per_second"),
    timeout: Annotated[float, flag(RuntimeConfig, "timeout_s", "--timeout", min=0.1, help=(
        "Seconds before a teacher request is cancelled."))] = default(RuntimeConfig, "timeout_s"),
    max_retries: Annotated[int, flag(RuntimeConfig, "max_retries", min=0, help=(
        "Retries per request on 429/5xx/timeouts."))] = default(RuntimeConfig, "max_retries"),
    max_pixels: Annotated[
        int,
        typer.Option(min=0, help="The teacher's pixel budget (Qwen2.5-VL smart_resize, multiples of 28): teacher "
                     "points are read in that frame. Images it would scale are resized before sending; a JPEG or PNG "
                     "it only rounds to the grid is sent as its file, for the server to round. The default is "
                     "Qwen2.5-VL's own bound; use the server's, or a tighter one. 0 sends originals: for APIs that "
                     "answer in original pixels."),
    ] = QWEN_MAX_PIXELS,
    min_pixels: Annotated[int, typer.Option(min=1, help="Lower pixel bound of the resize (unused with "
                                            "--max-pixels 0).")] = QWEN_MIN_PIXELS,
    image_format: Annotated[ImageFormat, typer.Option(help=IMAGE_FORMAT_HELP)] = "auto",
    sim_skill: Annotated[float, typer.Option(help="sim: probability a step points at the target.")] = _SIM[
        "skill"].default,
    sim_accuracy: Annotated[float, typer.Option(help="sim: probability a final answer is right before a step hit "
                                                "the target.")] = _SIM["answer_accuracy"].default,
    resume: Annotated[bool, typer.Option(help="Continue the run in OUT, skipping finished questions.")] = False,
    linearize: Annotated[bool, typer.Option(help="Write the single-turn dataset when the search ends.")] = True,
    quiet: Annotated[bool, typer.Option(help="No progress display.")] = False,
) -> None:
    """Mine grounded reasoning trees for a task's questions with MCTS over a teacher VLM.

    Each finished question is appended to OUT/trees.jsonl at once (a kill loses at most the questions in flight);
    teacher replies are cached in OUT/cache.sqlite, so --resume pays again only for the requests in flight at the
    kill. A question with no usable reply is recorded in OUT/errors.jsonl and searched again by --resume. At the end
    the trees are linearized into a Hugging Face dataset under OUT/dataset-single (see `trace-forge linearize` for
    multi-turn).
    """
    from trace_forge import __version__
    from trace_forge.durable import OutputLock
    from trace_forge.grounding import Resize
    from trace_forge.search.records import RunRecord
    from trace_forge.search.store import RunStore
    from trace_forge.tasks import TaskSpec, parse_task_options
    from trace_forge.tasks.prompts import PROMPT_VERSION
    from trace_forge.teachers import build_client

    shard_in = _parse_shard(shard)
    with OutputLock(out, "search"):  # one search per run folder: a second would pay twice and mix records
        config = SearchConfig(
            simulations=simulations, c=c, children=children, rollouts=rollouts, max_depth=max_depth,
            rollout_max_steps=rollout_max_steps, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
            seed=seed, max_calls=max_calls, max_question_tokens=max_question_tokens,
            stop_after_correct=stop_after_correct,
        )
        model = model or ("sim" if teacher == "sim" else None)
        if model is None:
            raise ConfigError(f"--model is required for teacher {teacher!r}")
        store = RunStore(out)
        previous = store.read_run()
        if resume and previous is None:
            raise ConfigError(f"--resume: {out} holds no run (no {store.run_path.name}); drop --resume to start one")
        if not resume and (previous is not None or store.trees_path.exists()):
            raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        spec = TaskSpec(task, parse_task_options(option or []))
        task_obj = spec.build()
        samples = list(task_obj.load(data_dir, split=split, limit=limit, skip_bad=skip_bad))
        if task_obj.skipped:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(task_obj.skipped.items()))
            console.print(f"[yellow]skipped {sum(task_obj.skipped.values())} bad record(s)[/] ({escape(reasons)})",
                          highlight=False)
        if shard_in is not None:
            samples = [s for i, s in enumerate(samples) if i % shard_in[1] == shard_in[0]]
        if not samples:
            where = str(data_dir) if data_dir is not None else f"the Hub dataset {task_obj.hub_id}"
            raise ConfigError(f"no questions to search in {where} (task {task}, split "
                              f"{split or task_obj.default_split}" + (f", shard {shard}" if shard else "") + ")")

        extra = {}
        if teacher == "sim":
            extra = {"samples": samples, "skill": sim_skill, "answer_accuracy": sim_accuracy, "seed": seed}
        resize = Resize(min_pixels=min_pixels, max_pixels=max_pixels) if max_pixels else None
        runtime = RuntimeConfig(concurrency=concurrency, requests_per_second=requests_per_second, timeout_s=timeout,
                                max_retries=max_retries)
        client = build_client(teacher, model, base_url or (), api_key_env, config=runtime,
                              cache_path=store.cache_path, resize=resize, image_format=image_format, **extra)
        run = RunRecord(
            task=spec,
            params=asdict(config),
            teacher={"backend": teacher, "model": model, "base_urls": list(base_url or []),
                     "max_pixels": resize.max_pixels if resize else None,
                     "min_pixels": resize.min_pixels if resize else None, "image_format": image_format,
                     **client.teacher.describe()},
            prompt_version=PROMPT_VERSION,
            data_dir=str(data_dir.resolve()) if data_dir else None,
            split=split,
            limit=limit,
            shard=shard,
            command=shlex.join(["trace-forge", *sys.argv[1:]]),
            versions={"trace_forge": __version__, "python": platform.python_version()},
        )
        if previous is not None:
            changed = previous.differences(run)
            if changed:
                asyncio.run(client.aclose())
                raise ConfigError(f"--resume: {out} was made with other settings ({'; '.join(changed)}); use the same "
                                  "settings, or another --out")
        store.start_session(run, resume=resume)

        usage_log = _UsageLog(store, client)
        try:
            summary = asyncio.run(
                _search_with_progress(samples, task_obj, client, config, store, quiet, usage_log, data_dir))
        finally:  # an interrupted run still records what it spent
            usage_log.save(finished=True)
        _print_summary(summary, client.snapshot(), len(samples), priced=teacher != "sim")

        if linearize and store.trees_path.exists():
            from trace_forge.dataset import linearize_run
            from trace_forge.errors import DataError

            try:
                counts = linearize_run(out, out / "dataset-single", "single", data_dir=data_dir, overwrite=True)
            except DataError as e:  # e.g. no correct trajectory yet: the trees are still worth keeping
                console.print(f"[yellow]no dataset written:[/] {escape(str(e))}")
            else:
                sizes = ", ".join(f"{name} {sum(kinds.values())}" for name, kinds in counts.rows.items())
                stdout.print(f"single-turn dataset: {out / 'dataset-single'} ({sizes})", highlight=False)
        if summary.failed:
            console.print(f"[yellow]{summary.failed} question(s) failed; see {store.errors_path}[/]")
            raise typer.Exit(1)


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


async def _search_with_progress(samples, task, client, config, store, quiet, usage_log, data_dir):
    from trace_forge.search.mcts import run_search

    start = time.monotonic()
    counts = {"done": 0, "correct": 0}

    async with client:
        finished = store.finished()
        with Progress("search", len(samples), enabled=not quiet) as progress:
            progress.update(sum(s.id in finished for s in samples))

            def on_done(sample, result):
                usage_log.tick()
                counts["done"] += 1
                counts["correct"] += bool(result and result.correct)
                u = client.usage
                rate = u.requests / max(time.monotonic() - start, 1e-6)
                cost = u.cost_usd()
                progress.advance(status=(
                    f"with a correct trajectory {counts['correct']}/{counts['done']} · {rate:.1f} teacher calls/s · "
                    f"{u.prompt_tokens + u.completion_tokens:,} tokens · {u.cache_hits} cache hits"
                    + (f" · ${cost:.2f}" if cost is not None else "")
                ))

            return await run_search(samples, task, client, config, store, data_dir=data_dir, on_done=on_done)


def _print_summary(summary, usage, total, *, priced: bool) -> None:
    """The run's result table, on stdout. ``priced``: the teacher bills by token (not ``sim``), so a cost line."""
    table = Table(title="search", show_header=False)
    cost = usage.get("cost_usd")
    rows = [("questions", total), ("searched now", summary.done), ("already done (resume)", summary.skipped),
            ("failed", summary.failed),
            ("with a correct trajectory", f"{summary.solved} of {total} ({summary.solved / max(total, 1):.0%})"),
            ("teacher requests (this session)", usage.get("requests")),
            ("cache hits", usage.get("cache_hits")),
            ("prompt / completion tokens", f"{usage.get('prompt_tokens')} / {usage.get('completion_tokens')}")]
    if priced:
        rows.append(("estimated cost", f"${cost:.2f}" if cost is not None else
                     f"unknown (no price for {usage.get('model')!r} in the table)"))
    for key, value in rows:
        table.add_row(key, escape(str(value)))
    stdout.print(table)
