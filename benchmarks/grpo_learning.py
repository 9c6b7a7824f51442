"""Does GRPO learn? Mean reward at the start and the end of a short run, tiny model on CPU.

    uv run python benchmarks/grpo_learning.py --seeds 0 1

The task is synthetic and small enough for a 0.35M-parameter random model: a 112 x 112 image (16 visual tokens for
Qwen2.5-VL, whose model frame is then the pixel frame) with one red 48 x 48 square anywhere on a dark background, and
the question "Where is the red square?", answered with a point. The benchmark writes the questions into ``--out`` as
a JSONL file read by trace-forge's ``generic`` task, so the official point-in-box verifier scores every answer. A
policy that ignores the image can reach about 0.56 accuracy (always answering the centre); one that reads it, 1.0.
A point drawn from the distribution of square centres (what a warm-started but blind policy writes) hits about 0.37.

Per seed (model weights, images and sampling all follow the seed):

1. a random tiny Qwen2.5-VL (:func:`grounded_rl.tiny.make_tiny_model`);
2. warm start: SFT on one short grounded trace per training image, written in the trace dataset contract
   (:mod:`trace_forge.dataset`): ``<think>\\nThe red square is at (x, y).\\n</think>\\n<answer> (x, y) </answer>``
   with (x, y) the square's centre. Short traces make SFT converge in a few hundred steps (the loss falls from
   about 5.6 to about 0.2 per token), and rollouts sampled at temperature 1.0 then differ in the point they name,
   so about 40% hit and rewards vary within a group: GRPO has a signal;
3. single-turn GRPO on fresh images (each prompt seen once, so the reward measures images the policy never saw),
   rewards format 0.5 + accuracy 0.5 (ViGoRL's single-turn weights), point validity logged at weight 0; 60 steps of
   4 questions x 8 rollouts at lr 1e-3 with a KL of 0.04 to the SFT model. Chosen on a scratch seed (100): at
   5e-4 the policy barely moves in a few dozen steps; at 2e-3 or 5e-3 without KL the format collapses within 10.
   The blind policy cannot see where the square is, so what GRPO can learn here is mostly to pull its points
   towards the centre (accuracy 0.37 -> at most about 0.56); reading the image is beyond this model in minutes.

4. the control arm: the same GRPO run from the same SFT model, same seed, same prompts in the same order, with
   ``learning_rate=0`` (no update: the weights never move). Its reward still drifts between the first and the last
   steps, because later prompts may be easier or harder and sampling is noisy; only the GRPO arm's change beyond
   the control's is learning (a run at lr 1e-12 once drifted +0.019 reward, a third of the gain it was read as).

It prints the SFT loss at the first and last logged step, and for both arms the GRPO mean reward and each
component over the first and last ``--window`` steps, with their difference; the last line is
``RESULT grpo_gain=... control_gain=... net_gain=...`` (mean reward, last window minus first, averaged over seeds;
net = GRPO minus control). Nothing is asserted (CPU results vary with the machine). Stages run through the real
pipeline (:func:`grounded_rl.train.run_pipeline`) and :func:`grounded_rl.grpo.run_grpo`, so a rerun with the same
arguments reuses finished stages in ``--out``; delete it to start over.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import statistics
from dataclasses import replace
from pathlib import Path

from PIL import Image, ImageDraw

from grounded_rl.grpo import GroundedGRPOConfig, run_grpo
from grounded_rl.train import PipelineConfig, run_pipeline
from grounded_rl.training import RUN_FILE, RunOptions, config_from_mapping, read_run
from trace_forge.card import Provenance
from trace_forge.dataset import PIXEL_VIEW, TraceRow, write_rows
from trace_forge.grounding import Step, format_point
from trace_forge.linearize import Chain, ChainSource
from trace_forge.tasks import Sample, TaskSpec

REPO = Path(__file__).resolve().parents[1]

# ---- the synthetic task ---------------------------------------------------------------------------------------
SIZE = 112  # px; 4 x 4 visual tokens of 28 px for Qwen2.5-VL, and no resize (model frame = pixel frame)
SIDE = 48  # px; the red square, anywhere on the image
QUESTION = "Where is the red square?"
RED = (220, 30, 30)
# The generic task's column map of the JSONL the benchmark writes.
COLUMNS = {"image": "image", "question": "question", "boxes": "box", "id": "id", "answer_kind": "point"}
TEACHER = "oracle:square-centre"

# ---- what is printed ------------------------------------------------------------------------------------------
COMPONENTS = {
    "reward": "reward",
    "format": "rewards/format_reward/mean",
    "accuracy": "rewards/accuracy_reward/mean",
    "grounding": "rewards/grounding_reward/mean",
    "length": "completions/mean_length",
}


def draw_question(rng: random.Random) -> tuple[Image.Image, list[int]]:
    """One image (random dark background, the red square in a random quadrant) and the square's box."""
    x1, y1 = rng.randint(0, SIZE - SIDE), rng.randint(0, SIZE - SIDE)
    image = Image.new("RGB", (SIZE, SIZE), tuple(rng.randint(0, 80) for _ in range(3)))
    ImageDraw.Draw(image).rectangle([x1, y1, x1 + SIDE - 1, y1 + SIDE - 1], fill=RED)
    return image, [x1, y1, x1 + SIDE, y1 + SIDE]


def write_questions(folder: Path, name: str, n: int, rng: random.Random) -> Path:
    """Write ``n`` questions as ``folder/name.jsonl`` with their PNGs in ``folder/name/``; return the JSONL path."""
    (folder / name).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        image, box = draw_question(rng)
        image.save(folder / name / f"{i:04d}.png")
        lines.append(json.dumps({"id": f"{name}-{i:04d}", "image": f"{name}/{i:04d}.png", "question": QUESTION,
                                 "box": box}))
    path = folder / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def trace_row(sample: Sample) -> dict:
    """The single-turn trace of one question (trace dataset contract): one step at the square's centre, then it."""
    centre = sample.target_boxes[0].center
    step = Step(f"The red square is at {format_point(centre)}.", centre)
    chain = Chain(sample.id, "direct", (step,), format_point(centre), True, 1.0, (1.0,), ChainSource(0),
                  answer_point=centre)
    canvas = sample.canvas()
    png = io.BytesIO()
    canvas.save(png, format="PNG")
    row = TraceRow(sample=replace(sample, images=[]), task=TaskSpec("generic", COLUMNS), mode="single",
                   view=PIXEL_VIEW, image_size=canvas.size, chain=chain, zoom_steps=(),
                   images=({"bytes": png.getvalue(), "path": None},), teacher=TEACHER, simulated=True,
                   source_run="grpo_learning")
    return row.to_row()


def make_data(folder: Path, seed: int, n_sft: int, n_grpo: int) -> tuple[Path, Path]:
    """SFT traces (a trace dataset in ``folder/traces``) and the GRPO questions (a JSONL), from disjoint images."""
    rng = random.Random(seed)
    sft_questions = write_questions(folder, "sft", n_sft, rng)
    grpo_questions = write_questions(folder, "grpo", n_grpo, rng)
    spec = TaskSpec("generic", COLUMNS)
    rows = [trace_row(s) for s in spec.build().load(sft_questions)]
    provenance = Provenance(task=spec.to_dict(), teacher={"backend": "oracle", "model": "square-centre",
                                                         "simulated": True})
    write_rows((("train", [row]) for row in rows), folder / "traces", mode="single", provenance=provenance,
               overwrite=True)
    return folder / "traces", grpo_questions


def grpo_settings(grpo_questions: Path, seed: int, args: argparse.Namespace) -> dict:
    """The GRPO arm's settings (the control arm changes only the learning rate)."""
    return {"task": "generic", "task_options": COLUMNS, "data_dir": str(grpo_questions),
            "num_generations": args.generations, "per_device_train_batch_size": args.generations * args.prompts_per_step,
            "max_steps": args.steps, "max_completion_length": 64, "learning_rate": args.lr, "beta": args.beta,
            "warmup_steps": 0.0, "rewards": {"format": 0.5, "accuracy": 0.5, "grounding": 0.0},
            "report_to": "none", "save_strategy": "no", "logging_steps": 1, "seed": seed}


def pipeline(out: Path, seed: int, args: argparse.Namespace) -> PipelineConfig:
    traces, grpo_questions = make_data(out / "data", seed, args.sft_images, args.steps * args.prompts_per_step)
    return PipelineConfig(
        out=str(out),
        tiny_model={"family": args.family, "seed": seed},
        data=str(traces),
        sft={"max_steps": args.sft_steps, "learning_rate": args.sft_lr, "per_device_train_batch_size": 4,
             "gradient_accumulation_steps": 1, "max_length": 1024, "gradient_checkpointing": False,
             "logging_steps": 10, "report_to": "none", "seed": seed},
        grpo=grpo_settings(grpo_questions, seed, args),
    )


def control(out: Path, config: PipelineConfig) -> Path:
    """The no-update arm: the GRPO run of ``config`` from its SFT model with learning rate 0."""
    folder = out / "control"
    if (read_run(folder) or {}).get("finished"):
        return folder
    settings = {**config.grpo, "learning_rate": 0.0, "model": str(out / "sft"), "output_dir": str(folder)}
    grpo = config_from_mapping(GroundedGRPOConfig, settings, base=None, where="control")
    run_grpo(grpo, RunOptions(resume=read_run(folder) is not None, overwrite=True))  # a crashed control continues
    return folder


def logged(folder: Path, key: str = "loss") -> list[dict]:
    """The log lines holding ``key`` of the run in ``folder`` (its run record)."""
    return [entry for entry in json.loads((folder / RUN_FILE).read_text())["log_history"] if key in entry]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--family", default="qwen2_5_vl", choices=["qwen2_5_vl", "qwen3_vl"])
    parser.add_argument("--sft-images", type=int, default=256, help="Training images (one trace each).")
    parser.add_argument("--sft-steps", type=int, default=300, help="Warm-start SFT steps (batch 4).")
    parser.add_argument("--sft-lr", type=float, default=5e-3)
    parser.add_argument("--steps", type=int, default=60, help="GRPO steps.")
    parser.add_argument("--prompts-per-step", type=int, default=4, help="Questions per GRPO step.")
    parser.add_argument("--generations", type=int, default=8, help="Rollouts per question (the group).")
    parser.add_argument("--lr", type=float, default=1e-3, help="GRPO learning rate.")
    parser.add_argument("--beta", type=float, default=0.04,
                        help="GRPO KL coefficient against the SFT model (without it the format collapses at this lr).")
    parser.add_argument("--window", type=int, default=10, help="GRPO steps averaged at the start and at the end.")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-grpo-learning")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    table = []
    gains: dict[str, list[float]] = {"grpo": [], "control": []}
    for seed in args.seeds:
        out = args.out / f"seed{seed}"
        config = pipeline(out, seed, args)
        run_pipeline(config)
        arms = {"grpo": out / "grpo", "control": control(out, config)}
        losses = [e["loss"] for e in logged(out / "sft")]
        table.append((seed, "sft loss (first/last log)", losses[0], losses[-1]))
        for arm, folder in arms.items():
            logs = logged(folder, "reward")
            for label, key in COMPONENTS.items():
                values = [e[key] for e in logs if e.get(key) is not None]
                if not values:
                    continue
                first, last = statistics.mean(values[: args.window]), statistics.mean(values[-args.window:])
                table.append((seed, f"{arm} {label}", first, last))
                if label == "reward":
                    gains[arm].append(last - first)

    print(f"\n{'seed':>4}  {'metric':<28} {'first':>8} {'last':>8} {'diff':>8}")
    for seed, label, first, last in table:
        print(f"{seed:>4}  {label:<28} {first:8.3f} {last:8.3f} {last - first:+8.3f}")
    grpo, ctrl = statistics.mean(gains["grpo"]), statistics.mean(gains["control"])
    print(f"RESULT grpo_gain={grpo:+.3f} control_gain={ctrl:+.3f} net_gain={grpo - ctrl:+.3f} seeds={len(args.seeds)}")


if __name__ == "__main__":
    main()
