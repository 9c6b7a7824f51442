"""Supervised fine-tuning on trace-forge datasets: the warm start of ViGoRL (arXiv 2505.23678, Table A1).

Runs end to end on CPU with the tiny model and traces mined from the bundled samples::

    trace-forge search --task vstar --data-dir data/samples/vstar --teacher sim --limit 4 --out runs/vstar-sim
    grounded-rl make-tiny-model runs/tiny
    grounded-rl sft --config data/configs/sft_tiny_cpu.yaml --data runs/vstar-sim/dataset-single --out runs/sft

The settings are TRL's :class:`~trl.SFTConfig` (every field a flag and a YAML key, under TRL's name) plus the fields
of :class:`GroundedSFTConfig`; the loop is TRL's ``SFTTrainer`` (accelerate underneath, so the same command runs
under ``accelerate launch`` with DeepSpeed ZeRO-3 or FSDP). What this module adds is the data path of
:mod:`grounded_rl.data` (points in the model's frame, whole-turn truncation, assistant-only labels, the image-token
guard), ViGoRL's parameter freezing, and the output-folder rules of :mod:`grounded_rl.training`::

    OUT/
      config.json, model.safetensors, ...   final model + processor (our chat template), HF format; README.md card
      checkpoint-N/                         trainer checkpoints (--resume continues from the last complete one)
      runs/                                 TensorBoard logs
      grounded_rl_run.json                  settings, package versions, dataset fingerprints, guard counts

This module imports TRL (and so torch); the CLI imports it only inside the command.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trl import SFTConfig, SFTTrainer

from grounded_rl.training import (
    CommonFields,
    RunOptions,
    TrainerMixin,
    check_source,
    claimed_output,
    held_out_evaluation,
    load_policy,
    parameter_counts,
    prepare_config,
    write_run,
)
from trace_forge.errors import ConfigError, DataError

__all__ = ["GroundedSFTConfig", "GroundedSFTTrainer", "train"]

logger = logging.getLogger(__name__)

# Linear layers of the language model that LoRA adapts. The vision blocks reuse some of these names, so the
# pattern is anchored on the language model (the vision tower stays frozen, or fully trained, never adapted).
_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class GroundedSFTConfig(CommonFields, SFTConfig):
    """TRL's ``SFTConfig`` plus the fields of ``grounded-rl sft``, with ViGoRL's SFT defaults (Table A1).

    Parameters that control the data and the model (ours):
        model, data, val_data, split, val_split, limit, max_pixels, freeze_vision, use_peft, lora_r, lora_alpha,
        lora_dropout.

    Changed defaults (paper values unless noted): ``learning_rate=1e-6``, ``weight_decay=0.01``,
    ``warmup_steps=0.03`` (a ratio), ``lr_scheduler_type="cosine"``, ``num_train_epochs=3`` (the released script
    used 1), ``per_device_train_batch_size=1`` and ``gradient_accumulation_steps=4`` (x 8 GPUs = 32),
    ``max_length=8192``, ``save_steps=500``, ``save_total_limit=2``, ``report_to="tensorboard"``; and for our
    collator ``remove_unused_columns=False``. Left unset, ``bf16`` is on with a GPU that has it and off on CPU, and
    ``dataloader_pin_memory`` follows the GPU. With ``val_data``, evaluation runs every ``eval_steps`` (default
    ``save_steps``).
    """

    # ---- data ---------------------------------------------------------------------------------------------------
    model: str | None = field(default=None, metadata={
        "help": "Checkpoint folder or Hub id (Qwen2.5-VL / Qwen3-VL). Alias: --model_name_or_path."})
    data: str | None = field(default=None, metadata={
        "help": "Trace dataset: a trace-forge dataset folder, or its Hub id. Alias: --dataset_name."})
    val_data: str | None = field(default=None, metadata={
        "help": "Validation traces, evaluated every eval_steps (default save_steps)."})
    split: str = field(default="train", metadata={"help": "Split of --data to train on."})
    val_split: str = field(default="validation", metadata={"help": "Split of --val-data to evaluate."})
    limit: int | None = field(default=None, metadata={"help": "Use at most this many training rows (smoke runs)."})
    max_pixels: int | None = field(default=None, metadata={
        "help": "Cap on resized image pixels (default: the processor's own)."})
    # ---- model --------------------------------------------------------------------------------------------------
    freeze_vision: bool = field(default=True, metadata={
        "help": "Freeze the vision tower; its merger (projector) and the LLM train (paper)."})
    use_peft: bool = field(default=False, metadata={
        "help": "Train LoRA adapters on the LLM instead of full weights; a merged model is saved. Alias: --lora."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    # ---- changed defaults ---------------------------------------------------------------------------------------
    learning_rate: float = field(default=1e-6, metadata={"help": "Peak AdamW learning rate (Table A1: 1e-6)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (Table A1: 0.01)."})
    warmup_steps: float = field(default=0.03, metadata={
        "help": "Warmup steps; a float below 1 is a share of all steps (Table A1: 0.03). Alias: --warmup_ratio."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "LR schedule after warmup (Table A1)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs (Table A1: 3; the released script 1)."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Sequences per device per micro-step."})
    gradient_accumulation_steps: int = field(default=4, metadata={
        "help": "Micro-steps per optimizer step; x per-device batch x GPUs = the effective batch (paper 32)."})
    max_length: int | None = field(default=8192, metadata={
        "help": "Tokens per sample (Table A1: 8192); longer chats lose whole trailing turns."})
    save_steps: float = field(default=500, metadata={"help": "Optimizer steps between checkpoints."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (oldest deleted)."})
    remove_unused_columns: bool = field(default=False, metadata={
        "help": "Must stay False: the collator reads the metadata columns (steps, image sizes)."})

    def __post_init__(self) -> None:
        prepare_config(self)
        if self.remove_unused_columns:
            raise ConfigError("remove_unused_columns must be False: the collator reads the rows' metadata")
        held_out_evaluation(self, self.val_data, "val_data (validation traces)")
        super().__post_init__()
        for name in ("lora_r", "per_device_train_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length is not None and self.max_length < 16:
            raise ConfigError(f"max_length must be >= 16 or unset, got {self.max_length}")


class GroundedSFTTrainer(TrainerMixin, SFTTrainer):
    """TRL's SFTTrainer with a strict resume, checkpoints that carry their run, and our model card."""

    progress_label = "sft"


def train(config: GroundedSFTConfig, options: RunOptions | None = None) -> GroundedSFTTrainer:
    """Fine-tune ``config.model`` on the traces of ``config.data`` and save the result to ``config.output_dir``.

    Args:
        config: a :class:`GroundedSFTConfig`.
        options: what to do with an output folder that holds a run (``--resume``, ``--overwrite``); see
            :func:`grounded_rl.training.claim_output`.

    Returns:
        The trainer after training; its model is the one saved to ``output_dir`` (safetensors, with the processor
        and our chat template, loadable with ``AutoModelForImageTextToText`` / ``AutoProcessor``).

    Raises:
        ConfigError: a missing model, the output folder holds another run, or a setting is invalid.
        DataError: the dataset is missing or breaks the trace contract, no row fits ``max_length``, or a
            checkpoint cannot be restored.
    """
    options = options or RunOptions()
    for name in ("model", "data", "val_data"):
        check_source(getattr(config, name), name, model=name == "model")
    if config.model is None or config.data is None:
        raise ConfigError("model and data are required (--model, --data, or the config file)")
    with claimed_output(config, "sft", options) as (out, settings, checkpoint):
        return _train(config, out, settings, checkpoint)


def _train(config: GroundedSFTConfig, out: Path, settings: dict[str, Any], checkpoint: str | None
           ) -> GroundedSFTTrainer:
    from datasets import disable_caching

    from grounded_rl.data import GroundedCollator, drop_unfit
    from trace_forge.dataset import load_traces

    # ---- model and processor ----------------------------------------------------------------------------------
    model, processor, family, frozen = load_policy(config)
    peft_config = None
    if config.use_peft:
        from peft import LoraConfig

        peft_config = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                                 target_modules=_LORA_TARGETS, task_type="CAUSAL_LM")

    # ---- data: filtering is cheap and redone on every run, so nothing is cached next to the input files --------
    disable_caching()
    train_set = load_traces(config.data, config.split)
    if config.limit is not None:
        train_set = train_set.select(range(min(config.limit, len(train_set))))
    train_set, train_fit = drop_unfit(train_set, processor, family, config.max_length)
    eval_set, eval_fit = None, None
    if config.val_data is not None:
        eval_set, eval_fit = drop_unfit(load_traces(config.val_data, config.val_split), processor, family,
                                        config.max_length)
    if len(train_set) == 0:
        raise DataError(f"no training row fits max_length={config.max_length}", path=config.data)
    collator = GroundedCollator(processor, family, config.max_length)

    # ---- trainer ----------------------------------------------------------------------------------------------
    trainer = GroundedSFTTrainer(
        model=model,
        args=config,
        data_collator=collator,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=processor,
        peft_config=peft_config,
    )
    multi_turn = "multi" in set(train_set.unique("mode"))
    trainer.card = dict(
        name=out.name, path=config.output_dir, base=config.model, method="SFT", multi_turn=multi_turn,
        datasets=[d for d in (config.data, config.val_data) if d],
        settings={k: settings.get(k) for k in ("learning_rate", "lr_scheduler_type", "warmup_steps",
                                               "weight_decay", "num_train_epochs", "per_device_train_batch_size",
                                               "gradient_accumulation_steps", "max_length", "max_pixels",
                                               "freeze_vision", "use_peft", "seed")},
    )
    parameters = parameter_counts(trainer.model, frozen)
    facts: dict[str, Any] = {
        "family": family.value,
        "parameters": parameters,
        "data": {
            "train": {"source": config.data, "split": config.split, "rows": len(train_set),
                      "fingerprint": train_set._fingerprint, "fit": dict(train_fit), "multi_turn": multi_turn},
            "validation": None if eval_set is None else {
                "source": config.val_data, "split": config.val_split, "rows": len(eval_set),
                "fingerprint": eval_set._fingerprint, "fit": dict(eval_fit or {})},
        },
    }
    if trainer.is_world_process_zero():
        trainer.run_record = write_run(out, "sft", config, settings, **facts, resumed_from=checkpoint)
    logger.info("%s: %d rows, %d/%d parameters trainable", family.value, len(train_set), parameters["trainable"],
                parameters["total"])

    # ---- train ------------------------------------------------------------------------------------------------
    result = trainer.train(resume_from_checkpoint=checkpoint)

    # ---- save -------------------------------------------------------------------------------------------------
    if config.use_peft:
        # A merged model loads like any checkpoint; the adapters stay in the trainer checkpoints.
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(str(out))
    else:
        trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(out))
        trainer.create_model_card()
        write_run(out, "sft", config, settings, **facts, resumed_from=checkpoint,
                  finished=True, global_step=trainer.state.global_step, metrics=result.metrics,
                  guard=dict(collator.stats), log_history=trainer.state.log_history)
    return trainer
