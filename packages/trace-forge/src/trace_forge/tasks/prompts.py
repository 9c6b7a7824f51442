"""Versioned prompt wording, shared by the MCTS teacher, SFT, GRPO and evaluation.

A model is trained and evaluated on the words it saw when its traces were mined, so every stage renders prompts
from this one module. Any wording change must bump :data:`PROMPT_VERSION` and update :data:`TEMPLATES_SHA256`; a
test recomputes the hash and keeps a record of released versions, so a silent edit fails the suite.

Coordinates are described as "pixel coordinates of the image as shown": which frame that is (original pixels,
the processor's resized pixels) is decided by the model family elsewhere. Models that write points on a 0-1000
grid pass ``coordinate_hint=NORM1000_HINT`` to the system prompts.

Example:
    >>> from trace_forge.tasks.sample import AnswerKind, Sample
    >>> s = Sample("1", "vstar", [], "What colour is the cup?", AnswerKind.OPTION, options=["red", "blue"])
    >>> print(prompts_for(AnswerKind.OPTION).question_text(s))
    What colour is the cup?
    (A) red
    (B) blue
    Answer with the exact text of the chosen option, without its letter.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = [
    "PROMPT_VERSION",
    "TEMPLATES_SHA256",
    "TEMPLATES",
    "NORM1000_HINT",
    "PromptSet",
    "prompts_for",
    "lettered",
    "templates_sha256",
]

PROMPT_VERSION = "2"
TEMPLATES_SHA256 = "7c44b01b8b707cd9a0cad8f13437b9243c32fd7cf976fb83ea9be8dbdf9120f2"

PIXEL_COORDINATES = "integer pixel coordinates of the image as shown"
NORM1000_HINT = (
    "integer coordinates on a 0-1000 grid over the image (0 is the left or top edge, 1000 the right or bottom edge)"
)

# Placeholders use string.Template's $name so the JSON braces of the tool call need no escaping.
_TEACHER_SYSTEM = """\
You solve a visual question one step at a time, and every step is grounded in the image.

Write ONLY ONE reasoning step per response, or the final answer.
- A reasoning step goes inside <think> ... </think>. It describes what you see at exactly one specific point of \
the image and names that point as (x, y) in $coordinates.
- Never repeat coordinates used in a previous step. Explore different regions of the image before settling on \
an answer, and use later steps to verify earlier observations.
- When you are confident, reply with only the final answer inside <answer> ... </answer>, in the format the \
question asks for.$min_steps"""

_TEACHER_MIN_STEPS = "\nWrite at least $n reasoning steps before giving the final answer."

_TEACHER_PREVIOUS_STEP = "Previous step $k: $text"

_TEACHER_FORCE_ANSWER = """\
You have reached the maximum number of reasoning steps. Reply now with only the final answer inside \
<answer> ... </answer>, in the format the question asks for."""

_STUDENT_SYSTEM_SINGLE = """\
You answer a visual question by reasoning step by step, grounding every step in the image.
First think inside <think> ... </think>. Each step looks at one specific point of the image and names it inline \
as (x, y) in $coordinates; use a different point for every step.
Then give the final answer inside <answer> ... </answer>, in the format the question asks for.
Layout:
<think> ... (x1, y1) ... (x2, y2) ... </think>
<answer> ... </answer>"""

_STUDENT_SYSTEM_MULTI = """\
You answer a visual question by reasoning step by step, grounding every step in the image, and you can zoom in.
Each of your turns starts with exactly one <think> ... </think> block, followed by exactly one of:
- a zoom tool call on one point, written as
<tool_call>
{"name": "zoom", "arguments": {"point": [x, y]}}
</tool_call>
The tool replies with a crop of the image centred on that point.
- the final answer inside <answer> ... </answer>, in the format the question asks for.
Points are (x, y) in $coordinates, always of the full image, never of a crop. Every point you zoom on must be \
different from the earlier ones."""

_ZOOM_OBSERVATION = "Here is the zoomed crop of the image centred on ($x, $y)."
_ZOOM_OBSERVATION_DOT = "Here is the zoomed crop of the image centred on ($x, $y); a red dot marks that point."

_FORCED_ANSWER_PREFIX = (
    "<think> I have zoomed as many times as allowed, so I will answer from what I have seen. </think>\n<answer>"
)

_STUDENT_FORCE_ANSWER = """\
You have used all your zooms. Reply now with one <think> ... </think> block and the final answer inside \
<answer> ... </answer>."""

_CLOSING_THOUGHT = "I have seen enough to answer."

_ANSWER_FORMATS = {
    AnswerKind.OPTION: "Answer with the exact text of the chosen option, without its letter.",
    AnswerKind.POINT: (
        "Answer with the integer coordinates (x, y) of a point on the target in the image, written the same way "
        "as the points of your reasoning steps."
    ),
    AnswerKind.TEXT: "Answer with a short phrase.",
}

TEMPLATES: Mapping[str, str] = MappingProxyType(
    {
        "pixel_coordinates": PIXEL_COORDINATES,
        "norm1000_hint": NORM1000_HINT,
        "teacher_system": _TEACHER_SYSTEM,
        "teacher_min_steps": _TEACHER_MIN_STEPS,
        "teacher_previous_step": _TEACHER_PREVIOUS_STEP,
        "teacher_force_answer": _TEACHER_FORCE_ANSWER,
        "student_system_single": _STUDENT_SYSTEM_SINGLE,
        "student_system_multi": _STUDENT_SYSTEM_MULTI,
        "zoom_observation": _ZOOM_OBSERVATION,
        "zoom_observation_dot": _ZOOM_OBSERVATION_DOT,
        "forced_answer_prefix": _FORCED_ANSWER_PREFIX,
        "student_force_answer": _STUDENT_FORCE_ANSWER,
        "closing_thought": _CLOSING_THOUGHT,
        **{f"answer_format_{kind.value}": text for kind, text in _ANSWER_FORMATS.items()},
    }
)
"""Every piece of prompt wording, by name: what :data:`TEMPLATES_SHA256` pins."""


def templates_sha256(templates: Mapping[str, str] = TEMPLATES) -> str:
    """SHA-256 of the templates as canonical JSON (sorted keys), the fingerprint :data:`TEMPLATES_SHA256` pins."""
    canonical = json.dumps(dict(templates), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _fill(template: str, **values: object) -> str:
    return string.Template(template).substitute(values)


def lettered(options: list[str]) -> list[str]:
    """The options as the model sees them: ``["(A) red", "(B) blue"]``."""
    return [f"({letter}) {option}" for letter, option in zip(string.ascii_uppercase, options, strict=False)]


@dataclass(frozen=True)
class PromptSet:
    """The prompts of one answer kind; get one with :func:`prompts_for`.

    Attributes:
        kind: the answer kind of the samples these prompts are for.
        answer_format: the instruction saying how to write the final answer, appended to every question.
    """

    kind: AnswerKind
    answer_format: str

    def question_text(self, sample: Sample) -> str:
        """The user text for ``sample``: question, options as "(A) ..." lines, then the answer-format instruction.

        Raises:
            ValueError: when the sample's answer kind is not this set's, or an option question has no options or
                more than 26.
        """
        if sample.answer_kind != self.kind:
            raise ValueError(f"sample {sample.id!r} is {sample.answer_kind}, these prompts are for {self.kind}")
        if self.kind is AnswerKind.OPTION and not sample.options:
            raise ValueError(f"option question {sample.id!r} has no options")
        if len(sample.options) > len(string.ascii_uppercase):
            raise ValueError(f"sample {sample.id!r} has {len(sample.options)} options; letters stop at Z")
        lines = [sample.question.strip(), *lettered(sample.options), self.answer_format]
        return "\n".join(lines)

    def teacher_system(self, coordinate_hint: str | None = None, min_steps: int | None = None) -> str:
        """System prompt of the MCTS teacher: one grounded ``<think>`` step per response, or the ``<answer>``.

        Args:
            coordinate_hint: how coordinates are written, replacing "integer pixel coordinates of the image as
                shown" (e.g. :data:`NORM1000_HINT`).
            min_steps: ask for at least this many steps before answering (ViGoRL draws 3-7 per question so that
                trees vary in depth).
        """
        floor = "" if min_steps is None else _fill(_TEACHER_MIN_STEPS, n=min_steps)
        return _fill(_TEACHER_SYSTEM, coordinates=coordinate_hint or PIXEL_COORDINATES, min_steps=floor)

    def teacher_user(self, sample: Sample, previous_steps: list[str]) -> str:
        """The teacher's user text: :meth:`question_text`, then one "Previous step k: ..." line per earlier step.

        The steps come after the question so that system prompt, image and question form a prefix shared by every
        node of a question's tree, which inference servers cache. Steps are given without their tags.
        """
        steps = [_fill(_TEACHER_PREVIOUS_STEP, k=k, text=text.strip()) for k, text in enumerate(previous_steps, 1)]
        return "\n\n".join([self.question_text(sample), *steps])

    def teacher_force_answer(self) -> str:
        """The user turn that makes the teacher answer now (depth limit reached)."""
        return _TEACHER_FORCE_ANSWER

    def student_system(self, multi_turn: bool, coordinate_hint: str | None = None) -> str:
        """System prompt of the trained model.

        Args:
            multi_turn: False for one completion with grounded points inline; True for turns of one ``<think>``
                followed by a zoom tool call or the answer.
            coordinate_hint: as in :meth:`teacher_system`.
        """
        template = _STUDENT_SYSTEM_MULTI if multi_turn else _STUDENT_SYSTEM_SINGLE
        return _fill(template, coordinates=coordinate_hint or PIXEL_COORDINATES)

    def zoom_observation(self, point: tuple[int, int], dot: bool) -> str:
        """Text sent with a zoom crop centred on ``point`` (integers, in the coordinates the model writes).

        Args:
            point: the point the model zoomed on, as it wrote it.
            dot: whether the crop has a red dot drawn at the point (see ``ZoomSpec.dot``).
        """
        x, y = point
        return _fill(_ZOOM_OBSERVATION_DOT if dot else _ZOOM_OBSERVATION, x=x, y=y)

    def forced_answer_prefix(self) -> str:
        """Assistant-turn prefix that closes the reasoning and opens ``<answer>`` when the zoom limit is reached."""
        return _FORCED_ANSWER_PREFIX

    def student_force_answer(self) -> str:
        """User turn asking for the answer at the zoom limit, for backends that cannot continue a prefix (APIs)."""
        return _STUDENT_FORCE_ANSWER

    def closing_thought(self) -> str:
        """The thought of a final zoom-dialog turn whose steps were all spent on zooms."""
        return _CLOSING_THOUGHT


_PROMPT_SETS = {kind: PromptSet(kind, text) for kind, text in _ANSWER_FORMATS.items()}


def prompts_for(kind: AnswerKind | str) -> PromptSet:
    """The :class:`PromptSet` for an answer kind (option QA, point grounding or free text)."""
    return _PROMPT_SETS[AnswerKind(kind)]
