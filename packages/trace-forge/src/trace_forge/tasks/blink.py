"""BLINK (``BLINK-Benchmark/BLINK``): 14 perception subtasks, multiple choice over 1 to 4 images.

Layout: one folder per subtask (``Art_Style/``, ``Counting/``, ...) holding ``<split>.parquet`` or
``<split>-*.parquet``; columns ``idx``, ``question``, ``prompt`` (full text with options), ``choices``, ``answer``
(``"(A)"`` ... ``"(E)"``), ``sub_task`` and ``image_1`` ... ``image_4`` (None where unused). The test split's answers
are ``"hidden"``: such rows cannot be scored, so they are skipped and counted under ``"hidden answer"``.

Answers are read as the official ``analyze_answer`` (``eval/test_benchmark.py`` of zeyofu/BLINK_Benchmark) reads
them: a bare letter or ``"(X)"``; else the one ``"(X)"`` token of the last paragraph, or of the whole answer. Where
the official script would ask GPT-3.5 to match the answer to an option, the answer is matched without a judge
(:func:`~trace_forge.tasks.scoring.choose_option`: the option's text, or a letter with a lead-in).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from itertools import chain
from operator import attrgetter
from pathlib import Path

from trace_forge.errors import ConfigError, DataError
from trace_forge.tasks import metrics, scoring
from trace_forge.tasks.base import Task, register
from trace_forge.tasks.io import (
    Record,
    SkipPolicy,
    find_split_files,
    letter_index,
    resolve_root,
    table_records,
)
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = ["Blink"]

logger = logging.getLogger(__name__)

_REQUIRED = ("idx", "question", "choices", "answer", "image_1")
_IMAGE_COLUMNS = ("image_1", "image_2", "image_3", "image_4")
HIDDEN = "hidden"


@register
class Blink(Task):
    """BLINK; accuracy per subtask and ``overall`` = their unweighted mean (official ``evaluate.py``).

    Args:
        subtasks: subtask folder names to load (a list, or a comma-separated string); default all.
    """

    name = "blink"
    answer_kind = AnswerKind.OPTION
    hub_id = "BLINK-Benchmark/BLINK"
    default_split = "val"
    splits = ("val", "test")  # test answers are hidden: its rows are skipped
    license_note = "BLINK gathers images from several existing datasets; see the benchmark's licence"

    def __init__(self, *, subtasks: Sequence[str] | str | None = None) -> None:
        if isinstance(subtasks, str):
            subtasks = [s.strip() for s in subtasks.split(",") if s.strip()]
        super().__init__(subtasks=subtasks)
        self.subtasks = list(subtasks) if subtasks else None

    def read(self, data_dir: str | Path | None, split: str | None, policy: SkipPolicy) -> Iterator[Sample]:
        """Read ``split`` (default ``val``) of every subtask folder, in name order.

        Raises:
            ConfigError: a requested subtask has no folder (the message lists those found).
            DataError: no subtask folder holds ``split``.
        """
        split = split or self.default_split
        patterns = [f"{s}/*{split}*" for s in self.subtasks] if self.subtasks else [f"*/*{split}*"]
        root = resolve_root(data_dir, self.hub_id, allow_patterns=patterns)
        records = chain.from_iterable(table_records(f, _REQUIRED, policy) for f in self._files(root, split))
        samples = policy.convert(records, self._sample)
        return (s for s in samples if s is not None)

    def _files(self, root: Path, split: str) -> list[Path]:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if self.subtasks:
            names = [p.name for p in folders]
            unknown = [s for s in self.subtasks if s not in names]
            if unknown:
                raise ConfigError(f"unknown BLINK subtask(s) {unknown}; found in {root}: {names}")
            return [f for name in self.subtasks for f in find_split_files(root / name, split)]
        files = [f for folder in folders for f in self._split_files(folder, split)]
        if not files:
            raise DataError(f"no subtask folder holds split {split!r}", path=root)
        return files

    @staticmethod
    def _split_files(folder: Path, split: str) -> list[Path]:
        """A folder's split files, or none for a folder that is not a subtask (or lacks this split)."""
        try:
            return find_split_files(folder, split)
        except DataError:
            return []

    def _sample(self, rec: Record) -> Sample | None:
        label = rec.text("answer")
        if label.strip().lower() == HIDDEN:
            self.skipped["hidden answer"] += 1
            logger.debug("skipping %s: hidden answer", rec.source)
            return None
        choices = rec.strings("choices", min_len=2)
        index = letter_index(label)
        if index is None or index >= len(choices):
            raise rec.error(f"answer {label!r} is not a letter of the {len(choices)} choices", "bad answer")
        images = [rec.image(rec.data[c], rec.path.parent) for c in _IMAGE_COLUMNS if rec.data.get(c) is not None]
        if not images:
            rec.require("image_1")
        return Sample(
            id=str(rec.require("idx")),
            task=self.name,
            images=images,
            question=rec.text("question"),
            answer_kind=self.answer_kind,
            options=choices,
            answer=choices[index],
            category=str(rec.data.get("sub_task") or rec.path.parent.name),
            source=rec.source,
            meta={"prompt": rec.data.get("prompt", ""), "answer_label": label},
        )


    def choose(self, sample: Sample, answer: str) -> int | None:
        """The official reading (see the module docstring), then the judge-free match.

        Example:
            >>> s = Sample("q", "blink", [], "Which is closer?", AnswerKind.OPTION, ["point A", "point B"], "point B")
            >>> Blink().choose(s, "Point B is closer, so the answer is (B) because of the shadow.")
            1
        """
        official = _official_choice(answer, len(sample.options))
        return official if official is not None else scoring.choose_option(answer, sample.options)

    def aggregate(self, results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
        """One accuracy per subtask and ``overall``, their unweighted mean."""
        subtasks = metrics.group_means(results, attrgetter("category"))
        return {"overall": metrics.macro(subtasks), **subtasks}


def _official_choice(answer: str, n_options: int) -> int | None:
    """``analyze_answer``'s deterministic part; None where it would hand the answer to its GPT judge."""
    letters = [f"({chr(ord('A') + i)})" for i in range(n_options)]
    text = answer.strip()
    if text in letters:
        return letters.index(text)
    if f"({text})" in letters:
        return letters.index(f"({text})")
    tokens = [t for t in letters if t in text.split()]
    last = [t for t in letters if t in text.split("\n\n")[-1].split()]
    if len(last) == 1:
        return letters.index(last[0])
    if len(tokens) == 1:
        return letters.index(tokens[0])
    return None
