"""The table layout VLMEvalKit ships benchmarks in, shared by HR-Bench and TreeBench.

One row per question, in a ``.tsv`` (tab-separated, header first) or a ``.parquet`` file: ``index``, ``question``, one
column per option letter (``A``, ``B``, ...; empty or missing past the last option), ``answer`` (the correct letter),
``category``, and ``image``: the picture base64-encoded, or, where a picture repeats, the ``index`` of the row holding
it (a cell of at most 64 characters), as ``ImageBaseDataset.__init__`` of open-compass/VLMEvalKit
(``vlmeval/dataset/image_base.py``) reads them. A parquet ``image`` may also be an image cell (``{"bytes": ...}``).
"""

from __future__ import annotations

import base64
import binascii
import csv
import math
import string
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from trace_forge.errors import DataError
from trace_forge.tasks.io import ImageLike, Record, letter_index, parquet_records
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = ["table_rows", "image_cells", "row_image", "letter_options", "answer_index", "option_sample"]

_REFERENCE_MAX_CHARS = 64  # VLMEvalKit: an image cell this short names the row whose image it shares
# A base64 image is one TSV field of several megabytes, past the csv module's 128 KiB default.
_FIELD_LIMIT = 2**31 - 1


def table_rows(path: Path, required: Sequence[str]) -> list[Record]:
    """Every row of a ``.tsv`` or ``.parquet`` file, read up front because an image cell may name any other row.

    TSV rows are numbered by the line they start on (the header is line 1), so errors read ``file:line``.

    Raises:
        DataError: the file is missing or unreadable, not ``.tsv`` / ``.parquet``, or lacks a ``required`` column.
    """
    if path.suffix == ".parquet":
        return list(parquet_records(path, required))
    if path.suffix == ".tsv":
        return list(_tsv_records(path, required))
    raise DataError("unsupported file type (expected .tsv or .parquet)", path=path)


def _tsv_records(path: Path, required: Sequence[str]) -> Iterator[Record]:
    csv.field_size_limit(_FIELD_LIMIT)
    try:
        f = path.open(encoding="utf-8", newline="")
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", path=path) from e
    with f:
        reader = csv.DictReader(f, delimiter="\t")
        try:
            columns = reader.fieldnames or []
            missing = [c for c in required if c not in columns]
            if missing:
                raise DataError(f"missing column(s) {missing}; columns are {columns}", path=path)
            start = reader.line_num + 1
            for row in reader:
                yield Record(path, start, row, "line")
                start = reader.line_num + 1
        except (csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"malformed TSV: {e}", path=path, line=reader.line_num) from e


def image_cells(rows: Iterable[Record]) -> dict[str, str]:
    """``{index: base64 image}`` of the rows that hold their image, for :func:`row_image` to resolve references."""
    return {
        str(rec.data.get("index")): cell
        for rec in rows
        if isinstance(cell := rec.data.get("image"), str) and len(cell) > _REFERENCE_MAX_CHARS
    }


def row_image(rec: Record, images: Mapping[str, str]) -> ImageLike:
    """The row's picture, its header checked: decoded from base64, or from the row its short cell names."""
    cell = rec.require("image")
    if not isinstance(cell, str):
        return rec.image(cell, rec.path.parent)
    if len(cell) <= _REFERENCE_MAX_CHARS:
        if cell.strip() not in images:
            raise rec.error(f"image cell {cell!r} names no row holding an image", "bad field 'image'")
        cell = images[cell.strip()]
    try:
        data = base64.b64decode(cell, validate=True)
    except (binascii.Error, ValueError):
        raise rec.error("field 'image' is not base64", "corrupt image") from None
    return rec.image({"bytes": data, "path": "field 'image'"}, rec.path.parent)


def _blank(value: Any) -> bool:
    """An empty option cell: missing, None, NaN (pandas) or blank text."""
    if isinstance(value, float):
        return math.isnan(value)
    return value is None or (isinstance(value, str) and not value.strip())


def letter_options(rec: Record) -> list[str]:
    """The texts of the option columns ``A``, ``B``, ... up to the first empty one; at least two.

    A column after an empty one is an error: VLMEvalKit would show it under its own letter, after a gap, while our
    prompts letter the options in order.
    """
    options: list[str] = []
    for letter in string.ascii_uppercase:
        value = rec.data.get(letter)
        if _blank(value):
            break
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise rec.error(f"option {letter} must be text, got {value!r}", "bad options")
        options.append(str(value).strip())
    after = [c for c in string.ascii_uppercase[len(options) + 1 :] if not _blank(rec.data.get(c))]
    if after:
        raise rec.error(f"option column(s) {after} follow the empty option {string.ascii_uppercase[len(options)]}",
                        "bad options")
    if len(options) < 2:
        raise rec.error(f"needs at least 2 options in columns A, B, ...; found {len(options)}", "bad options")
    return options


def answer_index(rec: Record, options: Sequence[str], field: str = "answer") -> int:
    """The option the ``field`` letter names (``"B"`` or ``"(B)"``), checked against the options present."""
    label = str(rec.require(field))
    index = letter_index(label)
    if index is None or index >= len(options):
        raise rec.error(f"{field} {label!r} is not a letter of the {len(options)} options", "bad answer")
    return index


def option_sample(rec: Record, images: Mapping[str, str], task: str, **fields: Any) -> Sample:
    """A row as a multiple-choice :class:`Sample`: ``index`` as its id, the row's picture, the question, the lettered
    options and the correct one's text, its letter in ``meta["answer_label"]``; ``fields`` (category, meta, ...)
    fill in the rest."""
    options = letter_options(rec)
    correct = answer_index(rec, options)
    meta = {"answer_label": string.ascii_uppercase[correct], **fields.pop("meta", {})}
    return Sample(
        id=str(rec.require("index")),
        task=task,
        images=[row_image(rec, images)],
        question=rec.text("question").strip(),
        answer_kind=AnswerKind.OPTION,
        options=options,
        answer=options[correct],
        source=rec.source,
        meta=meta,
        **fields,
    )
