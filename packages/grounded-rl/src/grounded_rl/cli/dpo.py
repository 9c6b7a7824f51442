"""``grounded-rl dpo``: DPO on preference pairs from the search trees (see :mod:`grounded_rl.dpo`).

Every flag is a field of :class:`~grounded_rl.dpo.GroundedDPOConfig` (TRL's ``DPOConfig`` plus ours), parsed by TRL's
own ``TrlParser``: ``grounded-rl dpo --help`` lists them all, and ``--config FILE`` reads any of them from YAML.
"""

from __future__ import annotations

import typer

from grounded_rl.cli import app

_EXAMPLES = """\
Examples:

  # pairs from a search run, in the model's frame, then DPO from the SFT model

  trace-forge linearize runs/vstar-sim --mode preference --processor runs/sft

  grounded-rl dpo --model runs/sft --data runs/vstar-sim/dataset-preference --output_dir runs/dpo

  # any DPOConfig field is a flag or a YAML key; continue a killed run

  grounded-rl dpo --config my_dpo.yaml --beta 0.1 --loss_type sigmoid --max_steps 500

  grounded-rl dpo --config my_dpo.yaml --resume
"""


@app.command(
    epilog=_EXAMPLES,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
)
def dpo(ctx: typer.Context) -> None:
    """DPO (TRL's DPOTrainer) on grounded preference pairs; every DPOConfig field is a flag. --help lists them."""
    from grounded_rl.dpo import parse_config, train_dpo

    config = parse_config(ctx.args, _EXAMPLES)
    train_dpo(config)
    typer.echo(f"saved the DPO model to {config.output_dir}")
