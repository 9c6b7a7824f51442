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
``entropy``, to the console and TensorBoard (``OUT/runs``).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, Features, Image, List, Value
from trl import GRPOConfig, GRPOTrainer

from grounded_rl.data import image_token_count, model_view, set_max_pixels
from grounded_rl.env import DEFAULT_MAX_IMAGES, ZoomEnvironment
from grounded_rl.models import Family, family_of, freeze_vision_tower, load_model_and_processor
from grounded_rl.rewards import DEFAULT_WEIGHTS, RAW_TEXT, build_rewards
from trace_forge.dataset import TraceRow, load_traces
from trace_forge.errors import ConfigError
from trace_forge.grounding import Frame, Resize
from trace_forge.tasks import AnswerKind, Sample, TaskSpec
from trace_forge.tasks.prompts import NORM1000_HINT, prompts_for

__all__ = [
    "GroundedGRPOConfig",
    "GroundedGRPOTrainer",
    "generated_turns",
    "prompt_rows",
    "load_prompts",
    "build_trainer",
    "run_grpo",
    "RUN_FILE",
]

logger = logging.getLogger(__name__)

RUN_FILE = "grpo_run.json"  # resolved config, versions and git commit, written next to the model

# Columns of a prompt dataset; Features pinned so empty lists and None answers keep their types.
PROMPT_FEATURES = Features(
    {
        "prompt": List({"role": Value("string"), "content": Value("string")}),
        "image": Image(mode="RGB"),
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
class GroundedGRPOConfig(GRPOConfig):
    """[`~trl.GRPOConfig`] with ViGoRL's GRPO recipe (arXiv 2505.23678, Table A2 single-turn, A5.3 multi-turn).

    Parameters that control the data:
        model, task, data_dir, data, split, limit: where the policy and the prompts come from.

    Parameters that control the method:
        multi_turn, max_images, rewards, diversity_requires_correct, grounding_margin, freeze_vision, max_pixels,
        max_prompt_length.

    Changed defaults (paper values): ``learning_rate=1e-6``, ``beta=0.01``, ``epsilon=0.2``,
    ``epsilon_high=0.28``, ``temperature=1.0``, ``top_p=0.99``, ``max_completion_length=2048``,
    ``weight_decay=0.01``, ``warmup_steps=0.05`` (a ratio), ``mask_truncated_completions=True``,
    ``logging_steps=1``, ``report_to=["tensorboard"]``. Mode-dependent, resolved in ``__post_init__`` when unset:
    ``num_generations`` 5 (8 multi-turn), ``max_grad_norm`` 1.0 (0.2 multi-turn), ``per_device_train_batch_size``
    = ``num_generations`` (one question's group per device step), ``max_tool_calling_iterations`` =
    ``max_images - 1`` and ``rewards`` = :data:`~grounded_rl.rewards.DEFAULT_WEIGHTS` of the mode.
    """

    # --- data ---
    model: str | None = field(default=None, metadata={"help": "Policy checkpoint (usually the SFT output)."})
    task: str | None = field(default=None, metadata={"help": "trace-forge task whose samples become prompts."})
    task_options: dict[str, Any] | None = field(
        default=None, metadata={"help": "Options of the task (e.g. the column map of 'generic')."}
    )
    data_dir: str | None = field(default=None, metadata={"help": "The task's data folder (official layout)."})
    data: str | None = field(
        default=None, metadata={"help": "Instead of a task: a trace-forge dataset (DIR with hf/, or Hub id)."}
    )
    split: str | None = field(default=None, metadata={"help": "Split to train on; the task's default when unset."})
    limit: int | None = field(default=None, metadata={"help": "Use only the first N questions."})
    # --- method ---
    multi_turn: bool = field(default=False, metadata={"help": "Zoom-tool dialogs instead of one completion."})
    max_images: int = field(
        default=DEFAULT_MAX_IMAGES,
        metadata={"help": "Images per multi-turn dialog, original included (ViGoRL: 5); past it: over-turn."},
    )
    rewards: dict[str, float] | None = field(
        default=None, metadata={"help": "{reward name: weight}; ViGoRL's weights of the mode when unset."}
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
    warmup_steps: float = field(default=0.05, metadata={"help": "Warmup; a float < 1 is a ratio (Table A2: 0.05)."})
    mask_truncated_completions: bool = field(
        default=True, metadata={"help": "Mask rollouts that end without EOS from the loss (A5.3)."}
    )
    logging_steps: float = field(default=1, metadata={"help": "Log every N steps."})
    report_to: str | list[str] | None = field(default_factory=lambda: ["tensorboard"], metadata={"help": "Loggers."})
    num_generations: int | None = field(default=None, metadata={"help": "Group size: 5, multi-turn 8 (Table A2)."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Gradient clip: 1.0, multi-turn 0.2."})
    per_device_train_batch_size: int | None = field(
        default=None, metadata={"help": "Rollouts per device step; num_generations when unset."}
    )

    def __post_init__(self) -> None:
        if (self.task is None) == (self.data is None):
            raise ConfigError("give exactly one of task (with data_dir) and data")
        if self.max_images < 1:
            raise ConfigError(f"max_images={self.max_images}: need >= 1 (the original image)")
        if self.grounding_margin < 0:
            raise ConfigError(f"grounding_margin={self.grounding_margin}: need >= 0 pixels")
        mode = "multi" if self.multi_turn else "single"
        self.num_generations = self.num_generations or (8 if self.multi_turn else 5)
        self.max_grad_norm = self.max_grad_norm if self.max_grad_norm is not None else (0.2 if self.multi_turn else 1.0)
        self.per_device_train_batch_size = self.per_device_train_batch_size or self.num_generations
        if self.multi_turn and self.max_tool_calling_iterations is None:
            self.max_tool_calling_iterations = self.max_images - 1
        self.rewards = dict(self.rewards or DEFAULT_WEIGHTS[mode])
        super().__post_init__()

    @property
    def mode(self) -> str:
        return "multi" if self.multi_turn else "single"


class GroundedGRPOTrainer(GRPOTrainer):
    """GRPOTrainer plus over-turn masking for multi-turn zoom dialogs."""

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


def prompt_rows(
    samples: list[Sample], task: TaskSpec, resize: Resize, family: Family, multi_turn: bool
) -> dict[str, list[Any]]:
    """Prompt rows (columns of :data:`PROMPT_FEATURES`) for ``samples`` of ``task``.

    Args:
        samples: task samples; their canvas is the image.
        task: their task and its options (written to every row for the rewards and the zoom tool).
        resize: the processor's resize bounds (the ``model_size`` column, which defines the ``model`` frame).
        family: the policy's family: its frame, and the 0-1000 coordinate hint for Qwen3-VL.
        multi_turn: student system prompt and ``mode`` of the zoom dialogs.
    """
    columns: dict[str, list[Any]] = {name: [] for name in PROMPT_FEATURES}
    options = json.dumps(dict(task.options), sort_keys=True)
    for s in samples:
        canvas = s.canvas()
        question = prompts_for(s.answer_kind).question_text(s)
        columns["prompt"].append(
            [
                {"role": "system", "content": _system(s.answer_kind, multi_turn, family)},
                {"role": "user", "content": question},
            ]
        )
        columns["image"].append(canvas)
        columns["task"].append(task.name)
        columns["task_options"].append(options)
        columns["question_id"].append(s.id)
        columns["answer_kind"].append(s.answer_kind.value)
        columns["answer"].append(s.answer)
        columns["options"].append(list(s.options))
        columns["target_boxes"].append([b.to_list() for b in s.target_boxes])
        columns["image_size"].append(list(canvas.size))
        columns["model_size"].append(list(resize.model_size(*canvas.size)))
        columns["frame"].append(family.frame.value)
        columns["mode"].append("multi" if multi_turn else "single")
    return columns


def _questions_of_traces(source: str, split: str) -> tuple[TaskSpec, list[Sample]]:
    """The questions of a trace dataset, one sample per question with its canvas, read from the rows' columns."""
    traces = load_traces(source, split)
    first: dict[str, int] = {}
    for i, qid in enumerate(traces["question_id"]):
        first.setdefault(qid, i)
    rows = [TraceRow.from_row(traces[i], where=source) for i in first.values()]
    specs = {row.task.key for row in rows}
    if len(specs) != 1:
        raise ConfigError(f"{source}: the dataset mixes tasks {sorted(specs)}; train GRPO on one task at a time")
    samples = [replace(row.sample, images=[row.images[0]]) for row in rows]  # decoded by datasets
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
    dataset = Dataset.from_dict(columns, features=PROMPT_FEATURES)
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
        dataset = dataset.select(keep)
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
    dtype = torch.bfloat16 if config.bf16 else torch.float32
    model, processor = load_model_and_processor(config.model, dtype=dtype)
    processor.tokenizer.padding_side = "left"  # TRL generates from left-padded prompts
    if config.max_pixels is not None:  # before anything reads the resize: it defines the model frame
        set_max_pixels(processor, config.max_pixels)
    family = family_of(model.config)
    if config.freeze_vision:
        logger.info("froze %d vision-tower parameters", freeze_vision_tower(model))

    # ---- prompts and rewards ------------------------------------------------------------------------------------
    train_dataset = load_prompts(config, processor, family)
    reward_funcs, config.reward_weights = build_rewards(config.rewards, config.diversity_requires_correct,
                                                        config.grounding_margin)
    logger.info("rewards and weights: %s", config.rewards)

    # ---- multi-turn: one zoom environment per rollout, holding its row's image -----------------------------------
    environment = (
        partial(ZoomEnvironment, model_view(processor, family), config.max_images) if config.multi_turn else None
    )
    return GroundedGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=config,
        train_dataset=train_dataset,
        processing_class=processor,
        environment_factory=environment,
    )


def run_grpo(config: GroundedGRPOConfig) -> Path:
    """Train ``config.model`` with GRPO and save the policy (with its processor) to ``config.output_dir``.

    Resumes from the last ``checkpoint-*`` in ``output_dir`` when there is one. Trainer errors propagate.

    Returns:
        The output directory.
    """
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(config)
    _write_run_file(out, config)
    trainer.train(resume_from_checkpoint=get_last_checkpoint(str(out)))
    trainer.save_model(str(out))  # with the processor (our templates included): TRL saves its processing class
    return out


def _write_run_file(out: Path, config: GroundedGRPOConfig) -> None:
    """Record the resolved config, package versions and git commit next to the model."""
    import grounded_rl
    import trace_forge

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    info = {
        "config": json.loads(config.to_json_string()),
        "versions": {
            "grounded_rl": grounded_rl.__version__,
            "trace_forge": trace_forge.__version__,
            "python": sys.version.split()[0],
        },
        "git_commit": commit,
    }
    (out / RUN_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")
