"""GRPO with grounded rewards, single-turn or multi-turn with the zoom tool (ViGoRL's RL stage, on TRL).

    grounded-rl grpo --model runs/sft --task sat2 --data-dir data/sat2 --split train --out runs/grpo
    grounded-rl grpo --model runs/sft-multi --task generic --data-dir data/vigorl_SA_RL.jsonl -o image=images \\
        -o question=problem -o answer_kind=text --multi-turn --max-pixels 2850000 --out runs/grpo-multi \\
        --use-vllm --vllm-mode colocate

RL questions are never the evaluation questions: a training split (SAT-2 train; val is evaluated), or ViGoRL's
visual-search RL file for zoom GRPO (V*Bench is evaluated).

One prompt row per question: ``prompt`` = [system (student prompt), user (question)], ``image`` = the canvas at
full resolution (TRL puts it before the question), plus the columns the rewards read (see :mod:`grounded_rl.rewards`).
Multi-turn rollouts call :class:`~grounded_rl.env.ZoomEnvironment` through TRL's tool loop: crops join the
forward pass, their tokens are masked from the loss (TRL's ``tool_mask``), and truncated rollouts are masked
(``mask_truncated_completions``). :class:`GroundedGRPOTrainer` adds the one rule TRL lacks: over-turn masking.

TRL logs every reward component (``rewards/<name>/mean``: accuracy, format, zoom diversity, point validity as
``grounding_reward``), ``tools/call_frequency`` (zoom calls per rollout), ``completions/mean_length``, ``kl`` and
``entropy``, to the console and TensorBoard (``OUT/runs``). We add ``tools/zoom_rate`` (share of rollouts that zoom;
multi-turn), ``grounding/points_inside_rate`` (share of named points inside the image) and
``tools/over_turn_ratio``, and warn when the zoom rate stays under ``zoom_rate_floor`` for ``zoom_rate_patience``
steps: tool use that quietly collapses to zero is what users of multi-turn visual RL report most.

Images are read lazily: a prompt row stores where its images are (paths, or the bytes of a trace dataset), and the
canvas is decoded when the dataloader fetches the row, once per group of rollouts. Start-up time and memory do not
grow with the number of prompts (``benchmarks/grpo_startup.py``).

Settings are TRL's :class:`~trl.GRPOConfig` plus ours (:class:`GroundedGRPOConfig`); output folders, resume, the
model card and the run record follow :mod:`grounded_rl.training`.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, Features, Image, List, Value
from PIL import Image as PILImage
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from grounded_rl.data import image_token_count, model_view
from grounded_rl.env import DEFAULT_MAX_IMAGES, ZoomEnvironment
from grounded_rl.models import Family
from grounded_rl.rewards import DEFAULT_WEIGHTS, RAW_TEXT, assistant_turns, build_rewards
from grounded_rl.training import (
    CommonFields,
    RunOptions,
    TrainerMixin,
    check_source,
    claimed_output,
    load_policy,
    prepare_config,
    write_run,
)
from trace_forge.dataset import TraceRow, load_traces
from trace_forge.errors import ConfigError
from trace_forge.grounding import Frame, ImageGeometry, Resize, parse_response
from trace_forge.tasks import AnswerKind, Sample, TaskSpec
from trace_forge.tasks.io import check_image, compose_canvas
from trace_forge.tasks.prompts import NORM1000_HINT, prompts_for

__all__ = [
    "GroundedGRPOConfig",
    "GroundedGRPOTrainer",
    "ZoomCollapseWatch",
    "canvas_size",
    "generated_turns",
    "tool_use",
    "prompt_rows",
    "prompt_dataset",
    "load_prompts",
    "build_trainer",
    "run_grpo",
]

logger = logging.getLogger(__name__)

# Columns of a stored prompt row; Features pinned so empty lists and None answers keep their types. A row as the
# trainer reads it has ``image`` (the decoded canvas) instead of ``image_sources`` (see :class:`_Canvases`).
PROMPT_FEATURES = Features(
    {
        "prompt": List({"role": Value("string"), "content": Value("string")}),
        "image_sources": List(Image(decode=False)),  # the sample's images: a path, or stored bytes; not decoded
        "task": Value("string"),
        "task_options": Value("string"),  # JSON object: with "task", the TaskSpec the rewards and the zoom tool use
        "question_id": Value("string"),
        "answer_kind": Value("string"),
        "answer": Value("string"),
        "options": List(Value("string")),
        "target_boxes": List(List(Value("float64"))),
        "image_size": List(Value("int32")),
        "model_size": List(Value("int32")),
        "frame": Value("string"),
        "mode": Value("string"),
    }
)


@dataclass
class GroundedGRPOConfig(CommonFields, GRPOConfig):
    """[`~trl.GRPOConfig`] with ViGoRL's GRPO recipe (arXiv 2505.23678, Table A2 single-turn, A5.3 multi-turn).

    Parameters that control the data:
        model, task, task_options, data_dir, data, split, limit: where the policy and the prompts come from.

    Parameters that control the method:
        multi_turn, max_images, rewards, diversity_requires_correct, grounding_margin, freeze_vision, max_pixels,
        max_prompt_length.

    Parameters that watch the run:
        zoom_rate_floor, zoom_rate_patience: warn when multi-turn rollouts stop zooming.

    Changed defaults (paper values): ``learning_rate=1e-6``, ``beta=0.01``, ``epsilon=0.2``,
    ``epsilon_high=0.28``, ``temperature=1.0``, ``top_p=0.99``, ``max_completion_length=2048``,
    ``weight_decay=0.01``, ``warmup_steps=0.05`` (a ratio), ``mask_truncated_completions=True``,
    ``logging_steps=1``, ``report_to="tensorboard"``. Mode-dependent, resolved in ``__post_init__`` when unset:
    ``num_generations`` 5 (8 multi-turn), ``max_grad_norm`` 1.0 (0.2 multi-turn), ``per_device_train_batch_size``
    = ``num_generations`` (one question's group per device step), ``max_tool_calling_iterations`` =
    ``max_images - 1`` and ``rewards`` = :data:`~grounded_rl.rewards.DEFAULT_WEIGHTS` of the mode. Hardware, when
    unset: ``bf16`` autocast with a GPU that has it, fp32 on CPU (weights stay fp32 either way);
    ``dataloader_pin_memory`` with a GPU.
    """

    # --- data ---
    model: str | None = field(default=None, metadata={
        "help": "Policy checkpoint (usually the SFT output), folder or Hub id. Alias: --model_name_or_path."})
    task: str | None = field(default=None, metadata={"help": "trace-forge task whose samples become prompts."})
    task_options: dict | str | None = field(
        default=None, metadata={"help": "Options of the task (e.g. the column map of 'generic'), a JSON object; "
                                "on the command line also -o KEY=VALUE, repeatable."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "The task's data folder (official layout)."})
    data: str | None = field(default=None, metadata={
        "help": "Instead of a task: a trace-forge dataset (folder or Hub id), one prompt per question. "
                "Alias: --dataset_name."})
    split: str | None = field(default=None, metadata={"help": "Split to train on; the task's default when unset."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N questions."})
    # --- method ---
    multi_turn: bool = field(default=False, metadata={"help": "Zoom-tool dialogs instead of one completion."})
    max_images: int = field(
        default=DEFAULT_MAX_IMAGES,
        metadata={"help": "Images per multi-turn dialog, original included (ViGoRL: 5); past it: over-turn."},
    )
    rewards: dict | str | None = field(
        default=None, metadata={"help": "{reward name: weight} (JSON); ViGoRL's weights of the mode when unset."}
    )
    diversity_requires_correct: bool = field(
        default=True, metadata={"help": "Pay the zoom-diversity bonus only to correct answers (ViGoRL: always)."}
    )
    grounding_margin: float = field(
        default=0.0, metadata={"help": "Pixels of slack of the step_grounding reward's on-target test (a reward "
                                       "listed in rewards, not among the defaults)."}
    )
    freeze_vision: bool = field(default=True, metadata={"help": "Freeze the vision tower (ViGoRL, Table A2)."})
    max_pixels: int | None = field(
        default=None,
        metadata={"help": "Cap the pixels of the resized image (ViGoRL RL: 4194304; V* multi-turn 2850000); "
                  "the processor's own bound when unset."},
    )
    max_prompt_length: int | None = field(
        default=4096, metadata={"help": "Drop prompts longer than this, image tokens included (Table A2: 4096)."}
    )
    # --- watch ---
    zoom_rate_floor: float = field(default=0.05, metadata={
        "help": "Multi-turn: warn when fewer than this share of rollouts zoom ..."})
    zoom_rate_patience: int = field(default=10, metadata={"help": "... for this many logged steps in a row."})
    # --- changed defaults ---
    learning_rate: float = field(default=1e-6, metadata={"help": "AdamW learning rate (Table A2)."})
    beta: float = field(default=0.01, metadata={"help": "KL coefficient (Table A2)."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clip range (A5.1)."})
    epsilon_high: float | None = field(default=0.28, metadata={"help": "Upper clip range (Table A2: 0.28)."})
    temperature: float = field(default=1.0, metadata={"help": "Rollout temperature (Table A2)."})
    top_p: float = field(default=0.99, metadata={"help": "Rollout nucleus mass (Table A2)."})
    max_completion_length: int | None = field(
        default=2048, metadata={"help": "Tokens per rollout, observations included (Table A2: 2048)."}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (Table A2)."})
    warmup_steps: float = field(default=0.05, metadata={
        "help": "Warmup; a float < 1 is a share of all steps (Table A2: 0.05). Alias: --warmup_ratio."})
    mask_truncated_completions: bool = field(
        default=True, metadata={"help": "Mask rollouts that end without EOS from the loss (A5.3)."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every N steps."})
    num_generations: int | None = field(default=None, metadata={"help": "Group size: 5, multi-turn 8 (Table A2)."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Gradient clip: 1.0, multi-turn 0.2."})
    per_device_train_batch_size: int | None = field(
        default=None, metadata={"help": "Rollouts per device step; num_generations when unset."}
    )

    def __post_init__(self) -> None:
        prepare_config(self)
        if (self.task is None) == (self.data is None):
            raise ConfigError("give exactly one of task (with data_dir) and data")
        if self.max_images < 1:
            raise ConfigError(f"max_images={self.max_images}: need >= 1 (the original image)")
        if self.grounding_margin < 0:
            raise ConfigError(f"grounding_margin={self.grounding_margin}: need >= 0 pixels")
        if not 0 <= self.zoom_rate_floor <= 1 or self.zoom_rate_patience < 1:
            raise ConfigError("zoom_rate_floor must be in [0, 1] and zoom_rate_patience >= 1")
        self.task_options = _json_object(self.task_options, "task_options")
        self.rewards = _json_object(self.rewards, "rewards")
        self.num_generations = self.num_generations or (8 if self.multi_turn else 5)
        self.max_grad_norm = self.max_grad_norm if self.max_grad_norm is not None else (0.2 if self.multi_turn else 1.0)
        self.per_device_train_batch_size = self.per_device_train_batch_size or self.num_generations
        if self.multi_turn and self.max_tool_calling_iterations is None:
            self.max_tool_calling_iterations = self.max_images - 1
        self.rewards = {k: float(v) for k, v in (self.rewards or DEFAULT_WEIGHTS[self.mode]).items()}
        super().__post_init__()

    @property
    def mode(self) -> str:
        return "multi" if self.multi_turn else "single"


def _json_object(value: Any, name: str) -> dict[str, Any] | None:
    """A dict setting given as a mapping (YAML) or a JSON object (command line)."""
    if value is None or isinstance(value, Mapping):
        return None if value is None else dict(value)
    try:
        loaded = json.loads(value)
    except json.JSONDecodeError:
        loaded = None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{name} must be a JSON object (e.g. '{{\"key\": \"value\"}}'), got {value!r}")
    return loaded


class GroundedGRPOTrainer(TrainerMixin, GRPOTrainer):
    """GRPOTrainer plus over-turn masking for multi-turn zoom dialogs, the tool-use metrics, and
    :class:`~grounded_rl.training.TrainerMixin` (strict resume, run record in checkpoints, our model card)."""

    progress_label = "grpo"

    def _generate(self, prompts: list) -> tuple:
        """Generate as TRL does, keep each assistant turn's text as generated, then mask over-turn rollouts.

        TRL's response parser rewrites a turn (tool calls moved out, one text segment kept), so the format reward
        would judge a cleaned-up turn; each assistant message gets its decoded tokens under
        :data:`~grounded_rl.rewards.RAW_TEXT` (see :func:`generated_turns`).

        Over-turn rule: a rollout whose last assistant turn still calls a tool ran out of turns
        (``max_tool_calling_iterations`` reached, or the next observation would not fit in
        ``max_completion_length``) without answering. Its rewards are 0 already (no answer, broken grammar); its
        tokens get ``tool_mask = 0`` so that the policy is not pushed away from a dialog that was cut short rather
        than wrong. It still counts in its group's mean. Logged as ``tools/over_turn_ratio``.
        """
        output = super()._generate(prompts)
        _check_generate_output(output)
        _, completion_ids, tool_mask, completions, *_ = output
        tokenizer = self.processing_class.tokenizer
        for i, (ids, completion) in enumerate(zip(completion_ids, completions, strict=True)):
            turns = generated_turns(ids, tool_mask[i] if tool_mask is not None else None)
            messages = [m for m in completion if m.get("role") == "assistant"]
            for message, turn in zip(messages, turns, strict=True):
                message[RAW_TEXT] = tokenizer.decode(turn, skip_special_tokens=False)
        if tool_mask is None:
            return output
        over = [bool(c and c[-1].get("role") == "assistant" and c[-1].get("tool_calls")) for c in completions]
        for mask, is_over in zip(tool_mask, over, strict=True):
            if is_over:
                mask[:] = [0] * len(mask)
        ratio = self.accelerator.gather(torch.tensor(over, dtype=torch.float32, device=self.accelerator.device))
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["tools/over_turn_ratio"].append(ratio.mean().item())
        return output

    def _calculate_rewards(self, inputs: list[dict], prompts: list, completions: list, completion_ids_list: list):
        """TRL's rewards, then the tool-use metrics of the same rollouts (see :func:`tool_use`)."""
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        zoomed, inside, points = tool_use(completions, inputs)
        counts = torch.tensor([[zoomed, len(completions), inside, points]], dtype=torch.float64,
                              device=self.accelerator.device)
        zoomed, rollouts, inside, points = self.accelerator.gather(counts).sum(dim=0).tolist()
        mode = "train" if self.model.training else "eval"
        if self.args.multi_turn:
            self._metrics[mode]["tools/zoom_rate"].append(zoomed / max(rollouts, 1))
        if points:
            self._metrics[mode]["grounding/points_inside_rate"].append(inside / points)
        return rewards

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # A metric with no value this period (a reward that applied to no rollout) would reach the loggers as
        # None, and TensorBoard warns about each; it is left out instead.
        mode = "train" if self.model.training else "eval"
        for key in [k for k, v in self._metrics[mode].items() if all(math.isnan(x) for x in v)]:
            del self._metrics[mode][key]
        super().log(logs, start_time)


class ZoomCollapseWatch(TrainerCallback):
    """Warn when multi-turn rollouts stop zooming: ``tools/zoom_rate`` under ``floor`` for ``patience`` logged
    steps in a row.

    Users of multi-turn visual RL (DeepEyes, Pixel-Reasoner, OpenThinkIMG, verl) report that tool calls quietly
    collapse to zero during RL; ViGoRL added its zoom-diversity reward against it (Fig. A1). The warning repeats
    after every further ``patience`` low steps.
    """

    def __init__(self, floor: float, patience: int) -> None:
        self.floor = floor
        self.patience = patience
        self.low = 0

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any):
        rate = (logs or {}).get("tools/zoom_rate")
        if rate is None:
            return
        self.low = self.low + 1 if rate < self.floor else 0
        if self.low and self.low % self.patience == 0 and state.is_world_process_zero:
            logger.warning(
                "step %d: only %.0f%% of rollouts zoomed, under zoom_rate_floor=%.0f%% for %d steps: tool use is "
                "collapsing. Check rewards/zoom_diversity_reward/mean and tools/failure_frequency; consider a "
                "larger zoom_diversity weight, a lower learning_rate, or more SFT on zoom dialogs",
                state.global_step, 100 * rate, 100 * self.floor, self.low,
            )


def tool_use(completions: Sequence[Any], rows: Sequence[Mapping[str, Any]]) -> tuple[int, int, int]:
    """``(rollouts that call a tool, points inside the image, points named)`` of a batch of rollouts.

    Each rollout is read with trace-forge's parser in its prompt row's frame; a point counts as inside when it lies
    on the image in the model's frame (row columns ``image_size``, ``model_size``, ``frame``, ``mode``).

    Example:
        >>> row = {"image_size": [640, 480], "model_size": [644, 476], "frame": "model", "mode": "single"}
        >>> tool_use(["<think> (10, 20) and (700, 20) </think><answer> red </answer>"], [row])
        (0, 1, 2)
    """
    zoomed = inside = points = 0
    for completion, row in zip(completions, rows, strict=True):
        (w, h), (mw, mh) = row["image_size"], row["model_size"]
        geometry = ImageGeometry(width=w, height=h, model_width=mw, model_height=mh)
        expect = "turn" if row["mode"] == "multi" else "single"
        turns = [parse_response(t, frame=Frame(row["frame"]), expect=expect) for t in assistant_turns(completion) or []]
        zoomed += any(t.tool_calls for t in turns)
        named = [p for t in turns for p in (*t.points, *([t.answer_point] if t.answer_point else []))]
        points += len(named)
        inside += sum(geometry.contains(p.x, p.y, p.frame) for p in named)
    return zoomed, inside, points


# The private TRL method this trainer extends, and the tuple it returns in the TRL versions we pin (pyproject.toml).
_GENERATE_FIELDS = ("prompt_ids", "completion_ids", "tool_mask", "completions", "logprobs", "extra_fields", "images",
                    "tool_images")


def _check_generate_output(output: object) -> None:
    """Fail loudly, naming the TRL version, when ``GRPOTrainer._generate`` no longer returns what we unpack."""
    ok = isinstance(output, tuple) and len(output) == len(_GENERATE_FIELDS)
    if ok:
        _, completion_ids, tool_mask, completions, *_ = output
        ok = (isinstance(completion_ids, list) and isinstance(completions, list)
              and (tool_mask is None or isinstance(tool_mask, list)) and len(completions) == len(completion_ids))
    if not ok:
        import trl

        shape = f"a {len(output)}-tuple" if isinstance(output, tuple) else type(output).__name__
        raise RuntimeError(
            f"trl {trl.__version__}: GRPOTrainer._generate returned {shape}, not ({', '.join(_GENERATE_FIELDS)}); "
            "GroundedGRPOTrainer extends this private method and supports the TRL versions grounded-rl pins "
            "(see its pyproject.toml): install one of those"
        )


def generated_turns(completion_ids: list[int], tool_mask: list[int] | None) -> list[list[int]]:
    """The tokens of each assistant turn of a rollout: the runs the policy generated (``tool_mask`` 1).

    Tool results (``tool_mask`` 0, chat-template tokens around the observation included) separate the turns; a
    single-turn rollout (no mask) is one turn.

    Example:
        >>> generated_turns([1, 2, 9, 9, 3], [1, 1, 0, 0, 1])
        [[1, 2], [3]]
    """
    if tool_mask is None:
        return [list(completion_ids)]
    pairs = zip(completion_ids, tool_mask, strict=True)
    return [[token for token, _ in run] for generated, run in groupby(pairs, key=lambda p: p[1]) if generated]


# ---------------------------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------------------------


def _system(kind: AnswerKind, multi_turn: bool, family: Family) -> str:
    hint = NORM1000_HINT if family.frame is Frame.NORM1000 else None
    return prompts_for(kind).student_system(multi_turn, coordinate_hint=hint)


def canvas_size(sources: Sequence[Any]) -> tuple[int, int]:
    """``(width, height)`` of the canvas of a sample's images, reading image headers only.

    The layout is :func:`~trace_forge.tasks.io.compose_canvas`'s: side by side, top-aligned.

    Example:
        >>> canvas_size([PILImage.new("RGB", (64, 48)), PILImage.new("RGB", (96, 54))])
        (160, 54)
    """
    sizes = [_image_size(source) for source in sources]
    return sum(w for w, _ in sizes), max(h for _, h in sizes)


def _image_size(source: Any) -> tuple[int, int]:
    if isinstance(source, PILImage.Image):
        return source.size
    if isinstance(source, Mapping):  # an undecoded datasets Image value
        if source.get("bytes") is not None:
            with PILImage.open(io.BytesIO(source["bytes"])) as image:
                return image.size
        source = source["path"]
    return check_image(Path(source))


def _source(image: Any) -> Any:
    """A sample image as an undecoded ``Image`` value: a path (absolute: the dataloader may run elsewhere), stored
    bytes as they are, or an image a loader already decoded (the feature encodes it)."""
    if isinstance(image, (str, Path)):
        return {"path": str(Path(image).resolve()), "bytes": None}
    return image


def prompt_rows(
    samples: list[Sample], task: TaskSpec, resize: Resize, family: Family, multi_turn: bool
) -> dict[str, list[Any]]:
    """Stored prompt rows (columns of :data:`PROMPT_FEATURES`) for ``samples`` of ``task``; no image is decoded.

    Args:
        samples: task samples; their images (side by side) are the canvas.
        task: their task and its options (written to every row for the rewards and the zoom tool).
        resize: the processor's resize bounds (the ``model_size`` column, which defines the ``model`` frame).
        family: the policy's family: its frame, and the 0-1000 coordinate hint for Qwen3-VL.
        multi_turn: student system prompt and ``mode`` of the zoom dialogs.
    """
    columns: dict[str, list[Any]] = {name: [] for name in PROMPT_FEATURES}
    options = json.dumps(dict(task.options), sort_keys=True)
    for s in samples:
        size = canvas_size(s.images)
        question = prompts_for(s.answer_kind).question_text(s)
        columns["prompt"].append(
            [
                {"role": "system", "content": _system(s.answer_kind, multi_turn, family)},
                {"role": "user", "content": question},
            ]
        )
        columns["image_sources"].append([_source(image) for image in s.images])
        columns["task"].append(task.name)
        columns["task_options"].append(options)
        columns["question_id"].append(s.id)
        columns["answer_kind"].append(s.answer_kind.value)
        columns["answer"].append(s.answer)
        columns["options"].append(list(s.options))
        columns["target_boxes"].append([b.to_list() for b in s.target_boxes])
        columns["image_size"].append(list(size))
        columns["model_size"].append(list(resize.model_size(*size)))
        columns["frame"].append(family.frame.value)
        columns["mode"].append("multi" if multi_turn else "single")
    return columns


class _Canvases:
    """The dataset transform that turns a stored prompt row into a trainer row: ``image_sources`` -> ``image``.

    TRL's sampler fetches each prompt once per rollout of its group, in one dataloader batch: each distinct canvas
    of a batch is decoded once, and kept for the next batch only (a group may straddle two), so memory is bounded
    by the batch, not by the number of prompts.
    """

    def __init__(self) -> None:
        self._kept: dict[Any, PILImage.Image] = {}

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        batch = dict(batch)
        if "image_sources" not in batch:  # a query of other columns only
            return batch
        sources = batch.pop("image_sources")
        decoded: dict[Any, PILImage.Image] = {}
        images = []
        for row_sources in sources:
            key = tuple((s["path"], hash(s["bytes"]) if s["bytes"] is not None else None) for s in row_sources)
            if key not in decoded:
                kept = self._kept.get(key)
                decoded[key] = kept if kept is not None else compose_canvas([_decodable(s) for s in row_sources])[0]
            images.append(decoded[key])
        self._kept = decoded
        batch["image"] = images
        return batch

    def __getstate__(self) -> dict[str, Any]:  # datasets hashes the transform and dataloader workers copy it
        return {"_kept": {}}


def _decodable(source: Mapping[str, Any]) -> Any:
    return PILImage.open(io.BytesIO(source["bytes"])) if source["bytes"] is not None else Path(source["path"])


def prompt_dataset(columns: dict[str, list[Any]]) -> Dataset:
    """Stored prompt rows (:func:`prompt_rows`) as the dataset the trainer reads: rows carry the decoded ``image``."""
    return Dataset.from_dict(columns, features=PROMPT_FEATURES).with_transform(_Canvases())


def _questions_of_traces(source: str, split: str) -> tuple[TaskSpec, list[Sample]]:
    """The questions of a trace dataset, one sample per question with its canvas (stored bytes, not decoded)."""
    traces = load_traces(source, split).cast_column("images", List(Image(decode=False)))
    first: dict[str, int] = {}
    for i, qid in enumerate(traces["question_id"]):
        first.setdefault(qid, i)
    rows = [TraceRow.from_row(traces[i], where=source) for i in first.values()]
    specs = {row.task.key for row in rows}
    if len(specs) != 1:
        raise ConfigError(f"{source}: the dataset mixes tasks {sorted(specs)}; train GRPO on one task at a time")
    samples = [replace(row.sample, images=[row.images[0]]) for row in rows]
    return rows[0].task, samples


def load_prompts(config: GroundedGRPOConfig, processor: Any, family: Family) -> Dataset:
    """The prompt dataset of ``config``: from a task's samples, or from the questions of a trace dataset."""
    resize = Resize.of_processor(processor)
    if config.task is not None:
        task = TaskSpec(config.task, config.task_options or {})
        samples = list(task.build().load(data_dir=config.data_dir, split=config.split, limit=config.limit))
    else:
        task, samples = _questions_of_traces(config.data, config.split or "train")
        samples = samples[: config.limit]
    if not samples:
        raise ConfigError(f"no prompts: {config.task or config.data} gave no samples")
    columns = prompt_rows(samples, task, resize, family, config.multi_turn)
    del samples  # a loader that decodes (Hub datasets) holds images: they now live, encoded, in the columns
    if config.max_prompt_length is not None:
        pairs = zip(columns["prompt"], columns["image_size"], strict=True)
        lengths = [_prompt_tokens(processor, prompt, size) for prompt, size in pairs]
        keep = [i for i, n in enumerate(lengths) if n <= config.max_prompt_length]
        if not keep:
            raise ConfigError(
                f"no prompts left: all {len(lengths)} of {config.task or config.data} are longer than "
                f"max_prompt_length={config.max_prompt_length} tokens, image tokens included (shortest "
                f"{min(lengths)}); lower max_pixels (now {resize.max_pixels}) or raise max_prompt_length"
            )
        if len(keep) < len(lengths):
            logger.warning("dropped %d prompts longer than %d tokens", len(lengths) - len(keep), config.max_prompt_length)
            columns = {name: [values[i] for i in keep] for name, values in columns.items()}
    dataset = prompt_dataset(columns)
    logger.info("%d %s-turn prompts", len(dataset), config.mode)
    return dataset


def _prompt_tokens(processor: Any, prompt: list[dict], image_size: list[int]) -> int:
    """Prompt length in tokens: the rendered chat (one image pad token) plus the image's visual tokens."""
    user = {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt[1]["content"]}]}
    text = processor.apply_chat_template(
        [prompt[0], user], tokenize=False, add_generation_prompt=True
    )
    return len(processor.tokenizer(text)["input_ids"]) - 1 + image_token_count(processor, *image_size)


# ---------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------


def build_trainer(config: GroundedGRPOConfig) -> GroundedGRPOTrainer:
    """Load the policy, the prompts, the rewards and (multi-turn) the zoom environment into a trainer."""
    # ---- policy: our chat template, vision tower frozen (ViGoRL: projector and LLM trained) -------------------
    model, processor, family, frozen = load_policy(config)
    processor.tokenizer.padding_side = "left"  # TRL generates from left-padded prompts
    if frozen:
        logger.info("froze %d vision-tower parameters", frozen)

    # ---- prompts and rewards ------------------------------------------------------------------------------------
    train_dataset = load_prompts(config, processor, family)
    reward_funcs, config.reward_weights = build_rewards(config.rewards, config.diversity_requires_correct,
                                                        config.grounding_margin)
    logger.info("rewards and weights: %s", config.rewards)

    # ---- multi-turn: one zoom environment per rollout, holding its row's image -----------------------------------
    environment = (
        partial(ZoomEnvironment, model_view(processor, family), config.max_images) if config.multi_turn else None
    )
    callbacks = [ZoomCollapseWatch(config.zoom_rate_floor, config.zoom_rate_patience)] if config.multi_turn else []
    if config.multi_turn:
        # TRL warns on every run that environment_factory is experimental; we use it on purpose, pinned to the TRL
        # minor version it is tested with (pyproject.toml), so the warning tells the user nothing to act on.
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    return GroundedGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=config,
        train_dataset=train_dataset,
        processing_class=processor,
        environment_factory=environment,
        callbacks=callbacks,
    )


def run_grpo(config: GroundedGRPOConfig, options: RunOptions | None = None) -> Path:
    """Train ``config.model`` with GRPO and save the policy (with its processor and a model card) to
    ``config.output_dir``.

    Args:
        config: the run's settings.
        options: what to do with an output folder that holds a run (``--resume``, ``--overwrite``); see
            :func:`grounded_rl.training.claim_output`.

    Returns:
        The output directory.

    Raises:
        ConfigError: a missing model, the output folder holds another run, or a setting is invalid.
        DataError: missing prompt data, or a checkpoint that cannot be restored.
    """
    options = options or RunOptions()
    check_source(config.model, "model", model=True)
    check_source(config.data, "data")
    if config.model is None:
        raise ConfigError("model is required (--model, or the config file)")
    with claimed_output(config, "grpo", options) as (out, settings, checkpoint):
        trainer = build_trainer(config)
        source = config.data or f"{config.task} ({config.data_dir or 'Hub'}, split {config.split or 'default'})"
        trainer.card = dict(
            name=out.name, path=config.output_dir, base=config.model, method="GRPO", multi_turn=config.multi_turn,
            datasets=[d for d in (config.data, config.data_dir) if d] or [source],
            settings={"task": config.task or config.data, **{k: settings.get(k) for k in (
                "learning_rate", "beta", "epsilon", "epsilon_high", "num_generations", "temperature", "top_p",
                "max_completion_length", "rewards", "max_images", "max_pixels", "freeze_vision", "seed")}},
        )
        facts = {"prompts": len(trainer.train_dataset), "resumed_from": checkpoint}
        if trainer.is_world_process_zero():
            trainer.run_record = write_run(out, "grpo", config, settings, **facts)
        trainer.train(resume_from_checkpoint=checkpoint)
        trainer.save_model(str(out))  # with the processor (our templates included): TRL saves its processing class
        if trainer.is_world_process_zero():
            trainer.create_model_card()
            write_run(out, "grpo", config, settings, **facts, finished=True, global_step=trainer.state.global_step,
                      log_history=trainer.state.log_history)
    return out
