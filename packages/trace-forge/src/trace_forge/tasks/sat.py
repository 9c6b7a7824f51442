"""SAT-2 (``array/SAT-v2``): spatial questions on one image (static) or two (dynamic / motion).

Files: ``<split>.parquet``, ``<split>-*.parquet`` or ``<split>.jsonl``, in the data folder or its ``data/``; columns
``images`` (``image_bytes`` in SAT v1), ``question``, ``answers`` (the choices), ``correct_answer`` (the correct
choice's *text*) and ``question_type``. JSONL image entries are paths relative to the file.

With ``circular=True`` each question becomes one sample per rotation of its choices, so the correct answer visits
every position: the circular evaluation the SAT card recommends ("test with all positions of the correct answer
among answer choices") and the paper reports. SAT's code scores every rotation as an item and averages them, which
is ``overall`` here; ``all_rotations`` is the stricter share of questions answered right in every rotation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from itertools import chain
from operator import attrgetter
from pathlib import Path

from trace_forge.tasks import metrics
from trace_forge.tasks.base import Task, register
from trace_forge.tasks.io import Record, SkipPolicy, find_split_files, resolve_root, table_records
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = ["SAT2", "circular_rotations"]

_REQUIRED = ("question", "answers", "correct_answer")
_IMAGE_COLUMNS = ("images", "image_bytes")  # SAT-v2, SAT v1


def circular_rotations(samples: Iterable[Sample]) -> Iterator[Sample]:
    """Each sample once per rotation of its options: ids ``<id>#r<k>``, ``meta["circular_group"] = <id>``.

    Example:
        >>> s = Sample("q1", "sat2", [], "Which is closer?", AnswerKind.OPTION, ["left", "right"], "right")
        >>> [(r.id, r.options) for r in circular_rotations([s])]
        [('q1#r0', ['left', 'right']), ('q1#r1', ['right', 'left'])]
    """
    for sample in samples:
        n = len(sample.options)
        for k in range(n):
            yield replace(
                sample,
                id=f"{sample.id}#r{k}",
                options=sample.options[k:] + sample.options[:k],
                meta={**sample.meta, "circular_group": sample.id, "rotation": k},
            )


@register
class SAT2(Task):
    """SAT-2 multiple choice; micro accuracy overall and per question type, plus circular accuracy.

    Args:
        circular: expand every question into all rotations of its choices (official circular evaluation).
    """

    name = "sat2"
    answer_kind = AnswerKind.OPTION
    hub_id = "array/SAT-v2"
    splits = ("train", "static", "val", "test")
    license_note = "SAT (array/SAT-v2), synthetic ProcTHOR scenes plus real test images; see the benchmark's licence"

    def __init__(self, *, circular: bool = False) -> None:
        super().__init__(circular=circular)
        self.circular = circular

    def load(
        self,
        data_dir: str | Path | None = None,
        split: str | None = None,
        limit: int | None = None,
        skip_bad: bool = False,
    ) -> Iterator[Sample]:
        """As :meth:`Task.load`; ``limit`` counts questions, so a circular load keeps whole rotation groups."""
        questions = super().load(data_dir, split, limit, skip_bad)
        return circular_rotations(questions) if self.circular else questions

    def read(self, data_dir: str | Path | None, split: str | None, policy: SkipPolicy) -> Iterator[Sample]:
        """Read ``split`` (default ``test``); ``data_dir`` may also be one parquet / JSONL file."""
        split = split or self.default_split
        root = resolve_root(data_dir, self.hub_id, allow_patterns=[f"*{split}*"])
        files = [root] if root.is_file() else find_split_files(root, split)
        records = chain.from_iterable(table_records(f, _REQUIRED, policy) for f in files)
        return policy.convert(records, self._sample)

    def _sample(self, rec: Record) -> Sample:
        column = next((c for c in _IMAGE_COLUMNS if rec.data.get(c) is not None), _IMAGE_COLUMNS[0])
        cells = rec.require(column)
        if not isinstance(cells, list) or not cells:
            raise rec.error(f"field {column!r} must be a non-empty list of images", f"bad field {column!r}")
        options = rec.strings("answers", min_len=2)
        answer = rec.text("correct_answer")
        if answer not in options:
            raise rec.error(f"correct_answer {answer!r} is not one of the answers {options}", "bad answer")
        sample_id = rec.data.get("id")
        return Sample(
            id=str(sample_id) if sample_id is not None else f"{rec.path.stem}_{rec.index}",
            task=self.name,
            images=[rec.image(cell, rec.path.parent) for cell in cells],
            question=rec.text("question"),
            answer_kind=self.answer_kind,
            options=options,
            answer=answer,
            category=str(rec.data.get("question_type") or ""),
            source=rec.source,
        )


    def aggregate(self, results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
        """``overall``: micro accuracy over the samples (with ``circular``, over every rotation: SAT's circular
        accuracy), and one entry per question type; with ``circular``, also ``all_rotations`` (the share of
        questions right in every rotation) and ``questions``."""
        out = {
            "overall": metrics.mean([score for _, score in results]),
            **metrics.group_means(results, attrgetter("category")),
        }
        if self.circular:
            out.update(metrics.all_rotations(results))
        return out
