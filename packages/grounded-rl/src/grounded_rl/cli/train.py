"""``grounded-rl grpo`` (one GRPO run) and ``grounded-rl train`` (the whole pipeline from a YAML file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from grounded_rl.cli import app
from trace_forge.errors import ConfigError

_GRPO_EXAMPLES = """\
Examples:

  # CPU smoke run of the tiny model on the bundled V* samples

  grounded-rl grpo --model /tmp/tiny --task vstar --data-dir data/samples/vstar --out runs/grpo-tiny
  --num-generations 2 --max-steps 2

  # single-turn GRPO on SAT-2's train split (its val split is for evaluation)

  grounded-rl grpo --model runs/sft --task sat2 --data-dir /data/SAT-v2 --split train --max-pixels 4194304
  --out runs/grpo

  # multi-turn zoom GRPO on ViGoRL's visual-search RL file (V*Bench stays for evaluation), vLLM rollouts

  grounded-rl grpo --model runs/sft-multi --task generic --data-dir /data/visual_search/vigorl_SA_RL.jsonl
  -o image=images -o question=problem -o answer_kind=text --multi-turn --max-pixels 2850000 --out runs/grpo-multi
  --use-vllm --vllm-mode colocate
"""

_TRAIN_EXAMPLES = """\
Examples:

  grounded-rl train --config data/configs/demo.yaml

  grounded-rl train --config data/configs/vigorl_3b_multi.yaml
"""


def _yaml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    import yaml

    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of GroundedGRPOConfig fields")
    return {key.replace("-", "_"): value for key, value in values.items()}


@app.command(epilog=_GRPO_EXAMPLES)
def grpo(
    out: Annotated[Path, typer.Option(help="Output dir: final policy, checkpoints, TensorBoard logs (runs/).")],
    model: Annotated[str | None, typer.Option(help="Policy checkpoint (usually the SFT output).")] = None,
    task: Annotated[str | None, typer.Option(help="trace-forge task whose questions become prompts.")] = None,
    data_dir: Annotated[str | None, typer.Option(help="The task's data folder (official layout).")] = None,
    data: Annotated[str | None, typer.Option(help="Instead of --task: a trace-forge dataset (dir or Hub id).")] = None,
    split: Annotated[
        str | None, typer.Option(help="Split to train on (e.g. train); the task's default (often test) when unset.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Task option KEY=VALUE (e.g. generic's column map); repeatable."),
    ] = None,
    multi_turn: Annotated[bool, typer.Option("--multi-turn", help="Zoom-tool dialogs.")] = False,
    max_pixels: Annotated[
        int | None, typer.Option(min=1, help="Cap the resized image's pixels (paper: 4194304; V* multi-turn 2850000).")
    ] = None,
    num_generations: Annotated[int | None, typer.Option(min=2, help="Group size (paper: 5; 8 multi-turn).")] = None,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Optimizer steps (paper: 500).")] = None,
    use_vllm: Annotated[bool, typer.Option("--use-vllm", help="Generate rollouts with vLLM.")] = False,
    vllm_mode: Annotated[str | None, typer.Option(help="colocate (same GPUs) or server (trl vllm-serve).")] = None,
    config: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="YAML of GroundedGRPOConfig fields; flags override it."),
    ] = None,
) -> None:
    """GRPO with grounded rewards (format, accuracy, zoom diversity; point validity logged), single- or multi-turn."""
    if vllm_mode not in (None, "colocate", "server"):
        raise ConfigError(f"--vllm-mode must be colocate or server, got {vllm_mode!r}")
    # Flags left unset (None, or a switch not given) keep the config file's value.
    from trace_forge.tasks import parse_task_options

    flags = dict(model=model, task=task, data_dir=data_dir, data=data, split=split, multi_turn=multi_turn or None,
                 max_pixels=max_pixels, num_generations=num_generations, max_steps=max_steps,
                 use_vllm=use_vllm or None, vllm_mode=vllm_mode)
    values = {**_yaml(config), **{k: v for k, v in flags.items() if v is not None}, "output_dir": str(out)}
    if option:  # flags add to (and override) the config file's task options
        values["task_options"] = {**(values.get("task_options") or {}), **parse_task_options(option)}
    if not values.get("model"):
        raise ConfigError("--model is required (flag or config file)")

    from grounded_rl.grpo import GroundedGRPOConfig, run_grpo

    try:
        settings = GroundedGRPOConfig(**values)
    except TypeError as e:  # an unknown key in the YAML file
        raise ConfigError(f"{config}: {e}") from e
    typer.echo(f"saved policy to {run_grpo(settings)}")


@app.command(epilog=_TRAIN_EXAMPLES)
def train(
    config: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Pipeline YAML (see data/configs/).")],
) -> None:
    """The whole pipeline: traces -> SFT -> GRPO -> eval; finished stages (OUT/<stage>/DONE) are skipped."""
    from grounded_rl.train import DONE, PipelineConfig, run_pipeline
    from trace_forge.cli import console, out

    def note(stage: str, what: str, where: Path) -> None:
        said = {"skipped": f"skipped: finished earlier ({where / DONE})", "running": f"running into {where}",
                "done": "done"}[what]
        console.print(f"[bold]stage {stage}[/]: {said}", highlight=False)

    for stage, path in run_pipeline(PipelineConfig.from_yaml(config), note).items():
        out.print(f"{stage}: {path}", highlight=False)
