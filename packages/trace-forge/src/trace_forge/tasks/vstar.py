"""V*Bench (SEAL, ``craigwu/vstar_bench``): 191 high-resolution visual-search questions in two categories.

Official layout: ``direct_attributes/sa_N.jpg`` + ``sa_N.json`` (4 options) and ``relative_position/...`` (2
options). Each JSON holds ``question``, ``options`` (``options[0]`` is correct), ``target_object`` and ``bbox``, a
list of ``[x, y, w, h]`` pixel boxes. Other folders (``GPT4V-hard``, ``OCR``) are not part of the benchmark.

Option order: the JSON's order always puts the answer first, so a model biased to "A" would score 100%. When the
official ``test_questions.jsonl`` is present (it is in the Hub release), its shuffled ``(A) ...`` order and ``label``
are used for the shown options, after checking they agree with the JSON; otherwise the JSON order is kept and
``meta["option_order"]`` says so.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from trace_forge.tasks import metrics
from trace_forge.tasks.base import Task, register
from trace_forge.tasks.io import (
    Record,
    SkipPolicy,
    json_record,
    jsonl_records,
    letter_index,
    resolve_root,
)
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = ["VStar"]

CATEGORIES = ("direct_attributes", "relative_position")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_OPTION_LINE = re.compile(r"^\(([A-Z])\)\s*(.+?)\s*$")
_DIGITS = re.compile(r"(\d+)")


@dataclass(frozen=True)
class _ShownOptions:
    """The options as ``test_questions.jsonl`` shows them, and the index of the correct one."""

    options: list[str]
    correct: int
    question_id: str


def _natural_key(path: Path) -> list[str | int]:
    """Sort ``sa_9`` before ``sa_10``."""
    return [int(part) if part.isdigit() else part for part in _DIGITS.split(path.name)]


def _read_shown_options(path: Path, policy: SkipPolicy) -> dict[str, _ShownOptions]:
    """``test_questions.jsonl`` rows keyed by their ``image`` path (e.g. ``direct_attributes/sa_4690.jpg``)."""

    def parse(rec: Record) -> tuple[str, _ShownOptions]:
        matches = [_OPTION_LINE.match(line.strip()) for line in rec.text("text").splitlines()]
        options = [m.group(2) for m in matches if m]
        letters = "".join(m.group(1) for m in matches if m)
        correct = letter_index(rec.text("label"))
        if letters != "ABCDEFGH"[: len(options)] or correct is None or correct >= len(options):
            raise rec.error(f"cannot read options {letters!r} / label {rec.data.get('label')!r}", "bad options")
        return rec.text("image"), _ShownOptions(options, correct, str(rec.data.get("question_id", "")))

    return dict(policy.convert(jsonl_records(path, policy), parse))


@register
class VStar(Task):
    """V*Bench: multiple choice; accuracy per category and micro overall (``vstar_bench_eval.py``)."""

    name = "vstar"
    answer_kind = AnswerKind.OPTION
    hub_id = "craigwu/vstar_bench"
    splits = ("test",)
    license_note = (
        "V*Bench images come from Meta's SA-1B dataset and follow its terms; see the benchmark's licence for the "
        "annotations."
    )

    def read(self, data_dir: str | Path | None, split: str | None, policy: SkipPolicy) -> Iterator[Sample]:
        """Read the official layout (``split`` is ignored: V*Bench has only its test set)."""
        root = resolve_root(data_dir, self.hub_id)
        questions = root / "test_questions.jsonl"
        shown = _read_shown_options(questions, policy) if questions.is_file() else {}
        files = (json_path for category in CATEGORIES for json_path in self._annotation_files(root / category))
        return policy.convert(files, lambda p: self._sample(json_record(p), shown))

    @staticmethod
    def _annotation_files(folder: Path) -> list[Path]:
        return sorted(folder.glob("*.json"), key=_natural_key) if folder.is_dir() else []

    def _sample(self, rec: Record, shown: dict[str, _ShownOptions]) -> Sample:
        category = rec.path.parent.name
        image_path = next(
            (p for p in (rec.path.with_suffix(s) for s in _IMAGE_SUFFIXES) if p.exists()),
            rec.path.with_suffix(".jpg"),
        )
        image = rec.image(image_path.name, rec.path.parent)
        options = rec.strings("options", min_len=2)
        boxes = rec.require("bbox")
        if not isinstance(boxes, list) or not boxes:
            raise rec.error(f"field 'bbox' must be a non-empty list of [x, y, w, h], got {boxes!r}", "bad field 'bbox'")
        meta = {"target_object": rec.data.get("target_object"), "option_order": "official"}
        view = shown.get(f"{category}/{image_path.name}")
        if view is not None:
            if sorted(view.options) != sorted(options) or view.options[view.correct] != options[0]:
                raise rec.error(
                    f"test_questions.jsonl shows {view.options} (answer {view.options[view.correct]!r}), which "
                    f"disagrees with options {options} (answer first)",
                    "inconsistent options",
                )
            meta.update(option_order="test_questions.jsonl", question_id=view.question_id)
        return Sample(
            id=f"{category}/{rec.path.stem}",
            task=self.name,
            images=[image],
            question=rec.text("question"),
            answer_kind=self.answer_kind,
            options=view.options if view else options,
            answer=options[0],
            target_boxes=[rec.box(b, "xywh") for b in boxes],
            category=category,
            source=rec.source,
            meta=meta,
        )


    def aggregate(self, results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
        """``overall``: micro accuracy over all questions (as the official script); one entry per category."""
        by_category = metrics.group_means(results, attrgetter("category"))
        return {"overall": metrics.mean([score for _, score in results]), **by_category}
