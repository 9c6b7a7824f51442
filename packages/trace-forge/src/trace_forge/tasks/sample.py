"""The normalised benchmark sample every task loader produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from PIL import Image

from trace_forge.grounding import Box
from trace_forge.tasks.io import compose_canvas

__all__ = ["AnswerKind", "Sample"]


class AnswerKind(StrEnum):
    """What a final answer is: one of the options, a point on the image, or free text."""

    OPTION = "option"
    POINT = "point"
    TEXT = "text"


@dataclass
class Sample:
    """One benchmark question, normalised across tasks.

    Attributes:
        id: stable id, unique within the task (used for resume, caching and the train/val split).
        task: registry name of the task that produced it.
        images: the image(s) as paths or already-decoded PIL images (Hub datasets decode them).
        question: the question or instruction, without options or format instructions.
        options: answer choices for multiple-choice tasks, in the order shown to the model.
        answer: the correct option's text (OPTION), the reference text (TEXT), or None (POINT).
        answer_kind: how answers are judged.
        target_boxes: target regions in the ``pixel`` frame of the sample's (composed) image.
        category: the benchmark's reporting category (V* category, ScreenSpot platform, BLINK subtask, ...).
        source: where it came from (file path and line, or Hub id and split).
        meta: task-specific extras (e.g. ScreenSpot ``data_type``, ScreenSpot-Pro ``group``).
    """

    id: str
    task: str
    images: list[Path | Image.Image]
    question: str
    answer_kind: AnswerKind
    options: list[str] = field(default_factory=list)
    answer: str | None = None
    target_boxes: list[Box] = field(default_factory=list)
    category: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def canvas(self) -> Image.Image:
        """The sample as one RGB image: its images side by side (see :func:`~trace_forge.tasks.io.compose_canvas`).

        ``target_boxes`` and every grounded point refer to this image's pixel frame. Decoding happens here, so a
        corrupt image file raises :class:`~trace_forge.errors.DataError` naming it.
        """
        return compose_canvas(self.images)[0]
