"""MME-RealWorld (``yifanzhang114/MME-RealWorld``; Zhang et al., ICLR 2025) and its lite subset
(``yifanzhang114/MME-RealWorld-Lite``): multiple choice on high-resolution photos, charts and remote-sensing images
from five domains, mostly with a fifth option "the image does not feature it".

Layout: a JSON list of ``Question_id``, ``Image`` (a path), ``Text`` (the question), ``Answer choices`` (``"(A) ..."``
strings in letter order), ``Ground truth`` (a letter), ``Task`` (``Perception`` or ``Reasoning``), ``Subtask`` (the
domain, e.g. ``Autonomous_Driving``) and ``Category``. Full set: ``MME_RealWorld.json``, its images extracted from the
Hub's split archives into the same folder (the repository README). Lite: the Hub's ``data.zip`` holds
``data/MME-RealWorld-Lite.json`` and ``data/imgs/`` (extracted here on first use).

Answers are read as ``extract_characters_regex`` of the official ``evaluation/eval_your_results.py``
(yfzhang114/MME-RealWorld) reads them (:func:`mme_realworld_choice`), after
:func:`~trace_forge.tasks.scoring.choose_option`: that reader was written for letter answers and takes the first
capital A-E anywhere, so the option text our prompts ask for ("Deck Boats") would read as the letter D.

Aggregation (the same script): micro accuracy overall, per task, per task/subtask and per task/subtask/category
(category lower-cased, and every category naming an ``attribute`` merged into ``<first part>/attribute``). The paper's
tables add per task "Avg-C", the unweighted mean over its subtasks (its "class-based average"; not in the script).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import ClassVar

from trace_forge.errors import ConfigError, DataError
from trace_forge.tasks import metrics, scoring
from trace_forge.tasks.base import Task, register
from trace_forge.tasks.io import (
    Record,
    SkipPolicy,
    extract_zip_once,
    json_list_records,
    letter_index,
    resolve_root,
)
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = ["MMERealWorld", "MMERealWorldLite", "mme_realworld_choice"]

TASKS = ("Perception", "Reasoning")
# The official list, quirks included: two missing commas glue entries together, so "The correct option is" and
# "Best answer:" are never removed ("Best answer: C" then reads as B, from "Best").
_LEAD_INS = (
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option isThe correct option is",
    "Best answer:Best option:",
)
_LETTER = re.compile(r"[ABCDE]")
_LABELLED = re.compile(r"^\(([A-Z])\)\s*(.*)$", re.DOTALL)


def mme_realworld_choice(answer: str, options: Sequence[str]) -> int | None:
    """The official reading of an answer: the first capital A-E, else the first option containing the answer.

    Lead-ins such as "The answer is" are removed first (see ``_LEAD_INS``). An answer of more than ten words without
    any capital A-E selects nothing. Without a letter, the answer must be a case-insensitive substring of an option
    as shown, ``"(B) 457"``; an answer emptied by the lead-ins is a substring of every option, so it selects A.

    Example:
        >>> mme_realworld_choice("The answer is (C) 456", ["458", "457", "456"])
        2
        >>> mme_realworld_choice("457", ["458", "457", "456"])
        1
        >>> mme_realworld_choice("Best answer: C", ["458", "457", "456"])  # the official quirk
        1
    """
    text = answer.strip()
    for lead_in in _LEAD_INS:
        text = text.replace(lead_in, "")
    match = _LETTER.search(text)
    if match is None:
        if len(text.split()) > 10:
            return None
        letters = string.ascii_uppercase[: len(options)]
        shown = [f"({letter}) {option}".lower() for letter, option in zip(letters, options, strict=True)]
        return next((i for i, choice in enumerate(shown) if text.lower() in choice), None)
    index = ord(match.group(0)) - ord("A")
    return index if index < len(options) else None


def _official_category(task: str, subtask: str, category: str) -> str:
    category = category.lower()
    if "attribute" in category:
        category = category.split("/")[0] + "/attribute"
    return f"{task}/{subtask}/{category}"


class _MMERealWorld(Task):
    """MME-RealWorld: micro accuracy overall, per task, subtask and category, and each task's Avg-C."""

    answer_kind = AnswerKind.OPTION
    license_note = (
        "MME-RealWorld: academic research only, no commercial use; image copyright stays with the image owners "
        "(see the benchmark's licence)"
    )
    annotation_file: ClassVar[str]
    image_folder: ClassVar[str]  # relative to the annotation file's folder

    def read(self, data_dir: str | Path | None, split: str | None, policy: SkipPolicy) -> Iterator[Sample]:
        """Read the annotation file in ``data_dir`` (or ``data_dir/data``), or the file ``data_dir`` names."""
        self.resolve_split(split)
        path = self._annotation_path(self._root(data_dir))
        images = path.parent / self.image_folder
        records = json_list_records(path, policy)
        return policy.convert(records, lambda rec: self._sample(rec, images))

    def _root(self, data_dir: str | Path | None) -> Path:
        return resolve_root(data_dir, self.hub_id)

    def _annotation_path(self, root: Path) -> Path:
        if root.is_file():
            return root
        candidates = [root / self.annotation_file, root / "data" / self.annotation_file]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise DataError(f"no {self.annotation_file} here or in data/", path=root)
        return found

    def _sample(self, rec: Record, images: Path) -> Sample:
        options = self._options(rec)
        label = rec.text("Ground truth")
        correct = letter_index(label)
        if correct is None or correct >= len(options):
            raise rec.error(f"Ground truth {label!r} is not a letter of the {len(options)} choices", "bad answer")
        task = rec.text("Task")
        if task not in TASKS:
            raise rec.error(f"Task {task!r} is neither of {TASKS}", "bad field 'Task'")
        subtask = rec.text("Subtask")
        return Sample(
            id=rec.text("Question_id"),
            task=self.name,
            images=[rec.image(rec.text("Image"), images)],
            question=rec.text("Text").strip(),
            answer_kind=self.answer_kind,
            options=options,
            answer=options[correct],
            category=f"{task}/{subtask}",
            source=rec.source,
            meta={
                "official_category": _official_category(task, subtask, rec.text("Category")),
                "answer_label": string.ascii_uppercase[correct],
            },
        )

    @staticmethod
    def _options(rec: Record) -> list[str]:
        """The choice texts without their ``(A)`` labels, which must run A, B, C, ... in order."""
        choices = rec.strings("Answer choices", min_len=2)
        matches = [_LABELLED.match(choice.strip()) for choice in choices]
        labels = "".join(m.group(1) if m else "?" for m in matches)
        if labels != string.ascii_uppercase[: len(choices)]:
            raise rec.error(f"Answer choices must be labelled (A), (B), ... in order; labels read {labels!r}",
                            "bad options")
        return [m.group(2).strip() for m in matches if m]

    def choose(self, sample: Sample, answer: str) -> int | None:
        """:func:`~trace_forge.tasks.scoring.choose_option`, else the official reader (:func:`mme_realworld_choice`).

        Example:
            >>> s = Sample("1", "mme-realworld", [], "Which boat?", AnswerKind.OPTION, ["Center Console", "Deck Boats"])
            >>> MMERealWorldLite().choose(s, "Deck Boats"), MMERealWorldLite().choose(s, "I pick B, deck boats")
            (1, 1)
        """
        index = scoring.choose_option(answer, sample.options)
        return index if index is not None else mme_realworld_choice(answer, sample.options)

    def aggregate(self, results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
        """``overall``, ``<Task>``, ``<Task>/Avg-C``, ``<Task>/<Subtask>`` and ``<Task>/<Subtask>/<category>``."""
        subtasks = metrics.group_means(results, lambda s: s.category)
        out = {"overall": metrics.mean(score for _, score in results)}
        for task, accuracy in metrics.group_means(results, lambda s: s.category.split("/")[0]).items():
            own = {name: value for name, value in subtasks.items() if name.startswith(f"{task}/")}
            out.update({task: accuracy, f"{task}/Avg-C": metrics.macro(own)})
        return {**out, **subtasks, **metrics.group_means(results, lambda s: s.meta["official_category"])}


@register
class MMERealWorld(_MMERealWorld):
    """The full English set (the Chinese set, ``MME_RealWorld_CN.json``, is not registered)."""

    name = "mme-realworld"
    hub_id = "yifanzhang114/MME-RealWorld"
    annotation_file = "MME_RealWorld.json"
    image_folder = "."

    def _root(self, data_dir: str | Path | None) -> Path:
        if data_dir is None:
            # Its images come as split archives that must be joined and extracted by hand (the dataset card).
            raise ConfigError(
                f"download {self.hub_id}, extract its images next to {self.annotation_file} and pass --data-dir"
            )
        return resolve_root(data_dir, self.hub_id)


@register
class MMERealWorldLite(_MMERealWorld):
    """The lite subset: questions sampled from the full set, for cheaper evaluation."""

    name = "mme-realworld-lite"
    hub_id = "yifanzhang114/MME-RealWorld-Lite"
    annotation_file = "MME-RealWorld-Lite.json"
    image_folder = "imgs"

    def _root(self, data_dir: str | Path | None) -> Path:
        root = resolve_root(data_dir, self.hub_id)
        archive = root / "data.zip"
        if root.is_dir() and archive.is_file():
            extract_zip_once(archive, root / "data")
        return root
