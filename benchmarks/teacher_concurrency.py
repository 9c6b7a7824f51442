"""How close does the teacher runtime get to ideal throughput at a given concurrency limit?

Starts a loopback OpenAI-compatible fake server with a fixed latency per request, fires a batch of requests
through :class:`~trace_forge.teachers.TeacherClient` (real ``openai`` SDK, real HTTP) at several concurrency
limits, and prints the wall time against the ideal ``requests x latency / limit``. A ratio near 1 means the
runtime adds little overhead; it grows with client-side CPU cost per request (JSON, SDK, event loop).

Run from the repository root (``-m`` puts it on the path, for the fake server in ``tests/``)::

    uv run python -m benchmarks.teacher_concurrency
    uv run python -m benchmarks.teacher_concurrency --requests 256 --latency-ms 20 --limits 1 16 256
"""

from __future__ import annotations

import argparse
import asyncio
import time

from tests.trace_forge.fake_servers import FakeOpenAIServer
from trace_forge.teachers import Message, RuntimeConfig, SamplingParams, TeacherClient, make_teacher


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency limit")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="server latency per request")
    parser.add_argument("--limits", type=int, nargs="+", default=[1, 8, 64], help="concurrency limits to try")
    parser.add_argument("--n", type=int, default=1, help="samples per request")
    return parser.parse_args()


async def fire(base_url: str, limit: int, requests: int, n: int) -> float:
    """Wall seconds for ``requests`` distinct chats through a client limited to ``limit`` in flight."""
    teacher = make_teacher("openai", "bench-model", [base_url])
    async with TeacherClient(teacher, RuntimeConfig(concurrency=limit, timeout_s=60)) as client:
        chats = [[Message("user", (f"question {i}",))] for i in range(requests)]
        start = time.perf_counter()
        await asyncio.gather(*(client.generate(c, SamplingParams(n=n)) for c in chats))
        return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    latency = args.latency_ms / 1000
    print(f"{args.requests} requests, server latency {args.latency_ms:g} ms, n={args.n}")
    print(f"{'limit':>6} {'wall s':>9} {'ideal s':>9} {'ratio':>7} {'server max in flight':>21}")
    for limit in args.limits:
        with FakeOpenAIServer(latency_s=latency) as server:
            wall = asyncio.run(fire(server.base_url, limit, args.requests, args.n))
        ideal = args.requests * latency / min(limit, args.requests)
        print(f"{limit:>6} {wall:>9.3f} {ideal:>9.3f} {wall / ideal:>7.2f} {server.max_in_flight:>21}")


if __name__ == "__main__":
    main()
