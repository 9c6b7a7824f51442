"""One question, one picture: run a model on an image and draw its grounded reasoning.

    grounded-rl demo --model runs/vigorl-3b --image street.jpg --query "What colour is the umbrella?" \\
        --task-kind text --multi-turn --out umbrella.png

The model is asked exactly as in evaluation (:class:`~grounded_rl.eval.Student`: the student prompt, the same zoom
tool and forced answer); the trajectory is drawn by trace-forge's renderer: numbered points with the step texts
and, for a zoom dialog, the crops in order.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, fields
from pathlib import Path

from PIL import Image

from grounded_rl.eval import Dialog, EvalConfig, Student, make_client, view_of
from trace_forge.errors import ConfigError, DataError, image_error
from trace_forge.show import asked, render_trace
from trace_forge.tasks import AnswerKind, Sample

__all__ = ["DemoConfig", "no_answer", "run_demo"]

# The served model's coordinates: the same option, wording and default as in evaluation.
_EVAL_FRAME = next(f for f in fields(EvalConfig) if f.name == "frame")

# The zoom crop geometry of each answer kind: GUI grounding (points) crops small with a dot, others as V*.
_ZOOM_TASK = {AnswerKind.POINT: "screenspot-pro", AnswerKind.OPTION: "vstar", AnswerKind.TEXT: "vstar"}


@dataclass
class DemoConfig:
    """Settings of ``grounded-rl demo``."""

    model: str = field(metadata={"help": "Checkpoint directory or Hub id (hf), or the served model name."})
    image: str = field(metadata={"help": "The image to ask about."})
    query: str = field(metadata={"help": "The question or instruction."})
    out: str = field(metadata={"help": "Where to write the picture (PNG)."})
    task_kind: AnswerKind = field(
        default=AnswerKind.TEXT, metadata={"help": "How to answer: option (with --option), point or text."}
    )
    options: list[str] = field(default_factory=list, metadata={"help": "The choices of an option question."})
    multi_turn: bool = field(default=False, metadata={"help": "Let the model zoom (needs a multi-turn model)."})
    temperature: float = field(default=0.5, metadata={"help": "Sampling temperature."})
    max_tokens: int = field(default=1024, metadata={"help": "Tokens per generated turn."})
    seed: int = field(default=0, metadata={"help": "Seed of the request."})
    backend: str = field(default="hf", metadata={"help": "hf or vllm (local checkpoint), openai or anthropic."})
    base_urls: list[str] = field(default_factory=list, metadata={"help": "Server endpoints (openai/anthropic)."})
    frame: str = field(default=_EVAL_FRAME.default, metadata=_EVAL_FRAME.metadata)

    def __post_init__(self) -> None:
        self.task_kind = AnswerKind(self.task_kind)
        if self.task_kind is AnswerKind.OPTION and len(self.options) < 2:
            raise ConfigError("--task-kind option needs at least two --choice values")
        if self.task_kind is not AnswerKind.OPTION and self.options:
            raise ConfigError(f"--choice is for --task-kind option, not {self.task_kind.value}")

    def eval_config(self) -> EvalConfig:
        """The evaluation settings the question is asked under (one sample, the eval image budget)."""
        return EvalConfig(task=_ZOOM_TASK[self.task_kind], model=self.model, multi_turn=self.multi_turn,
                          temperature=self.temperature, max_tokens=self.max_tokens, seed=self.seed,
                          backend=self.backend, base_urls=list(self.base_urls), frame=self.frame)


def no_answer(dialog: Dialog) -> str:
    """What stands for a missing answer, saying why there is none."""
    if dialog.error is not None:
        return f"(no answer: the request failed: {dialog.error.kind}: {dialog.error})"
    if not dialog.turns:
        return "(no answer: the model replied nothing)"
    last = dialog.turns[-1]
    if last.finish_reason == "length":
        return "(no answer: the reply reached the token limit, --max-tokens, before an <answer>)"
    problems = "; ".join(p.detail for p in last.parsed.problems[:3])
    return "(no answer: the reply has no well-formed <answer>" + (f": {problems})" if problems else ")")


def run_demo(config: DemoConfig) -> tuple[Dialog, Path]:
    """Ask the model ``config.query`` about ``config.image`` and draw the trajectory to ``config.out``.

    Returns:
        The dialog (turns, crops; ``error`` when a request failed for good, see
        :func:`~grounded_rl.eval.fails_sample`) and the path of the picture.

    Raises:
        DataError: the image cannot be read.
        ConfigError: bad settings.
    """
    try:
        with Image.open(config.image) as im:
            image = im.convert("RGB")
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image: {image_error(e)}", path=config.image) from e
    sample = Sample("demo", "demo", [image], config.query, config.task_kind, options=list(config.options))
    eval_config = config.eval_config()
    task = eval_config.task_spec.build()
    student = Student(make_client(eval_config), view_of(eval_config), eval_config, task)

    async def ask() -> Dialog:
        try:
            if config.multi_turn:
                return await student.multi_turn(sample, image, config.seed)
            (dialog,) = await student.single_turn(sample, image, 1, config.seed)
            return dialog
        finally:
            await student.client.aclose()

    dialog = asyncio.run(ask())
    mode = "multi-turn" if config.multi_turn else "single-turn"
    title = f"{Path(config.model).name} ({mode})"
    picture = render_trace(image, dialog.pixel_steps(), dialog.pixel_answer() or no_answer(dialog),
                           crops=dialog.crops or None, title=title, question=asked(sample),
                           answer_point=dialog.pixel_answer_point())
    out = Path(config.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    return dialog, out
