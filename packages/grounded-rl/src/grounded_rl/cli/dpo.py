"""``grounded-rl dpo``: DPO on preference pairs from the search trees (see :mod:`grounded_rl.dpo`).

The flags are TRL's ``DPOConfig`` fields plus ours, read by TRL's own parser, so ``--help`` needs TRL (a few
seconds); a missing model or dataset path is reported before that.
"""

from __future__ import annotations

import typer

from grounded_rl.cli import TRL_COMMAND, app

# Fields naming a model (True) or a dataset (False), checked before anything heavy is imported.
SOURCES = (("model", True), ("data", False))

EXAMPLES = """\
examples:

  # pairs from a search run, in the model's frame, then DPO from the SFT model
  trace-forge linearize runs/vstar-sim --mode preference --processor runs/sft
  grounded-rl dpo --model runs/sft --data runs/vstar-sim/dataset-preference --out runs/dpo

  # any DPOConfig field is a flag or a YAML key; then the same run continued after a crash (same settings, checked)
  grounded-rl dpo --config my_dpo.yaml --beta 0.1 --loss_type sigmoid --max_steps 500
  grounded-rl dpo --config my_dpo.yaml --beta 0.1 --loss_type sigmoid --max_steps 500 --resume

Every TRL DPOConfig field is a flag (--loss_type or --loss-type) and a key of --config. Short names: --out
(output_dir), --model (model_name_or_path), --data (dataset_name), --warmup_ratio (warmup_steps below 1). An output
folder that holds a run is refused unless --resume or --overwrite.
"""


@app.command(**TRL_COMMAND)
def dpo(ctx: typer.Context) -> None:
    """DPO (TRL's DPOTrainer) on grounded preference pairs: a correct and a wrong continuation of the same prefix.

    Points rewritten into the model's coordinate frame; pairs over --max-length are dropped, never truncated; the
    vision tower frozen; the reference model is the policy as loaded. Writes the final model (HF format, with a model
    card), checkpoints, TensorBoard logs (OUT/runs) and OUT/grounded_rl_run.json. Every TRL DPOConfig field is a
    flag: see --help.
    """
    from grounded_rl.training import precheck

    precheck(ctx.args, SOURCES)
    from grounded_rl.dpo import GroundedDPOConfig, train
    from grounded_rl.training import parse_command_line

    config, options = parse_command_line(GroundedDPOConfig, ctx.args, prog="grounded-rl dpo", epilog=EXAMPLES,
                                         description=dpo.__doc__)
    train(config, options)
    typer.echo(f"saved the DPO model to {config.output_dir}")
