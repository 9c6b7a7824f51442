"""Peak memory of mining against the number of questions: `trace-forge search` (with its single-turn linearization)
and `trace-forge linearize --mode multi`, with the simulated teacher, on generated V*-layout sets.

Each set holds unique questions over V*-size photos (1960 x 1470 JPEGs, as the bundled V* sample), written in V*'s
official layout so the `vstar` task reads them. Every stage runs in a process of its own, whose peak resident memory
(``ru_maxrss`` from ``wait4``) is read when it exits; the figure of merit is the peak at the largest set over the
peak at the smallest. A miner whose memory grows with the questions (images held for the whole run, rows built
in memory) shows a ratio near the size ratio; one whose memory is bounded by what is in flight, a ratio near 1.
The search holds ``--concurrency`` questions at once (8 here, fewer than the smallest set), so that bound is the
same at every size.

Run from the repository root (minutes on 2 cores; more questions, more minutes)::

    uv run python -m benchmarks.mining_memory --sizes 50 400
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = (1960, 1470)
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 170, 60), "yellow": (235, 210, 30)}
OBJECTS = ("cup", "hat", "ball", "book", "sign", "box", "shoe", "bag")


def make_set(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` V*-layout questions (``direct_attributes/sa_<i>.jpg`` + ``.json``), each with a unique question."""
    rng = random.Random(seed)
    folder = root / "direct_attributes"
    folder.mkdir(parents=True)
    for i in range(n):
        image = Image.new("RGB", SIZE, tuple(rng.randint(60, 200) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(40):  # clutter, so the JPEG is photo-sized
            x, y = rng.randrange(SIZE[0] - 200), rng.randrange(SIZE[1] - 200)
            draw.rectangle((x, y, x + rng.randint(20, 200), y + rng.randint(20, 200)),
                           fill=tuple(rng.randrange(256) for _ in range(3)))
        colour = rng.choice(list(COLOURS))
        x, y = rng.randrange(100, SIZE[0] - 140), rng.randrange(100, SIZE[1] - 140)
        draw.ellipse((x, y, x + 40, y + 40), fill=COLOURS[colour])
        image.save(folder / f"sa_{i}.jpg", quality=90)
        options = [colour, *(c for c in COLOURS if c != colour)]
        obj = f"{OBJECTS[i % len(OBJECTS)]} number {i}"
        (folder / f"sa_{i}.json").write_text(json.dumps({
            "target_object": [obj], "bbox": [[x, y, 40, 40]], "question": f"What is the color of the {obj}?",
            "options": options,
        }))
    return root


def peak_rss_mb(command: list[str]) -> tuple[float, float]:
    """Run ``command``; return its peak resident memory (MB) and its wall time (s)."""
    start = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-2000:]}")
    return usage.ru_maxrss / 1024, time.monotonic() - start  # ru_maxrss is in KiB on Linux


def measure(n: int, work: Path, simulations: int, concurrency: int) -> dict[str, float]:
    print(f"{n} questions: writing the set, then search and linearize", file=sys.stderr, flush=True)
    data = make_set(work / f"vstar-{n}", n)
    run = work / f"run-{n}"
    cli = [sys.executable, "-m", "trace_forge.cli"]
    search_mb, search_s = peak_rss_mb([*cli, "search", "--task", "vstar", "--data-dir", str(data), "--teacher", "sim",
                                       "--simulations", str(simulations), "--concurrency", str(concurrency),
                                       "--out", str(run), "--quiet"])
    multi_mb, multi_s = peak_rss_mb([*cli, "linearize", str(run), "--mode", "multi"])
    return {"search_mb": search_mb, "search_s": search_s, "multi_mb": multi_mb, "multi_s": multi_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 400])
    parser.add_argument("--simulations", type=int, default=4)
    # Questions searched at once follow the request limit; below the smallest set, so every size holds as many
    # trees (and their decoded images) at once, and only what grows with the questions differs.
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mining-memory-"))
    try:
        results = {n: measure(n, work, args.simulations, args.concurrency) for n in sorted(args.sizes)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'questions':>9s} {'search + single (MB)':>21s} {'s':>6s} {'linearize multi (MB)':>21s} {'s':>6s}")
    for n, r in results.items():
        print(f"{n:9d} {r['search_mb']:21.0f} {r['search_s']:6.1f} {r['multi_mb']:21.0f} {r['multi_s']:6.1f}")
    small, large = results[min(results)], results[max(results)]
    peak = {n: max(r["search_mb"], r["multi_mb"]) for n, r in results.items()}
    ratio = peak[max(peak)] / peak[min(peak)]
    print(f"peak RSS {max(peak)} vs {min(peak)} questions: {ratio:.2f}x for {max(peak) / min(peak):.0f}x the "
          "questions")
    print(f"RESULT rss_ratio={ratio:.3f} peak_small_mb={peak[min(peak)]:.0f} peak_large_mb={peak[max(peak)]:.0f} "
          f"search_ratio={large['search_mb'] / small['search_mb']:.3f} "
          f"multi_ratio={large['multi_mb'] / small['multi_mb']:.3f}")


if __name__ == "__main__":
    main()
