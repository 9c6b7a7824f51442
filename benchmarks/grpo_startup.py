"""GRPO start-up: time and peak memory to build the prompt dataset, against the number of prompts.

    uv run python benchmarks/grpo_startup.py --prompts 25 100

The questions are V*-sized photos (2560 x 1920 JPEGs, about 1 MB each) in the layout of trace-forge's ``generic``
task. For each number of prompts, two paths run in fresh processes, after the imports and the (tiny) processor are
loaded:

- ``lazy``: :func:`grounded_rl.grpo.load_prompts` as GRPO runs it, then one dataloader fetch of a group of 8
  rollouts (the canvas is decoded there, once for the group);
- ``eager``: the baseline, what ``load_prompts`` did before: decode every canvas up front and store it in an
  ``Image`` column (each canvas PNG-encoded into the table), then fetch the same group (decoded once per rollout).

It prints seconds and peak memory growth (max RSS after the step minus RSS before it) per path and size, the
ratios eager / lazy, and how each grows from the smallest to the largest size. The target: lazy start-up memory
independent of the number of prompts. Nothing is asserted (timings depend on the machine). About 10 minutes on a
2-core machine, nearly all of it in the eager baseline's PNG encoding.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageFilter

WIDTH, HEIGHT = 2560, 1920
COLUMNS = {"image": "image", "question": "question", "answer": "answer", "answer_kind": "text"}
GROUP = 8  # rollouts per prompt (ViGoRL multi-turn)


def write_questions(folder: Path, n: int) -> Path:
    """``n`` photo-like JPEGs (smooth random colour fields with fine noise) and their questions as a JSONL file."""
    rng = random.Random(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        small = Image.frombytes("RGB", (40, 30), bytes(rng.randrange(256) for _ in range(40 * 30 * 3)))
        image = small.resize((WIDTH, HEIGHT), Image.BICUBIC).filter(ImageFilter.DETAIL)
        image.save(folder / "images" / f"{i:04d}.jpg", quality=90)
        lines.append(json.dumps({"image": f"images/{i:04d}.jpg", "question": "What colour is the sky?",
                                 "answer": "blue"}))
    path = folder / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode: str, questions: Path, n: int, model: Path) -> dict[str, float]:
    """One measurement in this (fresh) process."""
    from transformers import AutoProcessor

    from grounded_rl.grpo import PROMPT_FEATURES, GroundedGRPOConfig, load_prompts, prompt_rows
    from grounded_rl.models import Family, install_templates
    from trace_forge.grounding import Resize
    from trace_forge.tasks import TaskSpec

    processor = install_templates(AutoProcessor.from_pretrained(model), Family.QWEN2_5_VL)
    config = GroundedGRPOConfig(output_dir=str(questions.parent / "out"), model=str(model), task="generic",
                                task_options=COLUMNS, data_dir=str(questions), limit=n, report_to="none",
                                max_prompt_length=None)
    before = _rss_mb()
    start = time.perf_counter()
    if mode == "lazy":
        dataset = load_prompts(config, processor, Family.QWEN2_5_VL)
    else:
        from datasets import Dataset
        from datasets import Image as ImageFeature

        task = TaskSpec("generic", COLUMNS)
        samples = list(task.build().load(data_dir=questions, limit=n))
        columns = prompt_rows(samples, task, Resize.of_processor(processor), Family.QWEN2_5_VL, False)
        columns["image"] = [s.canvas() for s in samples]
        del columns["image_sources"], samples
        features = PROMPT_FEATURES.copy()
        del features["image_sources"]
        features["image"] = ImageFeature(mode="RGB")
        dataset = Dataset.from_dict(columns, features=features)
    seconds = time.perf_counter() - start
    start = time.perf_counter()
    group = dataset.__getitems__([0] * GROUP)
    fetch = time.perf_counter() - start
    assert len(group) == GROUP and group[0]["image"].size == (WIDTH, HEIGHT)
    return {"seconds": seconds, "fetch_seconds": fetch, "peak_mb": _peak_mb() - before, "prompts": len(dataset)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, nargs="+", default=[25, 100])
    parser.add_argument("--child", nargs=4, metavar=("MODE", "QUESTIONS", "N", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, questions, n, model = args.child
        print(json.dumps(child(mode, Path(questions), int(n), Path(model))))
        return

    from grounded_rl.tiny import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        questions = write_questions(root / "data", max(args.prompts))
        model = make_tiny_model(root / "tiny")
        results: dict[tuple[str, int], dict[str, float]] = {}
        for n in args.prompts:
            for mode in ("eager", "lazy"):
                out = subprocess.run([sys.executable, __file__, "--child", mode, str(questions), str(n), str(model)],
                                     capture_output=True, text=True, check=True)
                results[mode, n] = json.loads(out.stdout.strip().splitlines()[-1])

    print(f"\n{'path':<6} {'prompts':>7} {'start s':>8} {'peak MB':>8} {'group fetch s':>14}")
    for (mode, n), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(f"{mode:<6} {n:>7} {r['seconds']:8.2f} {r['peak_mb']:8.0f} {r['fetch_seconds']:14.3f}")
    small, large = min(args.prompts), max(args.prompts)
    fields = []
    for n in args.prompts:
        lazy, eager = results["lazy", n], results["eager", n]
        fields += [f"lazy_s_{n}={lazy['seconds']:.2f}", f"lazy_peak_mb_{n}={lazy['peak_mb']:.0f}",
                   f"eager_s_{n}={eager['seconds']:.2f}", f"eager_peak_mb_{n}={eager['peak_mb']:.0f}",
                   f"speedup_{n}={eager['seconds'] / lazy['seconds']:.1f}"]
    for mode in ("lazy", "eager"):
        growth = results[mode, large]["peak_mb"] / max(results[mode, small]["peak_mb"], 1.0)
        fields.append(f"{mode}_peak_growth_{small}_to_{large}={growth:.2f}")
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
