"""The grounded text format: render steps, answers and zoom calls as model text, and parse model text back.

Every reasoning step names its image point inline as an integer literal ``(x, y)`` (the ViGoRL convention).
Single-turn responses are one ``<think>`` block then one ``<answer>`` block; teacher responses are one step or an
answer; a multi-turn assistant turn is a ``<think>`` then either a Hermes-style ``<tool_call>`` (the form Qwen
chat templates already know) asking to zoom on a point, or an ``<answer>``.

:func:`parse_response` is total: it never raises on text. It extracts whatever it can (thinking, steps, answer,
tool calls) and lists every deviation from the expected form as a :class:`Problem`, so rewards, the search and
evaluation all read model output through this one parser and decide for themselves what a problem costs.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from trace_forge.grounding.frames import Frame, ImageGeometry
from trace_forge.grounding.steps import LITERAL_RE, NUMBER, Point, Step, Trajectory, format_point, point_xy

__all__ = [
    "DEFAULT_CONNECTOR",
    "TOOL_RESPONSE",
    "ZOOM_TOOL_NAME",
    "ZOOM_TOOL_SPEC",
    "Expect",
    "Parsed",
    "Problem",
    "ProblemCode",
    "ToolCall",
    "parse_response",
    "render_answer",
    "render_answer_turn",
    "render_backtracking",
    "render_single_turn",
    "render_step",
    "render_zoom_turn",
]

DEFAULT_CONNECTOR = "Wait, this seems off. Let's try something else."
# What wraps a tool's reply in the user turn that carries it (Qwen's convention, which our chat templates render
# for a "tool" message): a dataset or an API request that has no tool role writes these parts around the reply,
# and the model reads the same tokens it reads in GRPO's tool loop.
TOOL_RESPONSE = ("<tool_response>\n", "\n</tool_response>")
ZOOM_TOOL_NAME = "zoom"
# OpenAI "function" tool format, which chat templates (Qwen's included) accept through ``tools=[...]``.
ZOOM_TOOL_SPEC: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": ZOOM_TOOL_NAME,
        "description": "Zoom in on a point of the image and receive a close-up crop centred on it.",
        "parameters": {
            "type": "object",
            "properties": {
                "point": {
                    "type": "array",
                    "items": {"type": "integer"},
                    "minItems": 2,
                    "maxItems": 2,
                    "description": "The point to zoom on, as [x, y] in the image coordinates used in the text.",
                }
            },
            "required": ["point"],
            "additionalProperties": False,
        },
    },
}

Expect = Literal["single", "step", "turn"]
_EXPECTS = ("single", "step", "turn")

_THINK, _ANSWER, _TOOL_CALL = "think", "answer", "tool_call"
# Whitespace inside the brackets is tolerated; case is not, because models emit exactly these lowercase tags.
_TAG_RE = re.compile(r"<\s*(/?)\s*(think|answer|tool_call)\s*>")
_ANSWER_POINT_RE = re.compile(rf"[(\[]?\s*({NUMBER})\s*,\s*({NUMBER})\s*[)\]]?\s*\.?", re.ASCII)
# One character each, not runs: a run pattern rescans a long "......" from every start, quadratically.
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s)")
_CLAUSE_END_RE = re.compile(r"[,;:](?=\s)")
_TRAILING_PUNCT_RE = re.compile(r"[.,;:!?]*")
# Chat end-of-turn tokens a decoder may leave on the text; they are not part of the response.
_END_TOKENS = ("<|im_end|>", "<|endoftext|>")
_MAX_COORD = 10**12
_CALL_KEYS = {"name", "arguments"}


class ProblemCode(StrEnum):
    """What is wrong with a response; see :func:`parse_response` for when each is reported."""

    MISSING_THINK = "missing_think"
    MISSING_ANSWER = "missing_answer"
    UNCLOSED_TAG = "unclosed_tag"
    UNOPENED_TAG = "unopened_tag"
    MISORDERED_TAGS = "misordered_tags"
    DUPLICATE_TAG = "duplicate_tag"
    NESTED_TAG = "nested_tag"
    UNEXPECTED_TAG = "unexpected_tag"
    TEXT_OUTSIDE_TAGS = "text_outside_tags"
    TEXT_AFTER_ANSWER = "text_after_answer"
    ANSWER_IN_THINK = "answer_in_think"
    NO_POINT = "no_point"
    MULTIPLE_POINTS = "multiple_points"
    FLOAT_COORDINATE = "float_coordinate"
    NEGATIVE_COORDINATE = "negative_coordinate"
    POINT_OUTSIDE_IMAGE = "point_outside_image"
    REPEATED_POINT = "repeated_point"
    MALFORMED_TOOL_CALL = "malformed_tool_call"
    UNKNOWN_TOOL = "unknown_tool"
    BAD_TOOL_ARGUMENTS = "bad_tool_arguments"
    TOOL_CALL_AND_ANSWER = "tool_call_and_answer"


@dataclass(frozen=True)
class Problem:
    """One deviation from the expected format, with a human-readable detail."""

    code: ProblemCode
    detail: str


@dataclass(frozen=True)
class ToolCall:
    """A parsed ``<tool_call>``: its name, its arguments, and the zoom point when the arguments are valid."""

    name: str
    arguments: dict[str, Any]
    point: Point | None = None


@dataclass(frozen=True)
class Parsed:
    """Everything :func:`parse_response` read from a response, and what was wrong with it.

    Attributes:
        think: stripped contents of the ``<think>`` blocks, in order.
        steps: one step per point literal in the thinking; its text is the sentence or clause around the literal.
        points: every point named while reasoning (step points, then each tool call's), in block order.
        answer: stripped content of the first ``<answer>`` block, or ``None``.
        answer_point: the answer read as a point (``(x, y)``, ``[x, y]`` or ``x, y``), or ``None``.
        tool_calls: parsed ``<tool_call>`` blocks (malformed JSON yields none, only a problem).
        problems: every deviation found; empty means the response has exactly the expected form.
    """

    think: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    answer: str | None = None
    answer_point: Point | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the response has exactly the expected form."""
        return not self.problems

    def has(self, code: ProblemCode | str) -> bool:
        """Whether a problem with this code was found."""
        return any(p.code == code for p in self.problems)


# ---------------------------------------------------------------------------------------------------------------
# Point literals
# ---------------------------------------------------------------------------------------------------------------


def _match_point(m: re.Match[str], frame: Frame) -> Point:
    return Point(float(m[1]), float(m[2]), frame)


def _written_as_float(m: re.Match[str]) -> bool:
    return "." in m[1] or "." in m[2]


# ---------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------


def _answer_text(answer: str | Point) -> str:
    return format_point(answer) if isinstance(answer, Point) else answer


def _final_answer(traj: Trajectory) -> str | Point:
    if traj.answer is None:
        raise ValueError("cannot render a trajectory without an answer")
    return traj.answer


def render_answer(answer: str | Point) -> str:
    """``"<answer> {answer} </answer>"``; a point answer is written as its literal."""
    return f"<answer> {_answer_text(answer)} </answer>"


def render_step(step: Step) -> str:
    """A teacher's one-step response: ``"<think> {step text with its point} </think>"``."""
    return f"<think> {step.render()} </think>"


def _single_turn(think: str, answer: str | Point) -> str:
    return f"<think>\n{think}\n</think>\n{render_answer(answer)}"


def render_single_turn(traj: Trajectory) -> str:
    """A full single-turn response: every step in one think block, then the answer.

    Returns:
        ``"<think>\\n{step texts joined with a space}\\n</think>\\n<answer> {answer} </answer>"``.

    Raises:
        ValueError: if the trajectory has no answer.
    """
    return _single_turn(" ".join(s.render() for s in traj.steps), _final_answer(traj))


def render_backtracking(wrong: Trajectory, right: Trajectory, connector: str = DEFAULT_CONNECTOR) -> str:
    """A single-turn response that explores a wrong path, says so, then follows the right one to its answer.

    Args:
        wrong: the abandoned path; its answer is not rendered.
        right: the path that reaches the answer.
        connector: the sentence between the two paths.

    Raises:
        ValueError: if ``right`` has no answer.
    """
    texts = [s.render() for s in wrong.steps] + [connector] + [s.render() for s in right.steps]
    return _single_turn(" ".join(texts), _final_answer(right))


def render_zoom_turn(thought: str, point: Point | tuple[float, float]) -> str:
    """A multi-turn assistant turn that thinks, then calls the zoom tool on ``point`` (rounded).

    Example:
        >>> print(render_zoom_turn("The sign is small (40, 12).", (40, 12)))
        <think> The sign is small (40, 12). </think>
        <tool_call>
        {"name": "zoom", "arguments": {"point": [40, 12]}}
        </tool_call>
    """
    call = json.dumps({"name": ZOOM_TOOL_NAME, "arguments": {"point": list(point_xy(point))}})
    return f"<think> {thought} </think>\n<tool_call>\n{call}\n</tool_call>"


def render_answer_turn(thought: str, answer: str | Point) -> str:
    """The final multi-turn assistant turn: ``"<think> {thought} </think>\\n<answer> {answer} </answer>"``."""
    return f"<think> {thought} </think>\n{render_answer(answer)}"


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Block:
    """A tagged block while scanning: the text directly inside it (nested blocks excluded)."""

    tag: str
    in_same: bool = False  # opened inside a block with the same tag
    parts: list[str] = field(default_factory=list)

    @property
    def content(self) -> str:
        return "".join(self.parts).strip()


class _Report:
    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, code: ProblemCode, detail: str) -> None:
        self.problems.append(Problem(code, detail))


def _scan(text: str, report: _Report) -> tuple[list[_Block], list[tuple[str, bool]]]:
    """Split text into tagged blocks (in opening order) and top-level text chunks (with "after an answer")."""
    blocks: list[_Block] = []
    outside: list[tuple[str, bool]] = []
    stack: list[_Block] = []
    open_tags = Counter[str]()  # tags on the stack, so nesting checks stay O(1) on deeply nested junk
    answered = False
    pos = 0
    for m in _TAG_RE.finditer(text):
        chunk = text[pos : m.start()]
        if stack:
            stack[-1].parts.append(chunk)
        else:
            outside.append((chunk, answered))
        pos = m.end()
        closing, tag = m[1] == "/", m[2]
        if not closing:
            if tag == _ANSWER and open_tags[_THINK]:
                report.add(ProblemCode.ANSWER_IN_THINK, "<answer> opened inside <think>")
            elif stack:
                report.add(ProblemCode.NESTED_TAG, f"<{tag}> opened inside <{stack[-1].tag}>")
            block = _Block(tag, open_tags[tag] > 0)
            blocks.append(block)
            stack.append(block)
            open_tags[tag] += 1
        elif open_tags[tag]:
            while stack[-1].tag != tag:
                report.add(ProblemCode.UNCLOSED_TAG, f"<{stack[-1].tag}> not closed before </{tag}>")
                open_tags[stack.pop().tag] -= 1
            stack.pop()
            open_tags[tag] -= 1
            answered = answered or (tag == _ANSWER and not stack)
        else:
            report.add(ProblemCode.UNOPENED_TAG, f"</{tag}> without <{tag}>")
            if not blocks:
                # A prompt that prefills "<think>" leaves the model's text starting inside the block: recover the
                # leading text as that block's content rather than calling it text outside tags.
                blocks.append(_Block(tag, parts=[chunk for chunk, _ in outside]))
                outside.clear()
                answered = tag == _ANSWER
    if stack:
        stack[-1].parts.append(text[pos:])
        for block in stack:
            report.add(ProblemCode.UNCLOSED_TAG, f"<{block.tag}> not closed")
    else:
        outside.append((text[pos:], answered))
    return blocks, outside


def _strip_end_tokens(text: str) -> str:
    # A loop over rstrip, not a regex anchored at "$": that would rescan long whitespace runs quadratically.
    text = text.rstrip()
    while text.endswith(_END_TOKENS):
        token = next(t for t in _END_TOKENS if text.endswith(t))
        text = text[: -len(token)].rstrip()
    return text


def _split_steps(content: str, frame: Frame) -> list[tuple[Step, bool]]:
    """One step per literal (with "written with a decimal point"); each takes the sentence around its literal.

    Between two literals, a step ends at the first sentence end after its literal; within one sentence, at the
    last clause mark (``,;:``) before the next literal, since what follows a literal usually describes it; else
    right after its literal. Text before the first literal belongs to the first step, text after the last to the
    last step, so rendered steps whose texts end with their literals parse back to the same texts.
    """
    matches = list(LITERAL_RE.finditer(content))
    steps: list[tuple[Step, bool]] = []
    start = 0
    for i, m in enumerate(matches):
        if i + 1 == len(matches):
            end = len(content)
        else:
            gap = (m.end(), matches[i + 1].start())
            sentence = _SENTENCE_END_RE.search(content, *gap)
            clauses = list(_CLAUSE_END_RE.finditer(content, *gap))
            if sentence:
                end = sentence.end()
            elif clauses:
                end = clauses[-1].end()
            else:
                end = _TRAILING_PUNCT_RE.match(content, m.end()).end()
        steps.append((Step(content[start:end].strip(), _match_point(m, frame)), _written_as_float(m)))
        start = end
    return steps


def _int_pair(value: object) -> tuple[int, int] | None:
    if not isinstance(value, list) or len(value) != 2:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and abs(v) < _MAX_COORD for v in value):
        return None
    return value[0], value[1]


def _parse_tool_call(content: str, frame: Frame, report: _Report) -> ToolCall | None:
    try:
        payload = json.loads(content)
    except (ValueError, RecursionError) as e:  # RecursionError: deeply nested brackets
        report.add(ProblemCode.MALFORMED_TOOL_CALL, f"tool call is not JSON: {type(e).__name__}")
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("name"), str) or set(payload) - _CALL_KEYS:
        report.add(ProblemCode.MALFORMED_TOOL_CALL, 'tool call must be {"name": ..., "arguments": {...}}')
        return None
    name, arguments = payload["name"], payload.get("arguments")
    if name != ZOOM_TOOL_NAME:
        report.add(ProblemCode.UNKNOWN_TOOL, f"unknown tool {name!r}")
        return ToolCall(name, arguments if isinstance(arguments, dict) else {})
    if not isinstance(arguments, dict):
        report.add(ProblemCode.BAD_TOOL_ARGUMENTS, "zoom arguments must be an object")
        return ToolCall(name, {})
    if set(arguments) != {"point"}:
        report.add(ProblemCode.BAD_TOOL_ARGUMENTS, f"zoom takes exactly 'point', got {sorted(arguments)}")
    xy = _int_pair(arguments.get("point"))
    if xy is None:
        report.add(ProblemCode.BAD_TOOL_ARGUMENTS, "zoom 'point' must be a list of two integers")
        return ToolCall(name, arguments)
    return ToolCall(name, arguments, Point(float(xy[0]), float(xy[1]), frame))


def _check_structure(tags: list[str], expect: str, n_points: int, report: _Report) -> None:
    """Problems of block order and count, given the tags of the blocks in opening order.

    A block inside one of the same tag is left out: the nesting is already reported, and counting it again as a
    duplicate would report one mistake twice.
    """
    allowed = (_THINK, _ANSWER, _TOOL_CALL) if expect == "turn" else (_THINK, _ANSWER)
    for tag in sorted(set(tags) - set(allowed)):
        report.add(ProblemCode.UNEXPECTED_TAG, f"<{tag}> is not part of a {expect!r} response")
    kept = [t for t in tags if t in allowed]
    for tag in allowed:
        if kept.count(tag) > 1:
            report.add(ProblemCode.DUPLICATE_TAG, f"<{tag}> appears {kept.count(tag)} times")
    # The think block comes first; the answer or tool call after it.
    first_other = next((i for i, t in enumerate(kept) if t != _THINK), len(kept))
    if _THINK in kept[first_other:]:
        report.add(ProblemCode.MISORDERED_TAGS, "<think> after <answer>/<tool_call>")
    has_think, has_answer, has_call = _THINK in kept, _ANSWER in kept, _TOOL_CALL in kept
    if expect == "single":
        if not has_think:
            report.add(ProblemCode.MISSING_THINK, "no <think> block")
        if not has_answer:
            report.add(ProblemCode.MISSING_ANSWER, "no <answer> block")
        if has_think and n_points == 0:
            report.add(ProblemCode.NO_POINT, "no (x, y) point in the thinking")
    elif expect == "step":
        if not has_think and not has_answer:
            report.add(ProblemCode.MISSING_THINK, "a step needs a <think> block or an <answer>")
        elif not has_answer and n_points == 0:
            report.add(ProblemCode.NO_POINT, "the step names no (x, y) point")
        elif not has_answer and n_points > 1:
            report.add(ProblemCode.MULTIPLE_POINTS, f"the step names {n_points} points, not one")
    else:
        if not has_think:
            report.add(ProblemCode.MISSING_THINK, "no <think> block")
        if has_call and has_answer:
            report.add(ProblemCode.TOOL_CALL_AND_ANSWER, "a turn ends with a tool call or an answer, not both")
        elif not has_call and not has_answer:
            report.add(ProblemCode.MISSING_ANSWER, "a turn must end with a <tool_call> or an <answer>")


def _check_point(point: Point, where: str, geometry: ImageGeometry | None, report: _Report) -> None:
    if point.x < 0 or point.y < 0:
        report.add(ProblemCode.NEGATIVE_COORDINATE, f"{where} ({point.x:g}, {point.y:g})")
    if geometry is not None and not geometry.contains(point.x, point.y, point.frame):
        report.add(
            ProblemCode.POINT_OUTSIDE_IMAGE,
            f"{where} ({point.x:g}, {point.y:g}) outside the {point.frame} image {geometry.size(point.frame)}",
        )


def _check_repeats(points: list[Point], where: str, report: _Report) -> None:
    seen: set[tuple[int, int]] = set()
    for p in points:
        if p.rounded() in seen:
            report.add(ProblemCode.REPEATED_POINT, f"{where} names {format_point(p)} again")
        seen.add(p.rounded())


def parse_response(
    text: str,
    *,
    geometry: ImageGeometry | None = None,
    frame: Frame | str = Frame.PIXEL,
    expect: Expect = "single",
) -> Parsed:
    """Parse a model response in the grounded format; never raises on any text.

    Tags (``<think>``, ``<answer>``, ``<tool_call>``) may carry whitespace inside the brackets and are
    case-sensitive. Content is extracted leniently (an unclosed block runs to the end of the text; a closing
    tag with nothing open claims the text before it, as when a prompt prefills ``<think>``), while every
    deviation is listed in ``problems``. Trailing ``<|im_end|>`` / ``<|endoftext|>`` tokens are ignored.

    Expectations:
        - ``"single"``: exactly one think block (with at least one point) then one answer, nothing outside.
        - ``"step"``: a teacher response: one think block with exactly one point, or an answer optionally
          preceded by a think block.
        - ``"turn"``: one multi-turn assistant turn: a think block, then exactly one of tool call or answer.

    Points are checked wherever they appear: float and negative coordinates, points outside the image (with
    ``geometry``, in ``frame``), and the same rounded point named twice in the thinking or twice across tool
    calls (a tool call zooming on the point its thinking just named is not a repeat).

    Args:
        text: the response text.
        geometry: the image's geometry; enables ``point_outside_image``.
        frame: the frame the response's coordinates are written in; parsed points carry it.
        expect: which response form to check against.

    Returns:
        The :class:`Parsed` response.

    Raises:
        ValueError: if ``expect`` is not one of ``"single"``, ``"step"``, ``"turn"`` (never because of ``text``).

    Example:
        >>> p = parse_response("<think>\\nThe mug (412, 230).\\n</think>\\n<answer> B </answer>")
        >>> p.ok, p.answer, p.steps[0].point.rounded()
        (True, 'B', (412, 230))
    """
    if expect not in _EXPECTS:
        raise ValueError(f"expect must be one of {_EXPECTS}, got {expect!r}")
    frame = Frame(frame)
    report = _Report()
    blocks, outside = _scan(_strip_end_tokens(text), report)
    for chunk, after_answer in outside:
        if chunk.strip():
            code = ProblemCode.TEXT_AFTER_ANSWER if after_answer else ProblemCode.TEXT_OUTSIDE_TAGS
            report.add(code, repr(chunk.strip()[:60]))

    think: list[str] = []
    steps: list[Step] = []
    tool_calls: list[ToolCall] = []
    answer: str | None = None
    for block in blocks:
        if block.tag == _THINK:
            think.append(block.content)
            for step, is_float in _split_steps(block.content, frame):
                if is_float:
                    report.add(ProblemCode.FLOAT_COORDINATE, f"step point ({step.point.x:g}, {step.point.y:g})")
                _check_point(step.point, "step point", geometry, report)
                steps.append(step)
        elif block.tag == _TOOL_CALL:
            call = _parse_tool_call(block.content, frame, report)
            if call is not None:
                tool_calls.append(call)
                if call.point is not None:
                    _check_point(call.point, "zoom point", geometry, report)
        elif answer is None:
            answer = block.content

    answer_match = _ANSWER_POINT_RE.fullmatch(answer) if answer is not None else None
    answer_point = _match_point(answer_match, frame) if answer_match else None
    if answer == "":
        report.add(ProblemCode.MISSING_ANSWER, "the <answer> block is empty")
    if answer_match:
        if _written_as_float(answer_match):
            report.add(ProblemCode.FLOAT_COORDINATE, f"answer point {answer!r}")
        _check_point(answer_point, "answer point", geometry, report)
    call_points = [c.point for c in tool_calls if c.point is not None]
    _check_repeats([s.point for s in steps], "the thinking", report)
    _check_repeats(call_points, "a tool call", report)
    _check_structure([b.tag for b in blocks if not b.in_same], expect, len(steps), report)
    return Parsed(
        think=think,
        steps=steps,
        points=[s.point for s in steps] + call_points,
        answer=answer,
        answer_point=answer_point,
        tool_calls=tool_calls,
        problems=report.problems,
    )
