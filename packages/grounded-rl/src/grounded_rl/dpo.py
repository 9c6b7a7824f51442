"""Direct preference optimisation on preference pairs mined from the search trees (TRL's ``DPOTrainer``), so SFT,
DPO and GRPO can all start from one set of trees::

    trace-forge linearize runs/vstar-sim --mode preference
    grounded-rl dpo --model runs/sft --data runs/vstar-sim/dataset-preference --out runs/dpo

A pair (``trace-forge linearize --mode preference``, :data:`~trace_forge.dataset.PREFERENCE_COLUMNS`) is two
single-turn responses from the same grounded prefix, one correct and one wrong. The settings are TRL's
:class:`~trl.DPOConfig` (every field a flag and a YAML key, under TRL's name: ``--beta``, ``--loss_type``, ...)
plus the fields of :class:`GroundedDPOConfig`; the loop is TRL's ``DPOTrainer``. What this module adds:

- points in the model's frame: pairs written in another frame (the pixel default) are re-rendered for the model's
  processor (:meth:`~trace_forge.dataset.PreferenceRow.in_view`), so a pixel dataset trains any model;
- pairs longer than ``max_length`` (image tokens included) are dropped before training, never truncated through
  an image; the counts are recorded;
- the vision tower frozen, its merger and the LLM trained (ViGoRL); the reference model is the policy as loaded;
- the rules every training command shares (:mod:`grounded_rl.training`): hardware defaults, one run per output
  folder (``--resume`` with the same settings, or ``--overwrite``), a strict resume, a model card, and the output
  layout of ``grounded-rl sft`` (:mod:`grounded_rl.sft`): the final model with its processor and card,
  ``checkpoint-N/``, ``runs/`` and ``grounded_rl_run.json``, which here also counts the pairs dropped as too long.

This module imports TRL (and so torch); the CLI imports it only inside the command.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trl import DPOConfig, DPOTrainer

from grounded_rl.data import image_token_count, model_view
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
from trace_forge.dataset import PREFERENCE_FEATURES, PreferenceRow
from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import View

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = ["GroundedDPOConfig", "GroundedDPOTrainer", "prepare_pairs", "train"]

logger = logging.getLogger(__name__)


@dataclass
class GroundedDPOConfig(CommonFields, DPOConfig):
    """TRL's ``DPOConfig`` plus where the policy and the pairs come from.

    Parameters that control the data and the model (ours):
        model, data, split, eval_split, limit, max_pixels, freeze_vision.

    Changed defaults: ``max_length=8192`` (SFT's, the paper's; TRL: 1024, which a high-resolution image alone can
    exceed), ``report_to="tensorboard"``. Left unset, ``bf16`` is on with a GPU that has it and off on CPU, and
    ``dataloader_pin_memory`` follows the GPU. With ``eval_split``, evaluation runs every ``eval_steps`` (default
    ``save_steps``).
    """

    # ---- data ---------------------------------------------------------------------------------------------------
    model: str | None = field(default=None, metadata={
        "help": "Policy checkpoint (usually the SFT output), folder or Hub id; the reference model is it as loaded. "
                "Alias: --model_name_or_path."})
    data: str | None = field(default=None, metadata={
        "help": "Preference pairs: a `trace-forge linearize --mode preference` folder, or its Hub id. "
                "Alias: --dataset_name."})
    split: str = field(default="train", metadata={"help": "Split of --data to train on."})
    eval_split: str | None = field(default=None, metadata={
        "help": "Split of --data to evaluate every eval_steps (e.g. validation); none when unset."})
    limit: int | None = field(default=None, metadata={"help": "Use at most this many training pairs (smoke runs)."})
    max_pixels: int | None = field(default=None, metadata={
        "help": "Cap on resized image pixels (default: the processor's own); points follow the new size."})
    # ---- model --------------------------------------------------------------------------------------------------
    freeze_vision: bool = field(default=True, metadata={
        "help": "Freeze the vision tower; its merger (projector) and the LLM train (ViGoRL)."})
    # ---- changed defaults ---------------------------------------------------------------------------------------
    max_length: int | None = field(default=8192, metadata={
        "help": "Tokens of prompt + response, image tokens included; longer pairs are dropped, never truncated."})

    def __post_init__(self) -> None:
        prepare_config(self)
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1 or unset (all pairs), got {self.limit}")
        held_out_evaluation(self, self.eval_split, "eval_split (a split of --data)")
        super().__post_init__()


class GroundedDPOTrainer(TrainerMixin, DPOTrainer):
    """TRL's DPOTrainer with a strict resume, checkpoints that carry their run, and our model card."""

    progress_label = "dpo"


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


def _data_entry(source: str, split: str | None, pairs: Dataset, fit: Counter) -> dict[str, Any]:
    """What the run record says of a split it trained or evaluated on."""
    return {"source": source, "split": split, "pairs": len(pairs), "fingerprint": pairs._fingerprint,
            "fit": dict(fit)}


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


def train(config: GroundedDPOConfig, options: RunOptions | None = None) -> GroundedDPOTrainer:
    """Train ``config.model`` with DPO on the pairs of ``config.data`` and save the result to ``config.output_dir``.

    Args:
        config: a :class:`GroundedDPOConfig`.
        options: what to do with an output folder that holds a run (``--resume``, ``--overwrite``); see
            :func:`grounded_rl.training.claim_output`.

    Returns:
        The trainer after training; its model is the one saved (safetensors, with the processor and our chat
        template).

    Raises:
        ConfigError: a missing model, the output folder holds another run, or a setting is invalid.
        DataError: the dataset is missing or holds no preference pairs, no pair fits ``max_length``, or a
            checkpoint cannot be restored.
    """
    options = options or RunOptions()
    check_source(config.model, "model", model=True)
    check_source(config.data, "data")
    if config.model is None or config.data is None:
        raise ConfigError("model and data are required (--model, --data, or the config file)")
    with claimed_output(config, "dpo", options) as (out, settings, checkpoint):
        return _train(config, out, settings, checkpoint)


def _train(config: GroundedDPOConfig, out: Path, settings: dict[str, Any], checkpoint: str | None
           ) -> GroundedDPOTrainer:
    from datasets import disable_caching

    from trace_forge.dataset import PREFERENCE_ROWS, load_traces

    # ---- model and processor ----------------------------------------------------------------------------------
    model, processor, family, frozen = load_policy(config)
    view = model_view(processor, family)

    # ---- pairs: re-rendering and filtering are cheap and redone on every run, so nothing is cached --------------
    disable_caching()
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

    # ---- trainer: the reference model is the policy as loaded (TRL loads it again from config.model) ------------
    trainer = GroundedDPOTrainer(model=model, args=config, train_dataset=train_set, eval_dataset=eval_set,
                                 processing_class=processor)
    trainer.card = dict(
        name=out.name, path=config.output_dir, base=config.model, method="DPO", multi_turn=False,
        datasets=[config.data],
        settings={k: settings.get(k) for k in ("learning_rate", "lr_scheduler_type", "beta", "loss_type",
                                               "num_train_epochs", "per_device_train_batch_size",
                                               "gradient_accumulation_steps", "max_length", "max_pixels",
                                               "freeze_vision", "seed")},
    )
    facts: dict[str, Any] = {
        "family": family.value,
        "view": view.to_dict(),
        "parameters": parameter_counts(model, frozen),
        "data": {"train": _data_entry(config.data, config.split, train_set, train_fit),
                 "eval": None if eval_set is None else _data_entry(config.data, config.eval_split, eval_set,
                                                                   eval_fit or Counter())},
    }
    if trainer.is_world_process_zero():
        trainer.run_record = write_run(out, "dpo", config, settings, **facts, resumed_from=checkpoint)
    logger.info("%s: %d pairs, %d dropped as too long", family.value, len(train_set), train_fit["too_long"])

    # ---- train and save ---------------------------------------------------------------------------------------
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(out))  # with the processor (our chat template): the trainer saves its processing class
    if trainer.is_world_process_zero():
        trainer.create_model_card()
        write_run(out, "dpo", config, settings, **facts, resumed_from=checkpoint, finished=True,
                  global_step=trainer.state.global_step, metrics=result.metrics,
                  log_history=trainer.state.log_history)
    return trainer
