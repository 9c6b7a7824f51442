"""``grounded-rl sft``: supervised fine-tuning on a trace-forge dataset (see :mod:`grounded_rl.sft`).

The flags are TRL's ``SFTConfig`` fields plus ours, read by TRL's own parser, so ``--help`` needs TRL (a few
seconds); a missing model or dataset path is reported before that.
"""

from __future__ import annotations

import typer

from grounded_rl.cli import TRL_COMMAND, app

# Fields naming a model (True) or a dataset (False), checked before anything heavy is imported.
SOURCES = (("model", True), ("data", False), ("val_data", False))

EXAMPLES = """\
examples:

  # CPU smoke run: tiny random model, traces mined with the simulated teacher
  grounded-rl sft --config data/configs/sft_tiny_cpu.yaml --data runs/vstar-sim/dataset-single --out runs/sft

  # the same run, continued from its last complete checkpoint after a crash (same settings, checked)
  grounded-rl sft --config data/configs/sft_tiny_cpu.yaml --data runs/vstar-sim/dataset-single --out runs/sft \\
      --resume

  # the paper's 3B recipe on 8 GPUs (DeepSpeed ZeRO-3: needs the deepspeed extra)
  accelerate launch --config_file data/configs/accelerate/zero3.yaml -m grounded_rl.cli sft \\
      --config data/configs/sft_qwen2_5_vl_3b.yaml --data traces/sat2/dataset-single --out runs/sft-3b

Every TRL SFTConfig field is a flag (--learning_rate or --learning-rate) and a key of --config. Short names:
--out (output_dir), --model (model_name_or_path), --data (dataset_name), --lora (use_peft), --warmup_ratio
(warmup_steps below 1). An output folder that holds a run is refused unless --resume or --overwrite.
"""


@app.command(**TRL_COMMAND)
def sft(ctx: typer.Context) -> None:
    """Fine-tune a Qwen-VL model on grounded reasoning traces (single- or multi-turn), ViGoRL's SFT stage.

    Loss on assistant tokens only; points rewritten into the model's coordinate frame; chats over --max-length
    lose whole trailing turns. Writes the final model (HF format, with a model card), checkpoints, TensorBoard logs
    (OUT/runs) and OUT/grounded_rl_run.json. Every TRL SFTConfig field is a flag: see --help.
    """
    from grounded_rl.training import precheck

    precheck(ctx.args, SOURCES)
    from grounded_rl.sft import GroundedSFTConfig, train
    from grounded_rl.training import parse_command_line

    config, options = parse_command_line(GroundedSFTConfig, ctx.args, prog="grounded-rl sft", epilog=EXAMPLES,
                                         description=sft.__doc__)
    train(config, options)
    typer.echo(f"saved the fine-tuned model to {config.output_dir}")
