"""MCTS throughput: trace-forge's concurrent search vs. a faithful baseline of the reference design.

A loopback OpenAI-compatible server, in its own process as a real server would be, answers with a fixed latency
and serves at most ``--server-concurrency`` requests at once (like a GPU server at its batch limit). Its replies
are a deterministic scripted teacher (grounded steps, answers after a few steps), so both searches do comparable
work.

- **trace-forge**: ``run_search`` with the client's request limit set to the server's concurrency: many trees at
  once, one request with ``n = k`` per expansion, rollouts of all children in parallel.
- **baseline** (the reference design, ``vigorl-code.md`` section 1): 10 worker threads, each searching one question
  at a time with blocking calls: one call per child and one per rollout step.

The baseline is run on ``--baseline-questions`` questions (it is slow by design) and its throughput extrapolated
to the full question count; both the measured and the extrapolated times are printed.

Run from the repository root::

    uv run python -m benchmarks.mcts_throughput --latency 0.5 --server-concurrency 256 --questions 256
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import queue
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

from openai import OpenAI
from PIL import Image, ImageDraw

from trace_forge.grounding import Box
from trace_forge.grounding.format import parse_response
from trace_forge.search.mcts import SearchConfig, run_search
from trace_forge.search.store import RunStore
from trace_forge.search.tree import Tree, backup, select
from trace_forge.tasks import AnswerKind, Sample, get_task
from trace_forge.tasks.prompts import prompts_for
from trace_forge.teachers import ImageRef, RuntimeConfig, build_client
from trace_forge.teachers.images import ImageEncoder

OPTIONS = ["red", "green", "blue", "yellow"]
FORCE = prompts_for(AnswerKind.OPTION).teacher_force_answer()


def make_samples(n: int) -> list[Sample]:
    """Small synthetic V*-style questions (small images keep the benchmark about scheduling, not bytes)."""
    samples = []
    for i in range(n):
        img = Image.new("RGB", (320, 240), (200, 200, 200))
        ImageDraw.Draw(img).ellipse((100 + i % 50, 80, 120 + i % 50, 100), fill=OPTIONS[i % 4])
        samples.append(Sample(
            id=f"q{i}", task="vstar", images=[img], question=f"What is the color of the ball number {i}?",
            answer_kind=AnswerKind.OPTION, options=OPTIONS, answer=OPTIONS[i % 4],
            target_boxes=[Box(100 + i % 50, 80, 120 + i % 50, 100)], category="direct_attributes",
        ))
    return samples


def teacher_reply(req, i: int) -> str:
    """Deterministic teacher: steps with fresh points; answers from the third step on, or when forced."""
    text = "\n".join(req.texts)
    depth = text.count("Previous step")
    h = int.from_bytes(hashlib.sha256(f"{req.body.get('seed')}/{i}/{depth}/{text[-40:]}".encode()).digest()[:6])
    if FORCE in text or depth >= 6 or (depth >= 2 and h % 4 == 0):
        return f"<think>Comparing colours.</think>\n<answer>{OPTIONS[h % 4]}</answer>"
    return f"<think>The object near ({h % 320}, {(h >> 12) % 240}) is relevant.</think>"


@contextmanager
def loopback_server(latency: float, concurrency: int):
    """The fake teacher server in a child process (so it does not share the GIL with the client); yields its URL."""
    code = (
        "import sys; from tests.trace_forge.fake_servers import FakeOpenAIServer; "
        "from benchmarks.mcts_throughput import teacher_reply\n"
        f"with FakeOpenAIServer(latency_s={latency}, max_concurrency={concurrency}, reply_text=teacher_reply) as s:\n"
        "    print(s.base_url, flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)


# --- trace-forge --------------------------------------------------------------------------------------------------


def run_ours(samples, url, args, run_dir) -> tuple[float, int]:
    task = get_task("vstar")
    config = SearchConfig(simulations=args.simulations)
    client = build_client("openai", "teacher", [url], config=RuntimeConfig(
        concurrency=args.server_concurrency, timeout_s=600, max_retries=0))

    async def go():
        async with client:
            return await run_search(samples, task, client, config, RunStore(run_dir))

    start = time.perf_counter()
    summary = asyncio.run(go())
    wall = time.perf_counter() - start
    assert summary.done == len(samples), summary
    return wall, client.usage.requests


# --- baseline: the reference design -------------------------------------------------------------------------------


def baseline_question(sample: Sample, http: OpenAI, simulations: int, encoder: ImageEncoder) -> int:
    """One question searched the reference way: sequential blocking calls, one sample per call. Returns calls."""
    task = get_task("vstar")
    prompts = prompts_for(sample.answer_kind)
    image_url = encoder.encode(ImageRef(sample.canvas())).data_url
    calls = 0

    def call(prior: list[str], force: bool, seed: int) -> str:
        nonlocal calls
        calls += 1
        text = prompts.teacher_user(sample, prior) + ("\n\n" + FORCE if force else "")
        reply = http.chat.completions.create(
            model="teacher", seed=seed, n=1, max_tokens=512,
            messages=[{"role": "system", "content": prompts.teacher_system()},
                      {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                   {"type": "text", "text": text}]}])
        return reply.choices[0].message.content or ""

    tree = Tree()
    texts: dict[int, list[str]] = {0: []}
    seed = 0
    for _ in range(simulations):
        node = select(tree)
        if node.terminal or node.expanded:
            backup(tree, node, node.reward or 0.0)
            continue
        new = []
        for _child in range(3):  # one blocking call per child
            seed += 1
            parsed = parse_response(call(texts[node.id], node.depth + 1 >= 10, seed), expect="step")
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
                    seed += 1
                    parsed = parse_response(call(prior, t == 5, seed), expect="step")
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
    encoder = ImageEncoder()

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
    p.add_argument("--server-concurrency", type=int, default=256, help="requests the server serves at once")
    p.add_argument("--questions", type=int, default=256)
    p.add_argument("--baseline-questions", type=int, default=20)
    p.add_argument("--baseline-workers", type=int, default=10)
    p.add_argument("--simulations", type=int, default=8)
    args = p.parse_args()

    import tempfile

    samples = make_samples(args.questions)
    with loopback_server(args.latency, args.server_concurrency) as url, tempfile.TemporaryDirectory() as tmp:
        ours_wall, ours_calls = run_ours(samples, url, args, tmp)
        base_wall, base_calls = run_baseline(samples[: args.baseline_questions], url, args)

    ideal = ours_calls * args.latency / args.server_concurrency
    base_full = base_wall * args.questions / args.baseline_questions
    print(f"server: latency {args.latency}s, concurrency {args.server_concurrency}; "
          f"{args.questions} questions, {args.simulations} simulations each")
    print(f"trace-forge : {ours_wall:8.1f} s  {ours_calls:6d} calls  ({ours_calls / args.questions:.1f}/question)")
    print(f"ideal bound : {ideal:8.1f} s  (trace-forge calls x latency / server concurrency)")
    print(f"baseline    : {base_wall:8.1f} s  {base_calls:6d} calls on {args.baseline_questions} questions "
          f"({base_calls / args.baseline_questions:.1f}/question, {args.baseline_workers} workers)")
    print(f"baseline extrapolated to {args.questions} questions: {base_full:.1f} s")
    print(f"speed-up vs baseline: {base_full / ours_wall:.1f}x   trace-forge / ideal: "
          + (f"{ours_wall / ideal:.2f}x" if ideal else "n/a (zero latency)"))


if __name__ == "__main__":
    main()
