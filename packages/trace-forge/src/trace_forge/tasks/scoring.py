"""Official verifiers, and the one function every stage scores a model's answer with.

:func:`score_answer` is what the search (teacher answers), the GRPO rewards and evaluation call: the text inside
``<answer>``, the sample, and the frame the model saw the image in, to a :class:`Verdict`. Point answers are read as
the official grounding scripts read them (:func:`official_point`) and mapped to the sample's pixels as they map
them (``x * W / w``, :meth:`~trace_forge.grounding.ImageGeometry.scale`), then judged by the task.

The verifiers below it return 0.0 or 1.0 and never raises on a bad *prediction* (a malformed answer is simply wrong), but
does raise ``ValueError`` on bad *ground truth*, because a silently unwinnable question would bias a benchmark.

The rules follow the benchmarks' official scripts (``shared/reference/benchmarks.md``), except where ViGoRL's judges
are known to be wrong: its ``string_match`` counts the ground truth as a substring of the prediction (so "not red"
matches "red") and its RL variant does not lower-case the ground truth. Neither is reproduced here.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from trace_forge.grounding import Box, Frame, ImageGeometry, Point
from trace_forge.tasks.sample import AnswerKind, Sample

if TYPE_CHECKING:
    from trace_forge.tasks.base import Task

__all__ = [
    "Verdict",
    "score_answer",
    "choose_option",
    "score_choice",
    "score_option",
    "score_point",
    "score_text",
    "official_point",
    "on_target",
    "on_target_share",
]

# "Answer: B", "The final answer is (B)", "Option B" -> "B" / "(B)": wrappers models add around a choice.
_LEAD_IN = re.compile(r"^(?:the\s+)?(?:final\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*", re.IGNORECASE)
# A choice letter, bare or as "(B)", "B.", "B)", "B:", then whitespace and optionally the option's text. The
# lookahead keeps a word such as "Blue" from reading as the letter B.
_LETTER = re.compile(r"^(?:\(([A-Za-z])\)\.?|([A-Za-z])[.):]?)(?=\s|$)\s*(.*)$", re.DOTALL)
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")


def _norm_option(text: str) -> str:
    """Lower-case, collapse whitespace, drop surrounding quotes and a trailing period."""
    text = " ".join(text.split()).lower()
    return text.strip("\"'`").rstrip(".").strip()


def choose_option(pred: str | None, options: list[str]) -> int | None:
    """Index of the option a prediction selects, or None when it selects none or is ambiguous.

    Accepted, in this order (case-insensitive, surrounding whitespace and a trailing period ignored):

    1. the full text of an option ("red");
    2. after an optional lead-in ("Answer:", "The answer is", "Option"), the full text of an option, or a letter
       within range: "B", "(B)", "B.", "B)", "B:", optionally followed by text ("B. blue", "(B) blue"), which must
       then be that same option's text.

    Anything else selects nothing: extra words ("red car" for "red"), several letters ("A and B"), a letter whose
    trailing text names a different option ("A. blue"), or a letter past the last option.

    Args:
        pred: the model's final answer.
        options: the choices in the order shown to the model (letters A, B, ... follow this order).

    Returns:
        The index into ``options`` (the first one when two options have the same text), or None.

    Example:
        >>> choose_option("(B) blue.", ["red", "blue"])
        1
        >>> choose_option("not red", ["red", "blue"]) is None
        True
    """
    if not pred or not pred.strip():
        return None
    norms = [_norm_option(o) for o in options]
    for text in (pred, _LEAD_IN.sub("", pred.strip(), count=1)):
        wanted = _norm_option(text)
        if wanted and wanted in norms:
            return norms.index(wanted)
        index = _letter_choice(text.strip(), norms)
        if index is not None:
            return index
    return None


def _letter_choice(text: str, norms: list[str]) -> int | None:
    """Resolve "B", "(B)", "B." or "B. text" to an option index; any trailing text must agree with the option."""
    match = _LETTER.match(text)
    if match is None:
        return None
    paren_letter, plain_letter, rest = match.groups()
    letter = paren_letter or plain_letter
    index = ord(letter.upper()) - ord("A")
    if index >= len(norms):
        return None
    rest = _norm_option(rest)
    if rest and rest != norms[index]:
        return None
    return index


def score_choice(index: int | None, options: list[str], answer: str) -> float:
    """1.0 iff option ``index`` is the correct one (``answer`` is its text), else 0.0; None (no choice) scores 0.

    Raises:
        ValueError: when ``options`` is empty or ``answer`` is not one of them.
    """
    norms = [_norm_option(o) for o in options]
    if _norm_option(answer) not in norms:
        raise ValueError(f"answer {answer!r} is not one of the options {options!r}")
    return float(index is not None and norms[index] == _norm_option(answer))


def score_option(pred: str | None, options: list[str], answer: str) -> float:
    """1.0 iff ``pred`` selects the correct option (rules in :func:`choose_option`), else 0.0.

    The comparison is exact after normalisation, never by substring: "not red" does not select "red".

    Args:
        pred: the model's final answer (None or empty scores 0).
        options: the choices in the order shown to the model.
        answer: the correct option's text.

    Raises:
        ValueError: when ``options`` is empty or ``answer`` is not one of them.

    Example:
        >>> score_option("Answer: B", ["left", "right"], "right")
        1.0
        >>> score_option("A and B", ["left", "right"], "right")
        0.0
    """
    return score_choice(choose_option(pred, options), options, answer)


def official_point(text: str) -> tuple[float, float] | None:
    """Read a point the way the official ScreenSpot scripts do: every number in the text, 2 -> a point, 4 -> the
    centre of the box ``(x1, y1, x2, y2)``; any other count -> None.

    Floats are accepted here on purpose: the benchmark scripts accept them, and rejecting them is the job of the
    format reward, not of accuracy.

    Example:
        >>> official_point("(12, 34)")
        (12.0, 34.0)
        >>> official_point("[10, 20, 30, 40]")
        (20.0, 30.0)
        >>> official_point("left of the icon") is None
        True
    """
    numbers = [float(n) for n in _NUMBER.findall(text)]
    if len(numbers) == 2:
        return numbers[0], numbers[1]
    if len(numbers) == 4:
        x1, y1, x2, y2 = numbers
        return (x1 + x2) / 2, (y1 + y2) / 2
    return None


def score_point(pred: str | Point | None, boxes: list[Box]) -> float:
    """1.0 iff the predicted point lies in any target box, border included (ScreenSpot / ViGoRL rule).

    A string is read with :func:`official_point` and taken to be in the frame of ``boxes``, so callers must pass the
    boxes in the frame the model writes coordinates in. A :class:`Point` keeps its own frame and must match the
    boxes' (``Box.contains`` raises otherwise).

    Args:
        pred: the model's final answer, or a point already parsed; None or unparseable text scores 0.
        boxes: the target regions, all in one frame.

    Raises:
        ValueError: when ``boxes`` is empty, or a Point's frame differs from the boxes'.

    Example:
        >>> score_point("(30, 40)", [Box(10, 20, 30, 40)])
        1.0
        >>> score_point("[0, 0, 20, 20]", [Box(10, 20, 30, 40)])  # a box answer counts as its centre (10, 10)
        0.0
    """
    if not boxes:
        raise ValueError("score_point needs at least one target box")
    if pred is None:
        return 0.0
    if isinstance(pred, str):
        xy = official_point(pred)
        if xy is None:
            return 0.0
        pred = Point(xy[0], xy[1], boxes[0].frame)
    return float(any(box.contains(pred) for box in boxes))


def on_target(point: Point, boxes: Sequence[Box], margin: float = 0.0) -> bool:
    """Whether a grounded point lands on its evidence: inside one of the target boxes grown by ``margin`` on every
    side, border included. The one "on target" test of grounding precision: search statistics, ``show``,
    ``linearize --min-grounding``, evaluation and the step-grounding reward all call it.

    Points and boxes must be in one frame; every caller passes the pixel frame of the sample canvas (points
    converted as they are stored), so ``margin`` is in pixels of the original image, whatever model wrote the point.

    Raises:
        ValueError: no boxes (grounding precision does not apply: callers report that instead of a 0), a negative
            margin, or a point in another frame than the boxes.

    Example:
        >>> box = Box(10, 20, 30, 40)
        >>> on_target(Point(30, 40), [box]), on_target(Point(33, 40), [box]), on_target(Point(33, 40), [box], 3)
        (True, False, True)
    """
    if not boxes:
        raise ValueError("on_target needs at least one target box")
    if margin < 0:
        raise ValueError(f"the grounding margin must be >= 0 pixels, got {margin}")
    return any(Box(b.x1 - margin, b.y1 - margin, b.x2 + margin, b.y2 + margin, b.frame).contains(point)
               for b in boxes)


def on_target_share(points: Sequence[Point], boxes: Sequence[Box], margin: float = 0.0) -> float | None:
    """The share of ``points`` that are :func:`on_target`; None where it does not apply (no boxes, or no point).

    Example:
        >>> on_target_share([Point(15, 25), Point(90, 90)], [Box(10, 20, 30, 40)])
        0.5
        >>> on_target_share([Point(15, 25)], []) is None
        True
    """
    if not boxes or not points:
        return None
    return sum(on_target(p, boxes, margin) for p in points) / len(points)


_PUNCT_AND_SPACE = string.punctuation + string.whitespace


def _norm_text(text: str) -> str:
    return " ".join(text.split()).lower().strip(_PUNCT_AND_SPACE)


def score_text(pred: str | None, answer: str) -> float:
    """1.0 iff ``pred`` equals ``answer`` after normalisation: lower-case, whitespace collapsed, surrounding
    punctuation stripped. Inner punctuation is kept ("3.5" differs from "35"), and there is no substring credit.

    Raises:
        ValueError: when ``answer`` normalises to the empty string.

    Example:
        >>> score_text("  The  Eiffel Tower! ", "the eiffel tower")
        1.0
        >>> score_text("not the eiffel tower", "the eiffel tower")
        0.0
    """
    gold = _norm_text(answer)
    if not gold:
        raise ValueError(f"reference answer {answer!r} is empty after normalisation")
    return float(pred is not None and _norm_text(pred) == gold)


@dataclass(frozen=True)
class Verdict:
    """How a model's answer scored, and what kept it from scoring.

    Attributes:
        score: the task's official score (0.0 or 1.0 for every registered task).
        problems: why an answer could not be judged as meant: ``no_answer`` (none, or blank), ``no_point`` (a point
            task whose answer names no point), ``point_outside_image``, ``no_option`` (an option task whose
            answer selects none). An answer without problems may still be wrong.
    """

    score: float
    problems: tuple[str, ...] = ()


def score_answer(
    task: Task, sample: Sample, answer: str | None, geometry: ImageGeometry, frame: Frame | str
) -> Verdict:
    """Score a model's final answer: the one scoring path of search, rewards and evaluation.

    Args:
        task: the sample's task (its verifier).
        sample: the question.
        answer: the text inside ``<answer>`` (None when the model gave none).
        geometry: the sample canvas as the model saw it (its ``model`` frame is the image the model was shown).
        frame: the frame the model writes points in.

    Example:
        >>> from trace_forge.tasks import get_task
        >>> s = Sample("q", "screenspot", [], "Click OK", AnswerKind.POINT, target_boxes=[Box(99, 0, 120, 10)])
        >>> g = ImageGeometry(1000, 100, 500, 50)  # the model saw the screen at half size
        >>> score_answer(get_task("screenspot"), s, "(50, 2)", g, "model")  # 50 * 2 = 100: inside, officially
        Verdict(score=1.0, problems=())
    """
    if answer is None or not answer.strip():
        return Verdict(0.0, ("no_answer",))
    if sample.answer_kind is AnswerKind.POINT:
        xy = official_point(answer)
        if xy is None:
            return Verdict(0.0, ("no_point",))
        frame = Frame(frame)
        inside = geometry.contains(*xy, frame)
        point = Point(*geometry.scale(*xy, frame, Frame.PIXEL))
        return Verdict(task.score(sample, point), () if inside else ("point_outside_image",))
    if sample.answer_kind is AnswerKind.OPTION and task.choose(sample, answer) is None:
        return Verdict(task.score(sample, answer), ("no_option",))
    return Verdict(task.score(sample, answer))
