"""Does GRPO learn? Mean reward at the start and the end of a short run, tiny model on CPU.

    uv run python benchmarks/grpo_learning.py --steps 30 --seeds 0 1

Per seed: a random tiny Qwen2.5-VL is warmed by a short SFT on traces that trace-forge's simulated teacher mines from
the bundled ScreenSpot-v2 samples (synthetic screenshots with one target box per question), then trained with
single-turn GRPO on the same grounding task (format 0.5 + accuracy 0.5: the predicted point must fall in the target
box), plus point validity at weight 0.5 (``grounding``: every point an integer pair on the image): a random tiny
model almost never writes the strict format, and a reward that is 0 for the whole group carries no signal, so the
denser validity term is what the first steps learn from. The script prints, per seed, the mean reward of the first and last ``--window`` steps and each reward
component; nothing is asserted (CPU timings vary with the machine).

It runs the real pipeline (``grounded_rl.train.run_pipeline``), so a rerun reuses finished stages in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
from pathlib import Path

from grounded_rl.train import PipelineConfig, run_pipeline

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples" / "screenspot_v2"
COMPONENTS = ("reward", "rewards/format_reward/mean", "rewards/accuracy_reward/mean", "rewards/grounding_reward/mean")


def pipeline(out: Path, seed: int, steps: int, sft_steps: int) -> PipelineConfig:
    return PipelineConfig(
        out=str(out),
        tiny_model={"family": "qwen2_5_vl", "seed": seed},
        traces={"task": "screenspot-v2", "data_dir": str(SAMPLES), "teacher": "sim",
                "search_args": ["--limit", 12, "--simulations", 4, "--seed", seed, "--sim-skill", 0.8, "--sim-accuracy", 0.8]},
        sft={"max_steps": sft_steps, "lr": 5e-3, "grad_accum": 1, "gradient_checkpointing": False,
             "logging_steps": 10, "report_to": "none", "seed": seed},
        grpo={"task": "screenspot-v2", "data_dir": str(SAMPLES), "num_generations": 4, "max_steps": steps,
              "max_completion_length": 80, "learning_rate": 2e-4, "beta": 0.0,
              "rewards": {"format": 0.5, "accuracy": 0.5, "grounding": 0.5}, "use_cpu": True, "report_to": [],
              "save_strategy": "steps", "save_steps": steps, "logging_steps": 1, "seed": seed},
    )


def rewards_by_step(grpo_dir: Path, steps: int) -> list[dict[str, float]]:
    """The logged metrics of every step, from the last checkpoint's trainer state."""
    state = json.loads((grpo_dir / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "reward" in entry]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="GRPO steps per seed.")
    parser.add_argument("--sft-steps", type=int, default=200, help="Warm-start SFT steps.")
    parser.add_argument("--window", type=int, default=5, help="Steps averaged at the start and at the end.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-grpo-learning")
    args = parser.parse_args()
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    logging.basicConfig(level=logging.WARNING)

    print(f"{'seed':>4}  {'metric':<32} {'first':>7} {'last':>7}")
    for seed in args.seeds:
        out = args.out / f"seed{seed}"
        run_pipeline(pipeline(out, seed, args.steps, args.sft_steps))
        logs = rewards_by_step(out / "grpo", args.steps)
        for name in COMPONENTS:
            values = [e[name] for e in logs if e.get(name) is not None]
            first, last = values[: args.window], values[-args.window :]
            print(f"{seed:>4}  {name:<32} {statistics.mean(first):7.3f} {statistics.mean(last):7.3f}")


if __name__ == "__main__":
    main()
