"""Supervised fine-tuning on trace-forge datasets: the warm start of ViGoRL (arXiv 2505.23678, Table A1).

Runs end to end on CPU with the tiny model and traces mined from the bundled samples::

    trace-forge search --task vstar --data-dir data/samples/vstar --teacher sim --limit 4 --out runs/vstar-sim
    grounded-rl make-tiny-model runs/tiny
    grounded-rl sft --config data/configs/sft_tiny_cpu.yaml --data runs/vstar-sim/dataset-single --out runs/sft

The loop is TRL's ``SFTTrainer`` (accelerate underneath, so the same command runs under ``accelerate launch`` with
DeepSpeed ZeRO-3 or FSDP); what this module adds is the data path of :mod:`grounded_rl.data` (points in the
model's frame, whole-turn truncation, assistant-only labels, the image-token guard), ViGoRL's parameter freezing,
and a run directory that records how it was made::

    OUT/
      config.json, model.safetensors, ...   final model + processor (our chat template), HF format
      checkpoint-N/                         trainer checkpoints (--resume continues from the latest)
      runs/                                 TensorBoard logs
      grounded_rl_sft.json                  resolved args, package versions, dataset fingerprints, guard counts

Torch, transformers and TRL are imported inside :func:`train`: importing this module (and so the CLI) is cheap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, fields
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trace_forge.durable import write_json
from trace_forge.errors import ConfigError, DataError

if TYPE_CHECKING:
    from trl import SFTTrainer

__all__ = ["RUN_RECORD", "SFTArgs", "train"]

logger = logging.getLogger(__name__)

RUN_RECORD = "grounded_rl_sft.json"
_VERSIONED = ("grounded-rl", "trace-forge", "torch", "transformers", "trl", "accelerate", "peft", "datasets")
# Linear layers of the language model that LoRA adapts. The vision blocks reuse some of these names, so the
# pattern is anchored on the language model (the vision tower stays frozen, or fully trained, never adapted).
_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class SFTArgs:
    """Every knob of ``grounded-rl sft``. Defaults follow ViGoRL's SFT (paper Table A1) unless noted.

    A YAML file (``--config``) may set any field by name; command-line flags override it.
    Effective batch = ``batch_size x grad_accum x GPUs``: the paper's 32 is 1 x 4 x 8 GPUs in the released
    script (Table A1 lists a per-device batch of 8, which with accumulation 4 on 8 GPUs would be 256).
    """

    # ---- I/O ------------------------------------------------------------------------------------------------
    model: str | None = field(default=None, metadata={"help": "Checkpoint dir or Hub id (Qwen2.5-VL / Qwen3-VL)."})
    data: str | None = field(default=None, metadata={"help": "Trace dataset: trace-forge output dir, or Hub id."})
    out: str | None = field(default=None, metadata={"help": "Run dir: final model, checkpoints, logs."})
    val_data: str | None = field(default=None, metadata={"help": "Validation traces (evaluated every eval_steps)."})
    split: str = field(default="train", metadata={"help": "Split of --data to train on."})
    val_split: str = field(default="validation", metadata={"help": "Split of --val-data to evaluate."})
    limit: int | None = field(default=None, metadata={"help": "Use at most this many training rows (smoke runs)."})
    # ---- optimisation (Table A1) ------------------------------------------------------------------------------
    epochs: float = field(default=3.0, metadata={"help": "Epochs (paper 3; the released script used 1)."})
    lr: float = field(default=1e-6, metadata={"help": "Peak learning rate (paper 1e-6)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (paper 0.01)."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Share of steps warming up linearly (paper 0.03)."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "LR schedule after warmup (paper cosine)."})
    batch_size: int = field(default=1, metadata={"help": "Sequences per device per micro-step."})
    grad_accum: int = field(default=4, metadata={"help": "Micro-steps per optimizer step (paper 4)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: epochs)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    # ---- data -------------------------------------------------------------------------------------------------
    max_length: int | None = field(
        default=8192, metadata={"help": "Tokens per sample (paper 8192); longer chats lose whole trailing turns."}
    )
    max_pixels: int | None = field(
        default=None, metadata={"help": "Cap on resized image pixels (default: the processor's own)."}
    )
    # ---- model ------------------------------------------------------------------------------------------------
    freeze_vision: bool = field(
        default=True, metadata={"help": "Freeze the vision tower; its merger (projector) and the LLM train (paper)."}
    )
    lora: bool = field(default=False, metadata={"help": "Train LoRA adapters on the LLM instead of full weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Recompute activations (saves memory)."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 autocast; default: on with a GPU, off on CPU."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run code shipped with the checkpoint."})
    # ---- run --------------------------------------------------------------------------------------------------
    seed: int = field(default=0, metadata={"help": "Seed of weights init (LoRA), data order and dropout."})
    resume: bool = field(default=False, metadata={"help": "Continue from the latest checkpoint in --out."})
    logging_steps: int = field(default=10, metadata={"help": "Optimizer steps between log lines."})
    save_steps: int = field(default=500, metadata={"help": "Optimizer steps between checkpoints."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (oldest deleted)."})
    eval_steps: int | None = field(default=None, metadata={"help": "Steps between evaluations (default save_steps)."})
    report_to: str = field(default="tensorboard", metadata={"help": "Comma list: tensorboard, wandb, none."})

    @classmethod
    def from_sources(cls, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None) -> SFTArgs:
        """Arguments from a YAML file (defaults) and explicit overrides (command-line flags), validated.

        Raises:
            ConfigError: an unknown key, a value of the wrong type, or an invalid combination.
        """
        values: dict[str, Any] = {}
        if config_file is not None:
            import yaml

            loaded = yaml.safe_load(Path(config_file).read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{config_file}: expected a mapping of SFT arguments")
            values.update({key.replace("-", "_"): value for key, value in loaded.items()})
        values.update(overrides or {})
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(f"unknown SFT arguments {unknown}; known: {sorted(known)}")
        for key, value in values.items():
            # PyYAML reads "1e-6" (no dot) as a string; numbers are coerced by the field's default type.
            default = known[key].default
            if isinstance(default, float) and isinstance(value, (int, str)) and not isinstance(value, bool):
                try:
                    values[key] = float(value)
                except ValueError:
                    raise ConfigError(f"{key} must be a number, got {value!r}") from None
        args = cls(**values)
        args.validate()
        return args

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first missing or inconsistent argument and how to fix it."""
        for name in ("model", "data", "out"):
            if not getattr(self, name):
                raise ConfigError(f"--{name} is required (flag or config file)")
        positive = ("batch_size", "grad_accum", "logging_steps", "save_steps", "lora_r")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_length is not None and self.max_length < 16:
            raise ConfigError(f"max_length must be >= 16 or unset, got {self.max_length}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps < 1 and self.epochs <= 0:
            raise ConfigError("set epochs > 0 or max_steps >= 1")

    @property
    def reporters(self) -> list[str]:
        return [r.strip() for r in self.report_to.split(",") if r.strip() and r.strip() != "none"]


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in _VERSIONED:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def train(args: SFTArgs) -> SFTTrainer:
    """Fine-tune ``args.model`` on the traces of ``args.data`` and save the result to ``args.out``.

    Args:
        args: validated arguments (see :meth:`SFTArgs.from_sources`).

    Returns:
        The trainer after training; its model is the one saved to ``args.out`` (safetensors, with the processor
        and our chat template, loadable with ``AutoModelForImageTextToText`` / ``AutoProcessor``).

    Raises:
        ConfigError: a reporter is asked for but not installed.
        DataError: the dataset breaks the trace contract, or no row fits ``max_length``.
    """
    import torch
    from transformers.trainer_utils import get_last_checkpoint
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.callbacks import RichProgressCallback

    from grounded_rl.data import GroundedCollator, drop_unfit, set_max_pixels
    from grounded_rl.models import family_of, freeze_vision_tower, load_model_and_processor
    from trace_forge.dataset import load_traces

    args.validate()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for reporter in args.reporters:
        if reporter not in ("tensorboard", "wandb"):
            raise ConfigError(f"unknown reporter {reporter!r}; use tensorboard, wandb or none")
        module = "tensorboard" if reporter == "tensorboard" else "wandb"
        try:
            __import__(module)
        except ImportError:
            raise ConfigError(f"--report-to {reporter} needs the {module} package installed") from None
    use_bf16 = torch.cuda.is_available() if args.bf16 is None else args.bf16

    # ---- trainer config (first: under ZeRO-3 it must exist before the model loads, for sharded init) -----------
    has_eval = args.val_data is not None
    config = SFTConfig(
        output_dir=str(out),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_ratio,  # a float below 1 is a ratio of the total steps
        lr_scheduler_type=args.lr_scheduler,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.grad_accum,
        max_grad_norm=args.max_grad_norm,
        max_length=args.max_length,
        bf16=use_bf16,
        gradient_checkpointing=args.gradient_checkpointing,
        seed=args.seed,
        logging_steps=args.logging_steps,
        logging_first_step=True,
        save_steps=args.save_steps,
        save_total_limit=args.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(args.eval_steps or args.save_steps) if has_eval else None,
        report_to=args.reporters or "none",
        # Our collator needs the metadata columns (steps, image_size) that Trainer would otherwise remove.
        remove_unused_columns=False,
        # Tokens per second in every log line (speed_metrics over non-padding tokens).
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,  # the rich progress panel replaces tqdm
    )

    # ---- model and processor ----------------------------------------------------------------------------------
    # Weights stay fp32 even with bf16: bf16 is autocast only, so lr-1e-6 updates are not rounded away.
    model, processor = load_model_and_processor(args.model, dtype=torch.float32,
                                                trust_remote_code=args.trust_remote_code)
    family = family_of(model.config)
    if args.max_pixels is not None:
        set_max_pixels(processor, args.max_pixels)
    frozen = freeze_vision_tower(model) if args.freeze_vision else 0
    peft_config = None
    if args.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                 target_modules=_LORA_TARGETS, task_type="CAUSAL_LM")

    # ---- data -------------------------------------------------------------------------------------------------
    train_set = load_traces(args.data, args.split)
    if args.limit is not None:
        train_set = train_set.select(range(min(args.limit, len(train_set))))
    train_set, train_fit = drop_unfit(train_set, processor, family, args.max_length)
    eval_set, eval_fit = None, None
    if has_eval:
        eval_set, eval_fit = drop_unfit(load_traces(args.val_data, args.val_split), processor, family,
                                        args.max_length)
    if len(train_set) == 0:
        raise DataError(f"no training row fits max_length={args.max_length}", path=args.data)
    collator = GroundedCollator(processor, family, args.max_length)

    # ---- trainer ----------------------------------------------------------------------------------------------
    trainer = SFTTrainer(
        model=model,
        args=config,
        data_collator=collator,
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[RichProgressCallback()],
    )
    n_params = sum(p.numel() for p in trainer.model.parameters())
    n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    record: dict[str, Any] = {
        "args": asdict(args),
        "family": family.value,
        "bf16": use_bf16,
        "versions": _versions(),
        "parameters": {"total": n_params, "trainable": n_trainable, "vision_frozen": frozen},
        "data": {
            "train": {"source": args.data, "split": args.split, "rows": len(train_set),
                      "fingerprint": train_set._fingerprint, "fit": dict(train_fit)},
            "validation": None if eval_set is None else {
                "source": args.val_data, "split": args.val_split, "rows": len(eval_set),
                "fingerprint": eval_set._fingerprint, "fit": dict(eval_fit or {})},
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if trainer.is_world_process_zero():
        write_json(out / RUN_RECORD, record)
    logger.info("%s: %d rows, %d/%d parameters trainable", family.value, len(train_set), n_trainable, n_params)

    # ---- train ------------------------------------------------------------------------------------------------
    checkpoint = get_last_checkpoint(str(out)) if args.resume else None
    if args.resume and checkpoint is None:
        logger.warning("--resume: no checkpoint in %s, starting from scratch", out)
    result = trainer.train(resume_from_checkpoint=checkpoint)

    # ---- save -------------------------------------------------------------------------------------------------
    if args.lora:
        # A merged model loads like any checkpoint; the adapters stay in the trainer checkpoints.
        merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(str(out))
    else:
        trainer.save_model(str(out))
    if trainer.is_world_process_zero():
        processor.save_pretrained(str(out))
        record.update(
            finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            resumed_from=checkpoint,
            global_step=trainer.state.global_step,
            metrics=result.metrics,
            guard=dict(collator.stats),
            log_history=trainer.state.log_history,
        )
        write_json(out / RUN_RECORD, record)
    return trainer
