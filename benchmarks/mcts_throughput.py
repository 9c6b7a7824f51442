"""MCTS throughput: trace-forge's concurrent search vs. the reference design, against a sequence-limited server.

A loopback OpenAI-compatible server runs in its own process, as a real one would, and behaves like a GPU server at
its batch limit: it holds at most ``--server-sequences`` sequences at once, a request for ``n = k`` samples holding
``k`` of them (first come, first served) for ``--latency`` seconds. Its replies are a deterministic scripted teacher
(grounded steps, answers after a few steps) seeded by the request's seed and the question, so every question grows
its own tree.

The questions carry V*-size photos: generated JPEG files of a few megapixels (V*Bench's are 1690x1500 to 5759x1440)
whose sizes are not multiples of 28. Under Qwen's pixel budget (``--max-pixels``, default 12,845,056) the resize only
rounds them to the grid, so the client sends each file as it is and the server rounds it, as with the real
benchmark; a smaller budget (``--max-pixels 1003520``) makes the client resize and re-encode each photo instead.

- **trace-forge**: ``run_search`` with the client's request limit at the server's sequence capacity: many trees at
  once, one request with ``n = k`` per expansion, rollouts of all children in parallel, images encoded once per
  question (the file as it is, or resized to JPEG q95), lean HTTP transport.
- **baseline** (the reference design, ``vigorl-code.md`` section 1): 10 worker threads, each searching one question
  at a time with blocking SDK calls, one call per child and one per rollout step, the image as a base64 PNG; seeds
  count up per question from a per-question start, so its trees differ like ours.

The baseline runs ``--baseline-questions`` questions (it is slow by design) and its time is extrapolated to the full
question count. The **ideal** is the server's work in sequences: ``sequences x latency / server sequences``. The
client's CPU time (all threads) and peak RSS are measured over trace-forge's search alone.

Run from the repository root (about 8 minutes on 2 idle cores: 30 s to write the photos, about 4.5 minutes of
search, 2 of baseline; the final line is machine-readable)::

    uv run python -m benchmarks.mcts_throughput --latency 0.5 --server-sequences 256 --questions 768 --simulations 8 \
        --baseline-questions 10

``RESULT speedup=<baseline / trace-forge> ideal_ratio=<trace-forge / ideal> client_cpu_ms_per_request=<c>
peak_rss_mb=<m>``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
from openai import OpenAI
from PIL import Image, ImageDraw

from trace_forge.grounding import Box
from trace_forge.grounding.format import parse_response
from trace_forge.grounding.frames import QWEN_MAX_PIXELS, Resize
from trace_forge.search.mcts import SearchConfig, run_search
from trace_forge.search.store import RunStore
from trace_forge.search.tree import Tree, backup, select
from trace_forge.tasks import AnswerKind, Sample, get_task
from trace_forge.tasks.prompts import prompts_for
from trace_forge.teachers import ImageRef, RuntimeConfig, build_client
from trace_forge.teachers.images import ImageEncoder

OPTIONS = ["red", "green", "blue", "yellow"]
FORCE = prompts_for(AnswerKind.OPTION).teacher_force_answer()
# V*Bench-like photo sizes (none a multiple of 28): 2.1 to 3.6 megapixels.
SIZES = [(1960, 1470), (2120, 1399), (2248, 1259), (1864, 1398), (2384, 1573), (2248, 1686)]


# --- the questions --------------------------------------------------------------------------------------------------


def ball(i: int) -> tuple[tuple[int, int], Box]:
    """Question ``i``'s photo size and the box of its ball."""
    w, h = SIZES[i % len(SIZES)]
    x, y = 100 + i * 37 % (w - 200), 100 + i * 53 % (h - 200)
    return (w, h), Box(x, y, x + 60, y + 60)


def write_photos(n: int, image_dir: Path) -> None:
    """One generated JPEG photo per question, with the question's coloured ball on it.

    The photos are smooth colour fields with grain, so they compress like camera photos rather than like flat
    synthetic images: a 1960x1470 one is 232 kB at quality 85 and 424 kB re-encoded at 95 after the resize to
    multiples of 28 (V*'s sa_4666 of that size: 214 kB and 368 kB). Six backgrounds are shared; the balls make every
    image distinct, as V*'s are. Run in a child process, so its arrays do not count in the client's peak RSS.
    """
    rng = np.random.default_rng(0)
    backgrounds = {}
    for w, h in SIZES:
        coarse = rng.integers(0, 256, (h // 64 + 2, w // 64 + 2, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC), dtype=np.int16)
        grain = rng.normal(0, 1.0, (h, w, 3)).astype(np.int16)
        backgrounds[w, h] = Image.fromarray(np.clip(field + grain, 0, 255).astype(np.uint8))
    for i in range(n):
        size, box = ball(i)
        photo = backgrounds[size].copy()
        ImageDraw.Draw(photo).ellipse((box.x1, box.y1, box.x2, box.y2), fill=OPTIONS[i % 4])
        photo.save(image_dir / f"q{i}.jpg", quality=85)


def make_samples(n: int, image_dir: Path) -> list[Sample]:
    """``n`` V*-style questions on the photos of :func:`write_photos`."""
    subprocess.run([sys.executable, "-m", "benchmarks.mcts_throughput", "--write-photos", str(image_dir),
                    "--questions", str(n)], check=True)
    return [
        Sample(id=f"q{i}", task="vstar", images=[image_dir / f"q{i}.jpg"],
               question=f"What is the color of the ball number {i}?", answer_kind=AnswerKind.OPTION,
               options=OPTIONS, answer=OPTIONS[i % 4], target_boxes=[ball(i)[1]], category="direct_attributes")
        for i in range(n)
    ]


def teacher_reply(texts: list[str], seed: object, i: int) -> str:
    """Deterministic teacher: steps with fresh points; answers from the third step on, or when forced."""
    text = "\n".join(texts)
    depth = text.count("Previous step")
    h = int.from_bytes(hashlib.sha256(f"{seed}/{i}/{depth}/{text}".encode()).digest()[:6])
    if FORCE in text or depth >= 6 or (depth >= 2 and h % 4 == 0):
        return f"<think>Comparing colours.</think>\n<answer>{OPTIONS[h % 4]}</answer>"
    return f"<think>The object near ({h % 1200 + 10}, {(h >> 12) % 1000 + 10}) is relevant.</think>"


# --- the server (its own process) -------------------------------------------------------------------------------


class Slots:
    """``capacity`` sequence slots, granted first come first served; a request for ``k`` holds ``k``."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self.waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, k: int) -> None:
        if not self.waiters and self.free >= k:
            self.free -= k
            return
        future = asyncio.get_running_loop().create_future()
        self.waiters.append((k, future))
        await future

    def release(self, k: int) -> None:
        self.free += k
        while self.waiters and self.waiters[0][0] <= self.free:
            k, future = self.waiters.popleft()
            self.free -= k
            future.set_result(None)


async def serve(latency: float, capacity: int) -> None:
    """Answer Chat Completions on a free port (printed) until stdin closes; then print counters as JSON."""
    slots = Slots(capacity)
    stats = {"requests": 0, "sequences": 0, "body_bytes": 0, "peak_sequences": 0, "busy": {}}
    start = time.monotonic()
    open_writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        open_writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                raw = await reader.readexactly(length)
                body = json.loads(_without_data_urls(raw))
                k = min(int(body.get("n") or 1), capacity)
                stats["requests"] += 1
                stats["sequences"] += k
                stats["body_bytes"] += length
                await slots.acquire(k)
                stats["peak_sequences"] = max(stats["peak_sequences"], capacity - slots.free)
                try:
                    await asyncio.sleep(latency)
                finally:
                    slots.release(k)
                bucket = str(int((time.monotonic() - start) // 10))  # sequence-seconds served per 10 s
                stats["busy"][bucket] = stats["busy"].get(bucket, 0) + k * latency
                texts = [p["text"] for m in body["messages"] for p in (
                    [{"type": "text", "text": m["content"]}] if isinstance(m["content"], str) else m["content"])
                    if p["type"] == "text"]
                choices = [{"index": i, "message": {"role": "assistant", "content": teacher_reply(texts,
                            body.get("seed"), i)}, "finish_reason": "stop"} for i in range(k)]
                data = json.dumps({"choices": choices, "usage": {"prompt_tokens": 1000, "completion_tokens": 20 * k}})
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                             % len(data) + data.encode())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            open_writers.discard(writer)
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096, limit=2**20)
    print(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()
    for writer in list(open_writers):  # idle kept-alive connections: their handlers then end on EOF
        writer.close()
    await asyncio.sleep(0.1)
    stats["cpu_s"] = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    print(json.dumps(stats), flush=True)


def _without_data_urls(body: bytes) -> bytes:
    """The request body with its image data URLs emptied: the scripted teacher reads only the texts, and parsing
    megabytes of base64 would make this server, not the client under test, the CPU hog of a 2-core machine."""
    parts, start = [], 0
    while (i := body.find(b'"data:', start)) >= 0:
        parts.append(body[start:i + 1])
        start = body.find(b'"', i + 1)
    parts.append(body[start:])
    return b"".join(parts)


class ServerProcess:
    """The server in a child process (so it shares no GIL or CPU time with the client)."""

    def __init__(self, latency: float, capacity: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.mcts_throughput", "--serve", "--latency", str(latency),
             "--server-sequences", str(capacity)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()

    def stop(self) -> dict:
        self.proc.stdin.close()
        stats = json.loads(self.proc.stdout.readline())
        self.proc.wait(timeout=30)
        return stats


# --- trace-forge --------------------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process: encoders included
    return usage.ru_utime + usage.ru_stime


def run_ours(samples, url, args, run_dir) -> dict:
    task = get_task("vstar")
    config = SearchConfig(simulations=args.simulations)
    # Twice the server's sequences in flight: a queue at the server keeps every slot busy while replies travel.
    client = build_client("openai", "teacher", [url], resize=Resize(max_pixels=args.max_pixels),
                          config=RuntimeConfig(concurrency=2 * args.server_sequences, timeout_s=600, max_retries=0))

    async def go():
        async with client:
            return await run_search(samples, task, client, config, RunStore(run_dir))

    cpu, start = cpu_seconds(), time.perf_counter()
    summary = asyncio.run(go())
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    assert summary.done == len(samples), summary
    return {"wall": wall, "cpu": cpu, "requests": client.usage.requests,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def image_cpu_ms(samples: list[Sample], max_pixels: int) -> float:
    """CPU milliseconds to prepare one question's image for sending (read and hash the file; decode, resize and
    JPEG-encode it when the resize scales; base64), measured on its own: the client's CPU that is per question, not
    per request."""
    encoder = ImageEncoder(Resize(max_pixels=max_pixels))
    start = time.process_time()
    sizes = [len(encoder.encode(ImageRef.of_sample(sample)).data_url_json) for sample in samples]
    assert all(sizes)
    return 1000 * (time.process_time() - start) / len(samples)


# --- baseline: the reference design -------------------------------------------------------------------------------


def baseline_question(sample: Sample, http: OpenAI, simulations: int, encoder: ImageEncoder) -> int:
    """One question searched the reference way: sequential blocking calls, one sample per call. Returns calls."""
    task = get_task("vstar")
    prompts = prompts_for(sample.answer_kind)
    image_url = encoder.encode(ImageRef(sample.canvas())).data_url  # a fresh PNG per question, as the reference
    calls = 0
    # The reference seeds every call; its seeds run on from a start that differs per question.
    seed = int.from_bytes(hashlib.sha256(sample.id.encode()).digest()[:3], "big") * 1000

    def call(prior: list[str], force: bool) -> str:
        nonlocal calls, seed
        calls += 1
        seed += 1
        text = prompts.teacher_user(sample, prior) + ("\n\n" + FORCE if force else "")
        reply = http.chat.completions.create(
            model="teacher", seed=seed, n=1, max_tokens=512,
            messages=[{"role": "system", "content": prompts.teacher_system()},
                      {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                   {"type": "text", "text": text}]}])
        return reply.choices[0].message.content or ""

    tree = Tree()
    texts: dict[int, list[str]] = {0: []}
    for _ in range(simulations):
        node = select(tree)
        if node.terminal or node.expanded:
            backup(tree, node, node.reward or 0.0)
            continue
        new = []
        for _child in range(3):  # one blocking call per child
            parsed = parse_response(call(texts[node.id], node.depth + 1 >= 10), expect="step")
            if parsed.answer:
                new.append(tree.add_child(node, answer=parsed.answer, reward=task.score(sample, parsed.answer)))
            elif parsed.think:
                child = tree.add_child(node, step=None)
                texts[child.id] = texts[node.id] + [parsed.think[0]]
                new.append(child)
        node.expanded = True
        for child in new:
            if child.terminal:
                backup(tree, child, child.reward or 0.0)
                continue
            for _r in range(2):  # rollouts: one blocking call per step
                prior = list(texts[child.id])
                reward = 0.0
                for t in range(1, 6):
                    parsed = parse_response(call(prior, t == 5), expect="step")
                    if parsed.answer:
                        reward = task.score(sample, parsed.answer)
                        break
                    prior += parsed.think[:1]
                backup(tree, child, reward)
    return calls


def run_baseline(samples, url, args) -> tuple[float, int]:
    work: queue.Queue[Sample] = queue.Queue()
    for s in samples:
        work.put(s)
    calls = [0] * args.baseline_workers
    encoder = ImageEncoder(format="png")  # the reference sends base64 PNG

    def worker(w: int) -> None:
        http = OpenAI(base_url=url, api_key="EMPTY", max_retries=0, timeout=600)
        while True:
            try:
                sample = work.get_nowait()
            except queue.Empty:
                return
            calls[w] += baseline_question(sample, http, args.simulations, encoder)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.baseline_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, sum(calls)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--latency", type=float, default=0.5, help="server seconds per request")
    p.add_argument("--server-sequences", type=int, default=256, help="sequences the server holds at once")
    p.add_argument("--questions", type=int, default=768)
    p.add_argument("--baseline-questions", type=int, default=10)
    p.add_argument("--baseline-workers", type=int, default=10)
    p.add_argument("--simulations", type=int, default=8, help="per question (the reference's n_simulations)")
    p.add_argument("--max-pixels", type=int, default=QWEN_MAX_PIXELS, help="the teacher's pixel budget")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child processes
    p.add_argument("--write-photos", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        asyncio.run(serve(args.latency, args.server_sequences))
        return
    if args.write_photos:
        write_photos(args.questions, args.write_photos)
        return

    with tempfile.TemporaryDirectory() as tmp:
        samples = make_samples(args.questions, Path(tmp))
        server = ServerProcess(args.latency, args.server_sequences)
        ours = run_ours(samples, server.url, args, Path(tmp) / "run")
        served = server.stop()
        image_ms = image_cpu_ms(samples[:len(SIZES)], args.max_pixels)
        server = ServerProcess(args.latency, args.server_sequences)
        base_wall, base_calls = run_baseline(samples[: args.baseline_questions], server.url, args)
        base_served = server.stop()

    ideal = served["sequences"] * args.latency / args.server_sequences
    base_full = base_wall * args.questions / args.baseline_questions
    cpu_ms = 1000 * ours["cpu"] / ours["requests"]
    print(f"server: latency {args.latency}s, {args.server_sequences} sequences at once; {args.questions} questions "
          f"on 2.1-3.6 MP photos, {args.simulations} simulations each, max {args.max_pixels} pixels")
    print(f"trace-forge : {ours['wall']:8.1f} s  {ours['requests']:6d} requests  {served['sequences']:6d} sequences  "
          f"{served['body_bytes'] / served['requests'] / 1e3:7.1f} kB/request  peak {served['peak_sequences']} "
          "sequences in flight")
    print(f"ideal bound : {ideal:8.1f} s  (sequences x latency / server sequences)")
    busy = served["busy"]
    print("server busy by 10 s:", " ".join(f"{busy[k] / (10 * args.server_sequences):.0%}"
                                         for k in sorted(busy, key=int)))
    # Both processes share this machine's cores: if their CPU seconds approach wall x cores, the run was CPU-bound.
    print(f"CPU seconds : client {ours['cpu']:.0f}, server process {served['cpu_s']:.0f}, over {ours['wall']:.0f} s "
          f"of wall time")
    image_share = image_ms * args.questions / ours["requests"]
    print(f"client      : {cpu_ms:.3f} ms CPU per request (all threads), peak RSS {ours['peak_rss_mb']:.0f} MB; "
          f"of which images {image_share:.3f} ms ({image_ms:.1f} ms per question)")
    print(f"baseline    : {base_wall:8.1f} s  {base_calls:6d} calls on {args.baseline_questions} questions "
          f"({base_calls / args.baseline_questions:.1f}/question, {args.baseline_workers} workers, "
          f"{base_served['body_bytes'] / base_served['requests'] / 1e3:.1f} kB/request)")
    print(f"baseline extrapolated to {args.questions} questions: {base_full:.1f} s")
    print(f"RESULT speedup={base_full / ours['wall']:.1f} ideal_ratio={ours['wall'] / ideal:.3f} "
          f"client_cpu_ms_per_request={cpu_ms:.3f} peak_rss_mb={ours['peak_rss_mb']:.0f}")


if __name__ == "__main__":
    main()
