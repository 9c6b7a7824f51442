"""Any table of questions as a task: JSONL, JSON list, parquet or a saved HF dataset, with a column mapping.

Example (``{"img": "a.png", "q": "Which colour?", "choices": ["red", "blue"], "a": "B"}`` per line)::

    task = get_task("generic", image="img", question="q", answer="a", options="choices")
    samples = list(task.load("my_bench.jsonl"))

Image paths are relative to the data file's folder (or to the dataset folder). A mapped column that the data lacks
is a :class:`~trace_forge.errors.ConfigError` naming it; the check uses the first readable record, so for JSONL a
field missing only from later lines is a per-record :class:`~trace_forge.errors.DataError` instead.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import Any

from trace_forge.errors import ConfigError
from trace_forge.grounding import Box
from trace_forge.tasks import metrics
from trace_forge.tasks.base import Task, docstring_section, register
from trace_forge.tasks.io import (
    Record,
    SkipPolicy,
    dataset_records,
    find_split_files,
    letter_index,
    resolve_root,
    table_records,
)
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = ["ColumnMap", "GenericTask"]

_BOX_FORMATS = ("xyxy", "xywh")


@dataclass(frozen=True)
class ColumnMap:
    """Which column holds each part of a sample; None means the data has no such column.

    Attributes:
        image: one image (path or image) or a list of them.
        question: the question or instruction text.
        answer: the answer text, or a letter ("B", "(B)") for option questions; unused by default for points.
        options: the list of choices.
        boxes: one box or a list of boxes (4 numbers each, see ``box_format``), in pixels.
        id: a unique id (without one: ``<file stem>_<line or row>``).
        category: the reporting category.
    """

    image: str = "image"
    question: str = "question"
    answer: str | None = "answer"
    options: str | None = None
    boxes: str | None = None
    id: str | None = None
    category: str | None = None

    def mapped(self) -> dict[str, str]:
        """``{option name: column}`` for the columns in use."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@register
class GenericTask(Task):
    """A user table mapped onto :class:`Sample`; micro accuracy overall and per category.

    Args:
        box_format: ``"xyxy"`` (default) or ``"xywh"``, pixels.
        answer_kind: ``"option"``, ``"point"`` or ``"text"``; default ``"option"`` when an ``options`` column is
            mapped, else ``"text"``.
        **columns: the :class:`ColumnMap` fields, e.g. ``image="img", boxes="bbox"``.

    Raises:
        ConfigError: an unknown option, a bad ``box_format`` / ``answer_kind``, or a mapping that cannot give the
            answer kind what it needs (options for "option", boxes for "point", an answer for "option"/"text").
    """

    name = "generic"
    answer_kind = AnswerKind.TEXT
    splits = ()  # a user table: whatever splits its files or saved dataset hold
    license_note = "see the source dataset's licence"

    @classmethod
    def option_docs(cls) -> dict[str, str]:
        """Its own options, then one per :class:`ColumnMap` field: the column name to read it from."""
        columns = docstring_section(inspect.getdoc(ColumnMap) or "", "Attributes:")
        defaults = {f.name: f.default for f in fields(ColumnMap)}
        return {
            **super().option_docs(),
            **{name: f"the column holding {text}" + (f" Default: {defaults[name]}." if defaults[name] else "")
               for name, text in columns.items()},
        }

    def __init__(self, *, box_format: str = "xyxy", answer_kind: str | None = None, **columns: str | None) -> None:
        super().__init__(box_format=box_format, answer_kind=answer_kind, **columns)
        known = [f.name for f in fields(ColumnMap)]
        unknown = sorted(set(columns) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} for task 'generic'; column options are {known}, "
                "plus box_format and answer_kind"
            )
        if box_format not in _BOX_FORMATS:
            raise ConfigError(f"box_format must be one of {_BOX_FORMATS}, got {box_format!r}")
        self.columns = ColumnMap(**columns)
        try:
            kind = AnswerKind(answer_kind or ("option" if self.columns.options else "text"))
        except ValueError:
            raise ConfigError(f"answer_kind must be one of {[k.value for k in AnswerKind]}, got {answer_kind!r}") from None
        needs = {AnswerKind.OPTION: ("options", "answer"), AnswerKind.POINT: ("boxes",), AnswerKind.TEXT: ("answer",)}
        missing = [n for n in needs[kind] if getattr(self.columns, n) is None]
        if missing:
            raise ConfigError(f"answer_kind {kind.value!r} needs the column option(s) {missing}")
        if kind is AnswerKind.POINT and "answer" not in columns:
            self.columns = replace(self.columns, answer=None)  # points are judged by boxes; no answer by default
        self.answer_kind = kind
        self.box_format = box_format

    def read(self, data_dir: str | Path | None, split: str | None, policy: SkipPolicy) -> Iterator[Sample]:
        """Read ``data_dir``: a ``.jsonl`` / ``.json`` / ``.parquet`` file, a folder holding ``<split>`` files, or a
        dataset saved with ``save_to_disk`` (``split`` picks from a ``DatasetDict``)."""
        path = resolve_root(data_dir, self.hub_id)
        split = split or self.default_split
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            records = dataset_records(self._load_saved(path, split), path)
        else:
            files = [path] if path.is_file() else find_split_files(path, split)
            records = chain.from_iterable(table_records(f, on_error=policy) for f in files)
        return policy.convert(self._check_columns(records), self._sample)

    @staticmethod
    def _load_saved(path: Path, split: str) -> Iterable[dict[str, Any]]:
        import datasets

        saved = datasets.load_from_disk(str(path))
        if isinstance(saved, datasets.DatasetDict):
            if split not in saved:
                raise ConfigError(f"split {split!r} not in the saved dataset at {path}; splits: {list(saved)}")
            return saved[split]
        return saved

    def _check_columns(self, records: Iterable[Record]) -> Iterator[Record]:
        """Fail on the first record if the data lacks a mapped column: the mapping, not the data, is wrong."""
        records = iter(records)
        first = next(records, None)
        if first is None:
            return
        absent = {opt: col for opt, col in self.columns.mapped().items() if col not in first.data}
        if absent:
            raise ConfigError(
                f"column(s) not found in {first.path}: "
                + ", ".join(f"{col!r} ({opt}=)" for opt, col in absent.items())
                + f"; its columns are {sorted(first.data)}"
            )
        yield first
        yield from records

    def _sample(self, rec: Record) -> Sample:
        cols = self.columns
        base_dir = rec.path if rec.path.is_dir() else rec.path.parent
        cell = rec.require(cols.image)
        images = [rec.image(v, base_dir) for v in (cell if isinstance(cell, list | tuple) else [cell])]
        if not images:
            raise rec.error(f"field {cols.image!r} holds no image", f"bad field {cols.image!r}")
        options = rec.strings(cols.options, min_len=2) if cols.options else []
        answer = str(rec.require(cols.answer)) if cols.answer else None
        if self.answer_kind is AnswerKind.OPTION:
            answer = self._option_answer(rec, answer or "", options)
        boxes = self._boxes(rec) if cols.boxes else []
        if self.answer_kind is AnswerKind.POINT and not boxes:
            raise rec.error(f"field {cols.boxes!r} holds no box", f"bad field {cols.boxes!r}")
        return Sample(
            id=str(rec.require(cols.id)) if cols.id else f"{rec.path.stem}_{rec.index}",
            task=self.name,
            images=images,
            question=rec.text(cols.question),
            answer_kind=self.answer_kind,
            options=options,
            answer=answer,
            target_boxes=boxes,
            category=str(rec.data.get(cols.category) or "") if cols.category else "",
            source=rec.source,
        )

    @staticmethod
    def _option_answer(rec: Record, answer: str, options: list[str]) -> str:
        """The correct option's text, given as the text itself or as its letter."""
        if answer in options:
            return answer
        index = letter_index(answer)
        if index is None or index >= len(options):
            raise rec.error(f"answer {answer!r} is neither an option nor an option letter {options}", "bad answer")
        return options[index]

    def _boxes(self, rec: Record) -> list[Box]:
        column = self.columns.boxes or ""
        value = rec.require(column)
        single = isinstance(value, list | tuple) and len(value) == 4 and not isinstance(value[0], list | tuple)
        values = [value] if single else value
        if not isinstance(values, list | tuple):
            raise rec.error(f"field {column!r} must be a box or a list of boxes, got {value!r}", f"bad field {column!r}")
        return [rec.box(v, self.box_format, field=column) for v in values]


    def aggregate(self, results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
        """``overall``: micro accuracy; one entry per category when the data has categories."""
        overall = {"overall": metrics.mean([score for _, score in results])}
        if not any(sample.category for sample, _ in results):
            return overall
        return {**overall, **metrics.group_means(results, attrgetter("category"))}
