"""``grounded-rl sft``: supervised fine-tuning on a trace-forge dataset (see :mod:`grounded_rl.sft`)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Annotated

import typer

from grounded_rl.cli import app
from grounded_rl.sft import SFTArgs

_EXAMPLES = """\
Examples:

  # CPU smoke run: tiny random model, traces mined with the simulated teacher

  grounded-rl sft --config data/configs/sft_tiny_cpu.yaml --data runs/vstar-sim/dataset-single --out runs/sft

  # the paper's 3B recipe on 8 GPUs (DeepSpeed ZeRO-3)

  accelerate launch --config_file data/configs/accelerate/zero3.yaml $(which grounded-rl) sft
  --config data/configs/sft_qwen2_5_vl_3b.yaml --data traces/sat2/dataset-single --out runs/sft-3b
"""

_DEFAULTS = {f.name: f.default for f in fields(SFTArgs)}
_HELP = {f.name: f.metadata["help"] for f in fields(SFTArgs)}


def _opt(name: str, **kwargs) -> typer.models.OptionInfo:
    return typer.Option(help=_HELP[name], **kwargs)


@app.command(epilog=_EXAMPLES)
def sft(
    ctx: typer.Context,
    model: Annotated[str | None, _opt("model")] = None,
    data: Annotated[str | None, _opt("data")] = None,
    out: Annotated[str | None, _opt("out")] = None,
    val_data: Annotated[str | None, _opt("val_data")] = None,
    epochs: Annotated[float, _opt("epochs", min=0.0)] = _DEFAULTS["epochs"],
    lr: Annotated[float, _opt("lr", min=0.0)] = _DEFAULTS["lr"],
    batch_size: Annotated[int, _opt("batch_size", min=1)] = _DEFAULTS["batch_size"],
    grad_accum: Annotated[int, _opt("grad_accum", min=1)] = _DEFAULTS["grad_accum"],
    max_steps: Annotated[int, _opt("max_steps")] = _DEFAULTS["max_steps"],
    max_length: Annotated[int | None, _opt("max_length", min=16)] = _DEFAULTS["max_length"],
    max_pixels: Annotated[int | None, _opt("max_pixels", min=1)] = _DEFAULTS["max_pixels"],
    freeze_vision: Annotated[bool, _opt("freeze_vision")] = _DEFAULTS["freeze_vision"],
    lora: Annotated[bool, _opt("lora")] = _DEFAULTS["lora"],
    limit: Annotated[int | None, _opt("limit", min=1)] = _DEFAULTS["limit"],
    seed: Annotated[int, _opt("seed")] = _DEFAULTS["seed"],
    resume: Annotated[bool, _opt("resume")] = _DEFAULTS["resume"],
    logging_steps: Annotated[int, _opt("logging_steps", min=1)] = _DEFAULTS["logging_steps"],
    save_steps: Annotated[int, _opt("save_steps", min=1)] = _DEFAULTS["save_steps"],
    report_to: Annotated[str, _opt("report_to")] = _DEFAULTS["report_to"],
    config: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="YAML of SFT arguments (any field); flags override it."),
    ] = None,
) -> None:
    """Fine-tune a Qwen-VL model on grounded reasoning traces (single- or multi-turn), ViGoRL's SFT stage.

    Loss on assistant tokens only; points rewritten into the model's coordinate frame; chats over --max-length
    lose whole trailing turns.

    Writes the final model (HF format), checkpoints, TensorBoard logs (OUT/runs) and OUT/grounded_rl_sft.json.
    """
    from grounded_rl.sft import train

    # Only flags actually given override the config file. Sources are compared by name: typer vendors click,
    # so its ParameterSource enum is not click's.
    given = {
        name: value
        for name, value in ctx.params.items()
        if name != "config" and ctx.get_parameter_source(name).name in ("COMMANDLINE", "ENVIRONMENT")
    }
    args = SFTArgs.from_sources(config, given)
    train(args)
    typer.echo(f"saved the fine-tuned model to {args.out}")
