"""Client CPU per request and closeness to ideal throughput of the teacher runtime, per HTTP transport.

A loopback OpenAI-compatible server in its own process (the one of ``benchmarks.mcts_throughput``: a fixed latency,
a cap on sequences in flight) answers a batch of distinct chats sent through
:class:`~trace_forge.teachers.TeacherClient` over each transport of the ``openai`` backend: ``lean`` (our HTTP/1.1
client, bodies spliced from pre-serialized pieces) and ``sdk`` (the official SDK, the baseline). Each chat carries
the same image, as the requests of one search question do. Printed per transport: wall time against the ideal
``requests x latency / limit`` and the client's CPU per request (all threads; the server's CPU is not counted).

Run from the repository root::

    uv run python -m benchmarks.teacher_concurrency
    uv run python -m benchmarks.teacher_concurrency --requests 2000 --limit 256 --image data/samples/vstar/direct_attributes/sa_4666.jpg
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
from pathlib import Path

from PIL import Image

from benchmarks.mcts_throughput import ServerProcess
from trace_forge.grounding.frames import QWEN_MAX_PIXELS, Resize
from trace_forge.teachers import ImageRef, Message, RuntimeConfig, SamplingParams, build_client


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="requests per transport")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="server latency per request")
    parser.add_argument("--limit", type=int, default=128, help="client requests in flight (and server sequences)")
    parser.add_argument("--image", type=Path, default=None,
                        help="image sent with every request (default: a 448x336 test image)")
    return parser.parse_args()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def fire(url: str, transport: str, ref: ImageRef, args: argparse.Namespace) -> tuple[float, float]:
    """Wall seconds and client CPU seconds for ``args.requests`` distinct chats (after one warm-up request)."""
    client = build_client("openai", "bench-model", [url], resize=Resize(max_pixels=QWEN_MAX_PIXELS),
                          config=RuntimeConfig(concurrency=args.limit, timeout_s=120), transport=transport)
    async with client:
        def chat(i: int) -> list[Message]:
            return [Message("system", ("Answer in one grounded step.",)),
                    Message("user", (ref, f"Question {i}: where is the red dot? Answer as (x, y)."))]

        await client.generate(chat(-1))  # encodes the image and opens a connection: not what is measured
        cpu, start = cpu_seconds(), time.perf_counter()
        await asyncio.gather(*(client.generate(chat(i), SamplingParams(seed=i)) for i in range(args.requests)))
        return time.perf_counter() - start, cpu_seconds() - cpu


def main() -> None:
    args = parse_args()
    latency = args.latency_ms / 1000
    image = args.image if args.image is not None else Image.new("RGB", (448, 336), (30, 60, 90))
    ref = ImageRef(image)
    ideal = args.requests * latency / args.limit
    print(f"{args.requests} requests, server latency {args.latency_ms:g} ms, {args.limit} in flight, image "
          f"{args.image or '448x336 generated'}")
    print(f"{'transport':>9} {'wall s':>8} {'ideal s':>8} {'ratio':>6} {'client CPU ms/request':>22}")
    results = {}
    for transport in ("sdk", "lean"):
        server = ServerProcess(latency, args.limit)
        wall, cpu = asyncio.run(fire(server.url, transport, ref, args))
        served = server.stop()
        assert served["requests"] == args.requests + 1, served
        results[transport] = (wall, 1000 * cpu / args.requests)
        print(f"{transport:>9} {wall:>8.2f} {ideal:>8.2f} {wall / ideal:>6.2f} {results[transport][1]:>22.3f}")
    kb = served["body_bytes"] / served["requests"] / 1e3
    print(f"request body: {kb:.1f} kB")
    print(f"RESULT sdk_cpu_ms_per_request={results['sdk'][1]:.3f} lean_cpu_ms_per_request={results['lean'][1]:.3f} "
          f"cpu_ratio={results['sdk'][1] / results['lean'][1]:.1f} lean_ideal_ratio={results['lean'][0] / ideal:.2f} "
          f"body_kb={kb:.1f}")


if __name__ == "__main__":
    main()
