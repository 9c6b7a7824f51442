"""Direct preference optimisation on preference pairs mined from the search trees (TRL's ``DPOTrainer``), so SFT,
DPO and GRPO can all start from one set of trees.

    trace-forge linearize runs/vstar-sim --mode preference
    grounded-rl dpo --model runs/sft --data runs/vstar-sim/dataset-preference --output_dir runs/dpo

A pair (``trace-forge linearize --mode preference``, :data:`~trace_forge.dataset.PREFERENCE_COLUMNS`) is two
single-turn responses from the same grounded prefix, one correct and one wrong. The trainer is TRL's, unchanged;
every :class:`~trl.DPOConfig` field is a flag (``--beta``, ``--loss_type``, ...; dashes work too) and a key of a
``--config`` YAML file (TRL's ``TrlParser``), beside the fields of :class:`GroundedDPOConfig`. What this module
adds, as :mod:`grounded_rl.sft` does:

- points in the model's frame: pairs written in another frame (the pixel default) are re-rendered for the model's
  processor (:meth:`~trace_forge.dataset.PreferenceRow.in_view`), so a pixel dataset trains any model;
- pairs longer than ``max_length`` (image tokens included) are dropped before training, never truncated through
  an image;
- the vision tower frozen, its merger and the LLM trained (ViGoRL), the reference model the policy as loaded;
- hardware defaults: bf16 autocast on a GPU, fp32 on CPU (weights stay fp32, so small updates are not rounded
  away);
- one run per output folder: a folder holding anything is refused unless ``--resume`` (continue the run it holds,
  which must be the same model, data and method; the latest checkpoint restores weights, optimizer, scheduler, RNG
  states and the data position) or ``--overwrite`` (replace it); one process writes it at a time
  (:class:`~trace_forge.durable.OutputLock`).

Output layout::

    OUT/
      config.json, model.safetensors, ...   final model + processor (our chat template), HF format
      checkpoint-N/                         trainer checkpoints (--resume continues from the latest)
      runs/                                 TensorBoard logs
      grounded_rl_dpo.json                  resolved config, versions, data fingerprints, pairs dropped as too long
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from trl import DPOConfig, DPOTrainer

from grounded_rl.data import image_token_count, model_view, set_max_pixels
from grounded_rl.models import family_of, freeze_vision_tower, load_model_and_processor
from trace_forge.dataset import PREFERENCE_FEATURES, PREFERENCE_ROWS, PreferenceRow, load_traces
from trace_forge.durable import OutputLock, write_json
from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import View

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["RUN_RECORD", "RESUME_IDENTITY", "GroundedDPOConfig", "parse_config", "prepare_pairs", "train_dpo"]

logger = logging.getLogger(__name__)

RUN_RECORD = "grounded_rl_dpo.json"
# Settings a resumed run must share with the run in the folder: what is trained on, from what, and how.
RESUME_IDENTITY = ("model", "data", "split", "limit", "max_pixels", "freeze_vision", "max_length", "loss_type",
                   "beta", "seed")
_VERSIONED = ("grounded-rl", "trace-forge", "torch", "transformers", "trl", "accelerate", "datasets")


@dataclass
class GroundedDPOConfig(DPOConfig):
    """[`~trl.DPOConfig`] plus where the policy and the pairs come from, and the output-folder rules.

    Parameters that control the data:
        model, data, split, eval_split, limit: the policy (usually the SFT output) and the pairs.

    Parameters that control the method:
        freeze_vision, max_pixels.

    Parameters that control the run:
        resume, overwrite.

    Changed defaults: ``bf16`` unset means on with a GPU and off on CPU (TRL: on); ``max_length=8192`` (SFT's, the
    paper's; TRL: 1024, which a high-resolution image alone can exceed); ``report_to=["tensorboard"]``.
    """

    # --- data ---
    model: str | None = field(default=None, metadata={
        "help": "Policy checkpoint (usually the SFT output); the reference model is it as loaded."})
    data: str | None = field(default=None, metadata={
        "help": "Preference pairs: a `trace-forge linearize --mode preference` folder, or its Hub id."})
    split: str = field(default="train", metadata={"help": "Split of --data to train on."})
    eval_split: str | None = field(default=None, metadata={
        "help": "Split of --data to evaluate every eval_steps (e.g. validation); none when unset."})
    limit: int | None = field(default=None, metadata={"help": "Use at most this many training pairs (smoke runs)."})
    # --- method ---
    freeze_vision: bool = field(default=True, metadata={
        "help": "Freeze the vision tower; its merger (projector) and the LLM train (ViGoRL)."})
    max_pixels: int | None = field(default=None, metadata={
        "help": "Cap on resized image pixels (default: the processor's own); points follow the new size."})
    # --- run ---
    resume: bool = field(default=False, metadata={
        "help": "Continue the run in output_dir from its latest checkpoint (same model, data and method)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace whatever output_dir holds."})
    # --- changed defaults ---
    bf16: bool | None = field(default=None, metadata={
        "help": "bf16 autocast (weights stay fp32); default: on with a GPU, off on CPU."})
    max_length: int | None = field(default=8192, metadata={
        "help": "Tokens of prompt + response, image tokens included; longer pairs are dropped, never truncated."})
    report_to: None | str | list[str] = field(default_factory=lambda: ["tensorboard"], metadata={
        "help": "Loggers (tensorboard, wandb, none)."})

    def __post_init__(self) -> None:
        missing = [f"--{name}" for name in ("model", "data", "output_dir") if not getattr(self, name)]
        if missing:
            raise ConfigError(f"{', '.join(missing)} required (flag or --config file)")
        if self.resume and self.overwrite:
            raise ConfigError("--resume continues the run in output_dir, --overwrite replaces it: pass one")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit={self.limit}: need >= 1, or unset for all pairs")
        if self.bf16 is None:
            self.bf16 = torch.cuda.is_available()
        super().__post_init__()


def parse_config(args: Sequence[str], examples: str = "") -> GroundedDPOConfig:
    """The config of command-line ``args`` (``--config FILE`` gives defaults, flags override them), as TRL's own
    scripts parse theirs; ``examples`` end the ``--help`` text.

    Raises:
        ConfigError: a value the config refuses (argparse itself exits 2 on an unknown flag, after usage).
    """
    from argparse import RawDescriptionHelpFormatter

    from trl import TrlParser

    parser = TrlParser(GroundedDPOConfig, prog="grounded-rl dpo", description=__doc__.split("\n\n")[0],
                       epilog=examples, formatter_class=RawDescriptionHelpFormatter)
    try:
        (config,) = parser.parse_args_and_config(list(args))
    except ValueError as e:  # raised by the config's own checks (TrainingArguments, DPOConfig)
        raise ConfigError(str(e)) from None
    return config


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def _in_view(dataset: Dataset, view: View) -> Dataset:
    """The pairs with their points in ``view``: as stored when already there, else re-rendered."""
    stored = {View.from_dict({"frame": f, "resize": r}) for f, r in zip(dataset["frame"], dataset["resize"],
                                                                          strict=True)}
    if stored == {view}:
        return dataset
    return dataset.map(lambda row: PreferenceRow.from_row(row).in_view(view).to_row(), features=PREFERENCE_FEATURES,
                       desc="points into the model's frame")


def _pair_tokens(processor: Any, row: dict[str, Any]) -> int:
    """Tokens of the prompt with the longer response: the rendered chat (one image pad) plus the image's tokens."""
    longest = 0
    for side in ("chosen", "rejected"):
        text = processor.apply_chat_template(row["prompt"] + row[side], tokenize=False)
        longest = max(longest, len(processor.tokenizer(text)["input_ids"]))
    return longest - 1 + image_token_count(processor, *row["image_size"])


def prepare_pairs(dataset: Dataset, processor: Any, view: View, max_length: int | None) -> tuple[Dataset, Counter]:
    """Pairs ready for stock ``DPOTrainer``: points in the model's ``view``, pairs over ``max_length`` tokens dropped.

    Returns:
        The pairs, and the counts ``{"kept", "too_long"}``.
    """
    dataset = _in_view(dataset, view)
    if max_length is None:
        return dataset, Counter(kept=len(dataset), too_long=0)
    text = dataset.select_columns(["prompt", "chosen", "rejected", "image_size"])  # no image is decoded
    keep = [i for i, row in enumerate(text) if _pair_tokens(processor, row) <= max_length]
    counts = Counter(kept=len(keep), too_long=len(dataset) - len(keep))
    return (dataset if len(keep) == len(dataset) else dataset.select(keep)), counts


# ---------------------------------------------------------------------------------------------------------------
# The output folder
# ---------------------------------------------------------------------------------------------------------------


def _identity(config: dict[str, Any]) -> dict[str, Any]:
    return {name: config.get(name) for name in RESUME_IDENTITY}


def _claim_folder(config: GroundedDPOConfig) -> str | None:
    """Apply the output-folder rules; the checkpoint to resume from, if any (held under the folder's lock)."""
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(config.output_dir)
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and config.overwrite:
        shutil.rmtree(out)
        occupied = False
    if occupied and not config.resume:
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    if not occupied:
        if config.resume:
            logger.warning("--resume: %s holds no run, starting from scratch", out)
        return None
    record = out / RUN_RECORD
    if not record.is_file():
        raise ConfigError(f"--resume: {out} holds no grounded-rl dpo run ({RUN_RECORD} missing); choose another "
                          "output_dir, or --overwrite")
    saved = _identity(json.loads(record.read_text(encoding="utf-8"))["config"])
    current = _identity(json.loads(config.to_json_string()))
    changed = [f"{name}: {saved[name]!r} -> {current[name]!r}" for name in RESUME_IDENTITY
               if saved[name] != current[name]]
    if changed:
        raise ConfigError(f"--resume: {out} holds a run with other settings ({'; '.join(changed)}); use them, "
                          "or another output_dir")
    checkpoint = get_last_checkpoint(str(out))
    if checkpoint is None:
        logger.warning("--resume: no checkpoint in %s yet, starting from scratch", out)
    return checkpoint


def _data_entry(source: str, split: str | None, pairs: Dataset, fit: Counter) -> dict[str, Any]:
    """What the run record says of a split it trained or evaluated on."""
    return {"source": source, "split": split, "pairs": len(pairs), "fingerprint": pairs._fingerprint,
            "fit": dict(fit)}


def _installed(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


def train_dpo(config: GroundedDPOConfig) -> DPOTrainer:
    """Train ``config.model`` with DPO on the pairs of ``config.data``; save it to ``config.output_dir``.

    Returns:
        The trainer after training; its model is the one saved (safetensors, with the processor and our chat
        template).

    Raises:
        ConfigError: the output folder breaks its rules, or another process writes it.
        DataError: the dataset holds no preference pairs, or none fits ``max_length``.
    """
    from trl.trainer.callbacks import RichProgressCallback

    out = Path(config.output_dir)
    # Only the main process claims the folder: every rank of a distributed run writes into the same one.
    lock = OutputLock(out, "dpo") if int(os.environ.get("RANK", "0")) == 0 else nullcontext()
    with lock:
        checkpoint = _claim_folder(config)

        # ---- model and processor: weights fp32 (bf16 is autocast), vision tower frozen ----------------------------
        model, processor = load_model_and_processor(config.model, dtype=torch.float32,
                                                    trust_remote_code=config.trust_remote_code)
        family = family_of(model.config)
        if config.max_pixels is not None:  # before the view is read: it defines the model frame
            set_max_pixels(processor, config.max_pixels)
        frozen = freeze_vision_tower(model) if config.freeze_vision else 0
        view = model_view(processor, family)

        # ---- pairs ------------------------------------------------------------------------------------------------
        train_set = load_traces(config.data, config.split, rows=PREFERENCE_ROWS)
        if config.limit is not None:
            train_set = train_set.select(range(min(config.limit, len(train_set))))
        train_set, train_fit = prepare_pairs(train_set, processor, view, config.max_length)
        if len(train_set) == 0:
            raise DataError(f"no preference pair fits max_length={config.max_length}", path=config.data)
        eval_set, eval_fit = None, None
        if config.eval_split is not None:
            eval_set, eval_fit = prepare_pairs(load_traces(config.data, config.eval_split, rows=PREFERENCE_ROWS),
                                               processor, view, config.max_length)

        trainer = DPOTrainer(model=model, args=config, train_dataset=train_set, eval_dataset=eval_set,
                             processing_class=processor, callbacks=[RichProgressCallback()])
        record: dict[str, Any] = {
            "config": json.loads(config.to_json_string()),
            "family": family.value,
            "view": view.to_dict(),
            "versions": {package: _installed(package) for package in _VERSIONED},
            "parameters": {"total": sum(p.numel() for p in model.parameters()),
                           "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
                           "vision_frozen": frozen},
            "data": {"train": _data_entry(config.data, config.split, train_set, train_fit),
                     "eval": None if eval_set is None else _data_entry(config.data, config.eval_split, eval_set,
                                                                       eval_fit or Counter())},
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resumed_from": checkpoint,
        }
        if trainer.is_world_process_zero():
            write_json(out / RUN_RECORD, record)
        logger.info("%s: %d pairs, %d dropped as too long", family.value, len(train_set), train_fit["too_long"])

        result = trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model(str(out))  # with the processor (our chat template): TRL saves its processing class
        if trainer.is_world_process_zero():
            record.update(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), global_step=trainer.state.global_step,
                          metrics=result.metrics, log_history=trainer.state.log_history)
            write_json(out / RUN_RECORD, record)
    return trainer
