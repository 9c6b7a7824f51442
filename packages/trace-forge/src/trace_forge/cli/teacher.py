"""``trace-forge teacher``: check a teacher server before spending hours of search on it."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path
from typing import Annotated, Literal

import typer
from PIL import Image, ImageDraw
from rich.markup import escape

from trace_forge.cli._app import app, console
from trace_forge.cli.options import IMAGE_FORMAT_HELP, ImageFormat
from trace_forge.teachers.runtime import RuntimeConfig

# The check retries and times out exactly as a search does: the same defaults, from the one definition.
_RUNTIME = RuntimeConfig()

teacher_app = typer.Typer(help="Check teacher backends.", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")

_PROMPT = "Describe this image in one sentence, then give the pixel coordinates (x, y) of the red dot."
_DOT = (300, 100)  # where the generated test image has its red dot, to eyeball the reply's grounding


@teacher_app.command(
    "check",
    epilog=(
        "Examples:\n\n"
        "  trace-forge teacher check --teacher openai --model Qwen/Qwen2.5-VL-72B-Instruct "
        "--base-url http://gpu1:8000/v1 --base-url http://gpu2:8000/v1\n\n"
        "  trace-forge teacher check --teacher anthropic --model claude-sonnet-4-20250514 --image cat.png"
    ),
)
def check(
    teacher: Annotated[Literal["openai", "anthropic"], typer.Option(
        help="Backend: openai (also vLLM / SGLang servers) or anthropic.")],
    model: Annotated[str, typer.Option(help="Model name as the server knows it.")],
    base_url: Annotated[
        list[str] | None,
        typer.Option(help="Server endpoint (OpenAI style includes /v1). Repeat for replicas."),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(help=(
            "Environment variable holding the API key (default OPENAI_API_KEY / ANTHROPIC_API_KEY; a --base-url "
            "server gets EMPTY unless this names its key).")),
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Image to send; a generated test image when omitted."),
    ] = None,
    max_pixels: Annotated[
        int | None, typer.Option(help="Resize images to this pixel budget first (the model's max_pixels).")
    ] = None,
    image_format: Annotated[ImageFormat, typer.Option(help=IMAGE_FORMAT_HELP)] = "auto",
    max_tokens: Annotated[int, typer.Option(help="Tokens per reply.")] = 128,
    timeout: Annotated[
        float, typer.Option(help="Seconds before a request is cancelled (as in a search).")
    ] = _RUNTIME.timeout_s,
    retries: Annotated[
        int, typer.Option(help="Retries on rate limits, timeouts and server errors (as in a search).")
    ] = _RUNTIME.max_retries,
    price_table: Annotated[
        Path | None, typer.Option(exists=True, dir_okay=False, help="JSON price table overriding the built-in one.")
    ] = None,
) -> None:
    """Send one request with an image and n=2; print the replies, latency, token usage and whether n was honoured.

    Retries like a search (same policy and defaults), so a server a search would get through passes the check.
    Exits 1 with one line, naming the endpoint, when the request fails for good.
    """
    from trace_forge.grounding.frames import Resize
    from trace_forge.teachers import (
        ImageRef,
        Message,
        SamplingParams,
        TeacherError,
        build_client,
        load_price_table,
    )

    config = dataclasses.replace(_RUNTIME, concurrency=2, timeout_s=timeout, max_retries=retries)
    client = build_client(
        teacher, model, base_url or (), api_key_env,
        config=config,
        resize=Resize(max_pixels=max_pixels) if max_pixels is not None else None,
        image_format=image_format,
        prices=load_price_table(price_table) if price_table is not None else None,
    )
    endpoints = ", ".join(base_url or ["default endpoint"])
    ref = ImageRef(image if image is not None else _test_image())
    chat = [Message("user", (ref, _PROMPT))]

    async def ask() -> list:
        async with client:
            return await client.generate(chat, SamplingParams(n=2, max_tokens=max_tokens, temperature=0.7))

    start = time.perf_counter()
    try:
        replies = asyncio.run(ask())
    except TeacherError as e:
        # The error names the endpoint it came from; this line names them all (replicas), for a failure before one.
        message = escape(f"teacher check failed ({teacher}, {model}, {endpoints}): {e}")  # may hold [brackets]
        console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from e
    latency = time.perf_counter() - start

    usage = client.usage
    geometry = client.geometry(ref)
    typer.echo(f"teacher: {teacher}  model: {model}  endpoints: {endpoints}")
    typer.echo(f"image: {geometry.width}x{geometry.height} seen as {geometry.model_width}x{geometry.model_height} "
               f"(teacher points are in this 'model' frame)" + ("" if image else f"; red dot at {_DOT}"))
    for i, reply in enumerate(replies, 1):
        typer.echo(f"reply {i} [{reply.finish_reason}]: {reply.text.strip()}")
    cost = usage.cost_usd()
    typer.echo(f"latency: {usage.latency_percentiles()['p50']:.3f} s per request, {latency:.3f} s in all  "
               f"requests: {usage.requests} ({usage.retries + usage.format_retries} retries)  "
               f"tokens: prompt {usage.prompt_tokens}, "
               f"completion {usage.completion_tokens}  cost: " + (f"${cost:.6f}" if cost is not None else "unknown"))
    if not client.teacher.supports_n:
        typer.echo(f"n honoured: n/a ({teacher} samples one reply per request; sent {usage.requests})")
    elif usage.short_n:
        typer.echo(f"n honoured: no (server returned fewer than 2 choices; topped up, {usage.requests} requests)")
    else:
        typer.echo("n honoured: yes (the server returned 2 choices for n=2 in one reply)")


def _test_image() -> Image.Image:
    """A 448x336 gradient with a red dot at :data:`_DOT`: small, and easy to ground."""
    image = Image.linear_gradient("L").resize((448, 336)).convert("RGB")
    x, y = _DOT
    ImageDraw.Draw(image).ellipse((x - 12, y - 12, x + 12, y + 12), fill=(220, 20, 20))
    return image
