"""``grounded-rl grpo`` (one GRPO run) and ``grounded-rl train`` (the whole pipeline from a YAML file).

``grpo``'s flags are TRL's ``GRPOConfig`` fields plus ours, read by TRL's own parser (``--help`` needs TRL); a
missing model or dataset path is reported before that.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Annotated

import typer

from grounded_rl.cli import TRL_COMMAND, app

# Fields naming a model (True) or a dataset (False), checked before anything heavy is imported.
SOURCES = (("model", True), ("data", False))

GRPO_EXAMPLES = """\
examples:

  # CPU smoke run of the tiny model on the bundled V* samples (no special flags: fp32 on CPU)
  grounded-rl grpo --model runs/tiny --task vstar --data-dir data/samples/vstar --out runs/grpo-tiny \\
      --num_generations 2 --max_steps 2 --max_completion_length 64

  # single-turn GRPO on SAT-2's train split (its val split is for evaluation)
  grounded-rl grpo --model runs/sft --task sat2 --data-dir /data/SAT-v2 --split train --max_pixels 4194304 \\
      --out runs/grpo

  # multi-turn zoom GRPO on ViGoRL's visual-search RL file (V*Bench stays for evaluation), vLLM rollouts
  # (needs the vllm extra and a GPU)
  grounded-rl grpo --model runs/sft-multi --task generic --data-dir /data/visual_search/vigorl_SA_RL.jsonl \\
      -o image=images -o question=problem -o answer_kind=text --multi_turn --max_pixels 2850000 \\
      --out runs/grpo-multi --use_vllm --vllm_mode colocate

Every TRL GRPOConfig field is a flag (--num_generations or --num-generations) and a key of --config. Short names:
--out (output_dir), --model (model_name_or_path), --data (dataset_name), --warmup_ratio (warmup_steps below 1).
An output folder that holds a run is refused unless --resume or --overwrite.
"""

TRAIN_EXAMPLES = """\
Examples:

  grounded-rl train --config data/configs/demo.yaml

  grounded-rl train --config data/configs/vigorl_3b_multi.yaml
"""


def _task_option(group: argparse._ArgumentGroup) -> None:
    group.add_argument("-o", "--option", action="append", default=[], metavar="KEY=VALUE",
                       help="A task option (e.g. generic's column map), VALUE read as JSON if it parses; repeatable; "
                            "added to task_options.")


@app.command(**TRL_COMMAND)
def grpo(ctx: typer.Context) -> None:
    """GRPO with grounded rewards (format, accuracy, zoom diversity; point validity logged), single- or multi-turn.

    Every TRL GRPOConfig field is a flag: see --help.
    """
    from grounded_rl.training import precheck

    precheck(ctx.args, SOURCES)
    from grounded_rl.grpo import GroundedGRPOConfig, run_grpo
    from grounded_rl.training import parse_command_line
    from trace_forge.tasks import parse_task_options

    config, options = parse_command_line(GroundedGRPOConfig, ctx.args, prog="grounded-rl grpo",
                                         epilog=GRPO_EXAMPLES, description=grpo.__doc__, add_options=_task_option)
    if options.extra.get("option"):  # flags add to (and override) the config file's task options
        config.task_options = {**(config.task_options or {}), **parse_task_options(options.extra["option"])}
    typer.echo(f"saved policy to {run_grpo(config, options)}")


@app.command(epilog=TRAIN_EXAMPLES)
def train(
    config: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Pipeline YAML (see data/configs/).")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Redo stages whose settings changed (and every stage after them).")
    ] = False,
) -> None:
    """The whole pipeline: traces -> SFT -> GRPO -> eval; finished stages (OUT/<stage>/DONE) are skipped.

    A rerun after a crash resumes at the first unfinished stage, from its last checkpoint. A stage that finished
    (or started) with other settings is refused unless --overwrite. Paths in the file are relative to it.
    """
    from grounded_rl.train import DONE, PipelineConfig, run_pipeline
    from trace_forge.cli import console, out

    def note(stage: str, what: str, where: Path) -> None:
        said = {"skipped": f"skipped: finished earlier ({where / DONE})", "running": f"running into {where}",
                "done": "done"}[what]
        console.print(f"[bold]stage {stage}[/]: {said}", highlight=False)

    for stage, path in run_pipeline(PipelineConfig.from_yaml(config), note, overwrite=overwrite).items():
        out.print(f"{stage}: {path}", highlight=False)
