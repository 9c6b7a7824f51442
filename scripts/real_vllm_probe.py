"""Probe a real OpenAI-compatible server (vLLM) with the cases our fakes only imitate; print what it answered.

Each case runs through the teacher client (``TeacherClient`` over the lean transport, and over the SDK where it
says so); a few also send the raw request the client avoids, to record the server's own answer to it:

- ``n > 1`` at temperature 0: raw (vLLM refuses it) and through the client (one ``n=1`` request, copied);
- a prompt over ``--max-model-len``: the typed error and the server's words;
- a base URL without ``/v1``: the hint;
- the same image as a JPEG and as a PNG data URL;
- a JPEG file the resize only rounds to the grid, sent as it is: the server must make the encoder's ``model`` frame
  of it (as many prompt tokens as the image pre-resized to that frame; exit 1 otherwise);
- a reply cut at ``max_tokens`` and the runtime's length cap.

Usage (part of ``scripts/real_vllm_check.sh``)::

    uv run python scripts/real_vllm_probe.py http://127.0.0.1:8011/v1 tiny-qwen
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from PIL import Image

from trace_forge.grounding.frames import Resize
from trace_forge.teachers import (
    ImageRef,
    Message,
    RuntimeConfig,
    SamplingParams,
    TeacherError,
    build_client,
)
from trace_forge.teachers.images import ImageEncoder

PHOTO = Path(__file__).parents[1] / "data" / "samples" / "vstar" / "direct_attributes" / "sa_4666.jpg"
TINY_MAX_PIXELS = 256 * 28 * 28  # what the tiny model's processor keeps: sending more only costs bytes
CONFIG = RuntimeConfig(concurrency=4, timeout_s=300, max_retries=1, backoff_base_s=0.5)


def raw_post(url: str, body: dict) -> tuple[int, str]:
    """POST without our client: the server's own status and text."""
    request = urllib.request.Request(url + "/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json", "Authorization": "Bearer EMPTY"})
    try:
        with urllib.request.urlopen(request, timeout=300) as reply:
            return reply.status, reply.read().decode()[:300]
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()[:300]


async def ask(url: str, model: str, chat: list[Message], params: SamplingParams, **options) -> str:
    client = build_client("openai", model, [url], config=CONFIG, resize=Resize(max_pixels=TINY_MAX_PIXELS),
                          **options)
    try:
        async with client:
            replies = await client.generate(chat, params)
    except TeacherError as e:
        return f"{type(e).__name__} (status {e.status}): {e}"
    u = client.usage
    texts = [f"{r.text[:60]!r} [{r.finish_reason}]" for r in replies]
    return (f"ok: {len(replies)} replies from {u.requests} request(s) (retries {u.retries}, format retries "
            f"{u.format_retries}, truncated {u.truncated}): " + "; ".join(texts))


async def prompt_tokens(url: str, model: str, image: ImageRef) -> int:
    """The prompt tokens the server counts for one question on ``image``: its visual tokens and the same text."""
    client = build_client("openai", model, [url], config=CONFIG, resize=Resize(max_pixels=TINY_MAX_PIXELS))
    async with client:
        [reply] = await client.generate([Message("user", (image, "Where is the dot?"))],
                                        SamplingParams(max_tokens=1, temperature=0))
    return reply.prompt_tokens


async def rounded_file_frame(url: str, model: str) -> bool:
    """Whether a file sent as it is lands in the frame the encoder promised (see the module docstring)."""
    resize = Resize(max_pixels=TINY_MAX_PIXELS)
    image = Image.new("RGB", (300, 200), "white")
    image.paste((255, 0, 0), (140, 90, 160, 110))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dot.jpg"
        image.save(path, quality=90)
        ref = ImageRef(path)
        encoded = ImageEncoder(resize).encode(ref)
        as_is = encoded.data == path.read_bytes()
        tokens = await prompt_tokens(url, model, ref)
    frame = encoded.model_size
    resized = await prompt_tokens(url, model, ImageRef(image.resize(frame, Image.Resampling.BICUBIC)))
    other = await prompt_tokens(url, model, ImageRef(image.resize((frame[0] + 28, frame[1]))))
    same = as_is and tokens == resized != other
    case(f"300x200 JPEG file under a {TINY_MAX_PIXELS} px budget", f"{'sent as it is' if as_is else 're-encoded'}, "
         f"{tokens} prompt tokens; pre-resized to the model frame {frame[0]}x{frame[1]}: {resized}; "
         f"one grid cell wider: {other} ({'same frame' if same else 'FRAME MISMATCH'})")
    return same


def case(name: str, outcome: str) -> None:
    print(f"- {name}: {outcome}", flush=True)


async def main(url: str, model: str) -> None:
    question = "Where is the red dot? Answer as (x, y)."
    photo = Image.open(PHOTO).convert("RGB")
    chat = [Message("user", (ImageRef(photo, file=PHOTO), question))]
    text_only = [Message("user", (question,))]
    print(f"server {url}, model {model}")

    status, text = raw_post(url, {"model": model, "messages": [{"role": "user", "content": question}], "n": 2,
                                  "temperature": 0, "max_tokens": 8})
    case("raw n=2 at temperature 0", f"HTTP {status}: {text}")
    case("client n=3 at temperature 0", await ask(url, model, text_only, SamplingParams(n=3, temperature=0,
                                                                                       max_tokens=16)))
    case("client n=2 at temperature 0.7", await ask(url, model, text_only, SamplingParams(n=2, temperature=0.7,
                                                                                         max_tokens=16, seed=1)))

    long_chat = [Message("user", ("word " * 9000 + question,))]
    case("prompt over --max-model-len (lean)", await ask(url, model, long_chat, SamplingParams(max_tokens=8)))
    case("prompt over --max-model-len (sdk)", await ask(url, model, long_chat, SamplingParams(max_tokens=8),
                                                        transport="sdk"))
    bare = url.removesuffix("/v1")
    case("base URL without /v1 (lean)", await ask(bare, model, text_only, SamplingParams(max_tokens=8)))
    case("base URL without /v1 (sdk)", await ask(bare, model, text_only, SamplingParams(max_tokens=8),
                                                 transport="sdk"))
    case("unknown model name", await ask(url, "no-such-model", text_only, SamplingParams(max_tokens=8)))

    for fmt in ("jpeg", "png"):
        case(f"V* photo as a {fmt.upper()} data URL (resized to {TINY_MAX_PIXELS} px)",
             await ask(url, model, chat, SamplingParams(n=2, max_tokens=24, seed=3), image_format=fmt))
    case("V* photo JPEG, SDK transport", await ask(url, model, chat, SamplingParams(max_tokens=24, seed=3),
                                                   image_format="jpeg", transport="sdk"))
    case("max_tokens=4 (the server stops at 4 tokens)", await ask(url, model, text_only,
                                                                  SamplingParams(max_tokens=4, seed=2)))
    status, text = raw_post(url, {"model": model, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}},
        {"type": "text", "text": question}]}], "max_tokens": 8})
    case("raw bad image bytes", f"HTTP {status}: {text}")
    if not await rounded_file_frame(url, model):
        sys.exit(1)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8011/v1",
                     sys.argv[2] if len(sys.argv) > 2 else "tiny-qwen"))
