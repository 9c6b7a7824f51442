"""Rewards of grounded GRPO, as plain TRL reward functions.

Each function takes the rollouts (``completions``) and the dataset columns of their prompts (``**kwargs``, one
value per rollout) and returns one float per rollout, or ``None`` where the reward does not apply (TRL then leaves
that rollout out of the component's mean). TRL weights and sums them, and logs each component's mean under
``rewards/<function name>/mean``, so every component is visible on its own.

Columns the rewards read (``grpo.prompt_rows`` writes them):

- ``task`` and ``task_options`` (a JSON object): the task spec whose official verifier scores the answers;
- ``answer_kind``, ``answer``, ``options``, ``target_boxes``: the ground truth (boxes ``[x1, y1, x2, y2]`` in the
  pixel frame of the original image);
- ``image_size`` ``[w, h]`` and ``model_size`` ``[w, h]`` (the processor's resized size) and ``frame`` (``model``
  or ``norm1000``): the image geometry the model's points are written in;
- ``mode``: ``single`` (one completion with grounded points inline) or ``multi`` (turns with zoom tool calls).

All model text is read with trace-forge's one parser (:func:`~trace_forge.grounding.parse_response`); rewards only
decide what a reported problem costs. The components, with ViGoRL's weights (arXiv 2505.23678, A5.2-A5.3):

============== ==================================================================== ============ ===========
name           1.0 (or bonus) when                                                  single-turn  multi-turn
============== ==================================================================== ============ ===========
format         strict grammar; single: ``<think>`` with >= 1 point then ``<answer>``    0.5          0.4
               and nothing else; multi: think -> (tool call -> observation -> think)*
               -> answer; point tasks must answer with an integer point
accuracy       the task's official verifier accepts the final answer                  0.5          0.6
zoom_diversity +0.2 per zoom point >= 10 px from every earlier one, at most 4 times;   --           0.4
               paid only for answered dialogs (and, by default, correct answers)
grounding      every point is an integer pair inside the image (logged, weight 0)     0.0          0.0
============== ==================================================================== ============ ===========

The multi-turn paper weight 0.4 multiplies ``format + zoom_diversity`` (its r_fmt = r_grammar + r_div).

Beyond the paper, ``step_grounding`` (:func:`get_step_grounding_reward`; not among the defaults, so weight 0 unless
a config lists it) is the share of the rollout's reasoning and zoom points that land on a target box
(:func:`~trace_forge.tasks.on_target`, with ``grounding_margin`` pixels): a process-level reward on where the model
looks, for tasks whose samples carry target boxes. ViGoRL found a distance-shaped *answer* reward worse than the
binary one (Table A9); this one scores the reasoning points instead, and leaves the answer to ``accuracy``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from trace_forge.grounding import Box, Frame, ImageGeometry, Parsed, Point, ProblemCode, parse_response
from trace_forge.tasks import AnswerKind, Sample, Task, TaskSpec, on_target_share, score_answer

__all__ = [
    "REWARDS",
    "DEFAULT_WEIGHTS",
    "RAW_TEXT",
    "Dialog",
    "Truth",
    "assistant_turns",
    "parse_dialog",
    "format_reward",
    "grounding_reward",
    "accuracy_reward",
    "get_zoom_diversity_reward",
    "zoom_diversity_reward",
    "get_step_grounding_reward",
    "build_rewards",
]

RewardFunc = Callable[..., list[float | None]]

# Key of an assistant message holding the turn's decoded tokens as generated (see :func:`assistant_turns`).
RAW_TEXT = "raw_text"

# Problems about where a point lies, judged by the grounding reward, not by the grammar.
_POINT_PROBLEMS = frozenset(
    {ProblemCode.FLOAT_COORDINATE, ProblemCode.NEGATIVE_COORDINATE, ProblemCode.POINT_OUTSIDE_IMAGE}
)


# ---------------------------------------------------------------------------------------------------------------
# Reading rollouts and ground truth
# ---------------------------------------------------------------------------------------------------------------


def assistant_turns(completion: str | Sequence[Mapping[str, Any]]) -> list[str] | None:
    """The assistant turns of a rollout as the model wrote them, or ``None`` when the messages do not alternate.

    A rollout is either a string or TRL's list of messages (``assistant``, then ``tool`` and ``assistant`` in
    turn). TRL's response parser rewrites an assistant turn: it moves ``<tool_call>`` blocks into ``tool_calls``
    and keeps one text segment as ``content``, dropping text before a call and reordering the rest, so a badly
    formed turn parses into a well-formed message. The grammar is therefore checked on the turn as generated,
    which :class:`~grounded_rl.grpo.GroundedGRPOTrainer` keeps next to each message under :data:`RAW_TEXT`. A
    message without it is read from its ``content``, unless it carries parsed ``tool_calls``: its text is lost.

    Raises:
        ValueError: an assistant message has ``tool_calls`` but no :data:`RAW_TEXT`.

    Example:
        >>> assistant_turns([
        ...     {"role": "assistant", "content": "<think> a </think>", "tool_calls": [{"type": "function"}],
        ...      RAW_TEXT: "blah <tool_call>{}</tool_call><think> a </think>"},
        ...     {"role": "tool", "content": "crop"},
        ...     {"role": "assistant", "content": "<think> b </think><answer> B </answer>"},
        ... ])
        ['blah <tool_call>{}</tool_call><think> a </think>', '<think> b </think><answer> B </answer>']
    """
    if isinstance(completion, str):
        return [completion]
    turns = []
    for i, message in enumerate(completion):
        if message.get("role") != ("assistant" if i % 2 == 0 else "tool"):
            return None
        if i % 2 == 0:
            turns.append(_generated_text(message, i))
    return turns or None


def _generated_text(message: Mapping[str, Any], index: int) -> str:
    if RAW_TEXT in message:
        return message[RAW_TEXT]
    if message.get("tool_calls"):
        raise ValueError(
            f"assistant message {index} has parsed tool_calls but no {RAW_TEXT!r}: the turn as generated is needed "
            "to check its format (GroundedGRPOTrainer attaches it; a plain GRPOTrainer does not)"
        )
    return _text(message.get("content"))


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return content or ""


@dataclass(frozen=True)
class Truth:
    """What the rewards know about one prompt: its sample (for the verifier), image geometry, frame and mode."""

    task: Task
    sample: Sample
    geometry: ImageGeometry
    frame: Frame
    multi_turn: bool


@cache
def _task(name: str, options: str) -> Task:
    return TaskSpec(name, json.loads(options)).build()


def _truths(n: int, kwargs: Mapping[str, Any]) -> list[Truth]:
    """One :class:`Truth` per rollout from the reward kwargs (dataset columns, one value per rollout)."""
    missing = [c for c in ("task", "image_size", "model_size", "frame") if c not in kwargs]
    if missing:
        raise KeyError(f"reward columns missing from the dataset: {missing} (see grounded_rl.grpo.prompt_rows)")
    truths = []
    for i in range(n):
        task = _task(kwargs["task"][i], _column(kwargs, "task_options", i, "{}"))
        kind = AnswerKind(kwargs["answer_kind"][i]) if "answer_kind" in kwargs else task.answer_kind
        boxes = [Box(*b) for b in _column(kwargs, "target_boxes", i, [])]
        sample = Sample(
            id=str(_column(kwargs, "question_id", i, "")),
            task=task.name,
            images=[],
            question="",
            answer_kind=kind,
            options=list(_column(kwargs, "options", i, [])),
            answer=_column(kwargs, "answer", i, None) or None,
            target_boxes=boxes,
        )
        (w, h), (mw, mh) = kwargs["image_size"][i], kwargs["model_size"][i]
        geometry = ImageGeometry(width=w, height=h, model_width=mw, model_height=mh)
        multi = _column(kwargs, "mode", i, "single") == "multi"
        truths.append(Truth(task, sample, geometry, Frame(kwargs["frame"][i]), multi))
    return truths


def _column(kwargs: Mapping[str, Any], name: str, i: int, default: Any) -> Any:
    value = kwargs[name][i] if name in kwargs else default
    return json.loads(value) if isinstance(value, str) and name in ("options", "target_boxes") else value


@dataclass(frozen=True)
class Dialog:
    """A parsed rollout: one :class:`~trace_forge.grounding.Parsed` per assistant turn.

    Attributes:
        turns: the parsed turns (one for single-turn); empty when the messages were not a dialog.
        grammar_ok: the whole rollout has exactly the expected form.
        final: the last turn when it gives the answer (and calls no tool), else ``None``: an unanswered rollout
            (e.g. stopped at the turn limit) has no final answer.
    """

    turns: list[Parsed]
    grammar_ok: bool
    final: Parsed | None

    @property
    def grounded_points(self) -> list[Point]:
        """The points the rollout reasons and zooms on (not its answer), in the model's frame, in order."""
        return [p for t in self.turns for p in t.points]

    @property
    def points(self) -> list[Point]:
        """Every point of the rollout (reasoning steps, zoom calls, answer point), in the model's frame."""
        answer = [self.final.answer_point] if self.final and self.final.answer_point else []
        return self.grounded_points + answer

    @property
    def zoom_points(self) -> list[Point]:
        """The points of well-formed zoom calls, in order."""
        return [c.point for t in self.turns for c in t.tool_calls if c.point is not None]


def parse_dialog(completion: str | Sequence[Mapping[str, Any]], truth: Truth, geometry: bool = False) -> Dialog:
    """Parse a rollout against the grammar of its mode (see the module table).

    Args:
        completion: the rollout (text or TRL messages).
        truth: its prompt's ground truth, which gives the mode, the frame and the geometry.
        geometry: also check that points lie inside the image (problems ``point_outside_image``).
    """
    texts = assistant_turns(completion)
    if texts is None:
        return Dialog([], False, None)
    expect = "turn" if truth.multi_turn else "single"
    kwargs = {"frame": truth.frame, "geometry": truth.geometry if geometry else None, "expect": expect}
    turns = [parse_response(t, **kwargs) for t in texts]
    last = turns[-1]
    # A multi-turn turn that also calls a tool does not end the dialog (TRL runs the call), so it is no answer.
    final = last if last.answer is not None and not (truth.multi_turn and last.tool_calls) else None
    if truth.multi_turn:
        zooms_then_answer = all(t.tool_calls and t.answer is None for t in turns[:-1]) and final is not None
        grammar_ok = zooms_then_answer and all(t.ok for t in turns)
    else:
        grammar_ok = len(turns) == 1 and last.ok
    return Dialog(turns, grammar_ok, final)


def _score(truth: Truth, final: Parsed | None) -> float:
    """The official verifier on the final answer (point answers converted from the model's frame to pixels)."""
    answer = final.answer if final is not None else None
    return score_answer(truth.task, truth.sample, answer, truth.geometry, truth.frame).score


# ---------------------------------------------------------------------------------------------------------------
# Reward functions
# ---------------------------------------------------------------------------------------------------------------


def format_reward(completions: list[Any], **kwargs: Any) -> list[float | None]:
    """1.0 when the rollout has exactly the grounded format of its mode, else 0.0.

    Single-turn: one ``<think>`` block naming at least one integer point, then one ``<answer>``, nothing outside
    (an end-of-turn token may follow). Multi-turn: every assistant turn is one ``<think>`` then a zoom call, except
    the last, which answers. Point tasks must answer with an integer point.

    Example:
        >>> cols = dict(task=["vstar"], options=[["red", "blue"]], answer=["red"], image_size=[[640, 480]],
        ...             model_size=[[644, 476]], frame=["model"])
        >>> format_reward(["<think> The cup (10, 20). </think>\\n<answer> red </answer>"], **cols)
        [1.0]
        >>> format_reward(["<think> The cup. </think>\\n<answer> red </answer>"], **cols)
        [0.0]
    """
    rewards: list[float | None] = []
    for completion, truth in zip(completions, _truths(len(completions), kwargs), strict=True):
        dialog = parse_dialog(completion, truth)
        point_ok = truth.sample.answer_kind is not AnswerKind.POINT or (
            dialog.final is not None and dialog.final.answer_point is not None
        )
        rewards.append(float(dialog.grammar_ok and point_ok))
    return rewards


def grounding_reward(completions: list[Any], **kwargs: Any) -> list[float | None]:
    """1.0 when every point of the rollout is an integer pair inside the image (in the model's frame), else 0.0.

    Reasoning points, zoom points and a point answer all count. A rollout naming no point gets ``None`` (not
    applicable), so the logged mean is the point-validity rate over rollouts that name points.

    Example:
        >>> cols = dict(task=["vstar"], options=[["red", "blue"]], answer=["red"], image_size=[[640, 480]],
        ...             model_size=[[644, 476]], frame=["model"])
        >>> grounding_reward(["<think> (10, 20) then (700, 20) </think><answer> red </answer>",
        ...                   "<think> (10, 20) </think><answer> red </answer>", "<answer> red </answer>"],
        ...                  **{k: v * 3 for k, v in cols.items()})
        [0.0, 1.0, None]
    """
    rewards: list[float | None] = []
    for completion, truth in zip(completions, _truths(len(completions), kwargs), strict=True):
        dialog = parse_dialog(completion, truth, geometry=True)
        if not dialog.points:
            rewards.append(None)
            continue
        bad = any(p.code in _POINT_PROBLEMS for t in dialog.turns for p in t.problems)
        rewards.append(float(not bad))
    return rewards


def accuracy_reward(completions: list[Any], **kwargs: Any) -> list[float | None]:
    """The task's official score of the final answer (``get_task(task).score``): 1.0 correct, 0.0 otherwise.

    The answer is read whatever the format (format has its own reward); a multi-turn rollout that never answers
    (e.g. stopped by the turn limit) scores 0. Point answers are converted from the model's frame to the pixel
    frame of the original image, where the target boxes are.

    Example:
        >>> cols = dict(task=["screenspot"] * 2, answer_kind=["point"] * 2, target_boxes=[[[100, 100, 200, 200]]] * 2,
        ...             image_size=[[1000, 1000]] * 2, model_size=[[500, 500]] * 2, frame=["model"] * 2)
        >>> accuracy_reward(["<answer> (75, 75) </answer>", "<answer> (150, 150) </answer>"], **cols)
        [1.0, 0.0]
    """
    truths = _truths(len(completions), kwargs)
    return [_score(truth, parse_dialog(c, truth).final) for c, truth in zip(completions, truths, strict=True)]


def get_zoom_diversity_reward(
    bonus: float = 0.2, max_bonuses: int = 4, min_distance: float = 10.0, requires_correct: bool = True
) -> RewardFunc:
    """Build the zoom-diversity reward of multi-turn ViGoRL (its r_div).

    A zoom point earns ``bonus`` when it lies on the image and at least ``min_distance`` pixels of the original
    image from every earlier zoom point (measured in the pixel frame, so the rule means the same for every model
    family: 10 units of Qwen3-VL's 0-1000 grid can be 20 px or more), at most ``max_bonuses`` times. Without it the paper's policy collapses to
    answering without zooming (Fig. A1). The bonus is paid only to rollouts that end with an answer, and with
    ``requires_correct`` (default) only to correct ones: ViGoRL paid it unconditionally, which rewards zoom spam.
    Single-turn rollouts get ``None``.

    Returns:
        A picklable reward function named ``zoom_diversity_reward``.

    Example:
        >>> reward = get_zoom_diversity_reward()
        >>> call = '<think> x </think><tool_call>{{"name": "zoom", "arguments": {{"point": [{}, 5]}}}}</tool_call>'
        >>> dialog = [{"role": "assistant", "content": call.format(5)}, {"role": "tool", "content": "crop"},
        ...           {"role": "assistant", "content": call.format(50)}, {"role": "tool", "content": "crop"},
        ...           {"role": "assistant", "content": "<think> y </think><answer> red </answer>"}]
        >>> cols = dict(task=["vstar"], options=[["red", "blue"]], answer=["red"], image_size=[[640, 480]],
        ...             model_size=[[644, 476]], frame=["model"], mode=["multi"])
        >>> [round(r, 6) for r in reward([dialog], **cols)]
        [0.4]
    """
    return _ZoomDiversity(bonus, max_bonuses, min_distance, requires_correct)


@dataclass(frozen=True)
class _ZoomDiversity:
    """A class, not a closure, so the reward pickles (TRL may send reward functions to other processes)."""

    bonus: float
    max_bonuses: int
    min_distance: float
    requires_correct: bool

    @property
    def __name__(self) -> str:  # TRL logs a reward under its callable's name
        return "zoom_diversity_reward"

    def __call__(self, completions: list[Any], **kwargs: Any) -> list[float | None]:
        rewards: list[float | None] = []
        for completion, truth in zip(completions, _truths(len(completions), kwargs), strict=True):
            if not truth.multi_turn:
                rewards.append(None)
                continue
            dialog = parse_dialog(completion, truth)
            if dialog.final is None or (self.requires_correct and _score(truth, dialog.final) < 1.0):
                rewards.append(0.0)
                continue
            seen: list[Point] = []  # in the pixel frame of the original image
            paid = 0
            for p in dialog.zoom_points:
                pixel = p.to(Frame.PIXEL, truth.geometry)
                on_image = truth.geometry.contains(p.x, p.y, p.frame)
                if on_image and all(pixel.distance(q) >= self.min_distance for q in seen):
                    paid += 1
                seen.append(pixel)
            rewards.append(self.bonus * min(paid, self.max_bonuses))
        return rewards


zoom_diversity_reward = get_zoom_diversity_reward()


def get_step_grounding_reward(margin: float = 0.0) -> RewardFunc:
    """Build the step-grounding reward: the share of the rollout's reasoning and zoom points that are on target.

    Each point is converted from the model's frame to the pixel frame of the original image, as stored points are,
    and tested against the prompt's target boxes with :func:`~trace_forge.tasks.on_target` (``margin`` pixels of
    slack). The answer is not counted: that is ``accuracy``'s. A rollout naming no point scores 0.0; a prompt
    without target boxes gets ``None`` (not applicable).

    Returns:
        A picklable reward function named ``step_grounding_reward``.

    Example:
        >>> reward = get_step_grounding_reward()
        >>> cols = dict(task=["vstar"] * 3, options=[["red", "blue"]] * 3, answer=["red"] * 3,
        ...             target_boxes=[[[0, 0, 100, 100]]] * 2 + [[]], image_size=[[640, 480]] * 3,
        ...             model_size=[[640, 480]] * 3, frame=["model"] * 3)
        >>> reward(["<think> The cup (10, 20), the mug (300, 20). </think><answer> red </answer>",
        ...         "<answer> red </answer>", "<think> (10, 20) </think><answer> red </answer>"], **cols)
        [0.5, 0.0, None]
    """
    return _StepGrounding(margin)


@dataclass(frozen=True)
class _StepGrounding:
    """A class, not a closure, so the reward pickles."""

    margin: float

    @property
    def __name__(self) -> str:
        return "step_grounding_reward"

    def __call__(self, completions: list[Any], **kwargs: Any) -> list[float | None]:
        rewards: list[float | None] = []
        for completion, truth in zip(completions, _truths(len(completions), kwargs), strict=True):
            boxes = truth.sample.target_boxes
            if not boxes:
                rewards.append(None)
                continue
            points = [p.to(Frame.PIXEL, truth.geometry) for p in parse_dialog(completion, truth).grounded_points]
            share = on_target_share(points, boxes, self.margin)
            rewards.append(0.0 if share is None else share)
        return rewards


# Name in configs -> factory of the reward function (factories take the config's reward options).
REWARDS: dict[str, Callable[..., RewardFunc]] = {
    "format": lambda **_: format_reward,
    "grounding": lambda **_: grounding_reward,
    "accuracy": lambda **_: accuracy_reward,
    "zoom_diversity": lambda diversity_requires_correct=True, **_: get_zoom_diversity_reward(
        requires_correct=diversity_requires_correct
    ),
    "step_grounding": lambda grounding_margin=0.0, **_: get_step_grounding_reward(grounding_margin),
}

# ViGoRL's weights: 0.5/0.5 single-turn; 0.6 accuracy + 0.4 (grammar + diversity) multi-turn. Grounding is logged.
DEFAULT_WEIGHTS: dict[str, dict[str, float]] = {
    "single": {"format": 0.5, "accuracy": 0.5, "grounding": 0.0},
    "multi": {"format": 0.4, "zoom_diversity": 0.4, "accuracy": 0.6, "grounding": 0.0},
}


def build_rewards(
    weights: Mapping[str, float], diversity_requires_correct: bool = True, grounding_margin: float = 0.0
) -> tuple[list[RewardFunc], list[float]]:
    """Reward functions and their weights, by registry name, for ``GRPOTrainer(reward_funcs=..., reward_weights=...)``.

    Args:
        weights: ``{name: weight}``; names from :data:`REWARDS`. A weight of 0 still computes and logs the reward.
        diversity_requires_correct: pay the zoom-diversity bonus only to correct answers.
        grounding_margin: pixels of slack of the step-grounding reward's on-target test.

    Raises:
        KeyError: an unknown reward name (the message lists the known ones).

    Example:
        >>> funcs, w = build_rewards(DEFAULT_WEIGHTS["single"])
        >>> [f.__name__ for f in funcs], w
        (['format_reward', 'accuracy_reward', 'grounding_reward'], [0.5, 0.5, 0.0])
    """
    unknown = sorted(set(weights) - set(REWARDS))
    if unknown:
        raise KeyError(f"unknown rewards {unknown}; known: {sorted(REWARDS)}")
    options = {"diversity_requires_correct": diversity_requires_correct, "grounding_margin": grounding_margin}
    funcs = [REWARDS[name](**options) for name in weights]
    return funcs, [float(w) for w in weights.values()]
