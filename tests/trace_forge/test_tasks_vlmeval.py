"""VLMEvalKit's table layout (HR-Bench, TreeBench): TSV rows by line, base64 images and row references, letter
options. Also home to the table-writing helpers those tasks' tests share."""

import base64
import csv
import io
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from trace_forge.errors import DataError
from trace_forge.tasks import vlmeval
from trace_forge.tasks.io import Record, SkipPolicy


def b64_png(size: tuple[int, int], colour: str = "gray") -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_tsv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """A TSV as VLMEvalKit writes one: all fields quoted, empty where a row lacks the column."""
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[row.get(c, "") for c in columns] for row in rows])
    return path


def rec(data: dict, index: int = 2) -> Record:
    return Record(Path("bench.tsv"), index, data, "line")


def test_tsv_rows_are_numbered_by_their_first_line(tmp_path):
    path = write_tsv(tmp_path / "t.tsv", [
        {"index": 0, "question": "first\nspans two lines", "image": b64_png((5, 4))},
        {"index": 1, "question": "second", "image": "0"},
    ])
    first, second = vlmeval.table_rows(path, ["index", "question"])
    assert (first.index, second.index) == (2, 4)  # the header is line 1; the first row takes lines 2-3
    assert first.data["question"] == "first\nspans two lines" and second.source == f"{path}:4"


def test_missing_column_and_unsupported_file(tmp_path):
    path = write_tsv(tmp_path / "t.tsv", [{"index": 0, "question": "q"}])
    with pytest.raises(DataError, match=r"t\.tsv: missing column\(s\) \['answer'\]"):
        vlmeval.table_rows(path, ["index", "answer"])
    with pytest.raises(DataError, match=r"t\.csv: unsupported file type"):
        vlmeval.table_rows(tmp_path / "t.csv", [])
    with pytest.raises(DataError, match=r"absent\.tsv: cannot read"):
        vlmeval.table_rows(tmp_path / "absent.tsv", [])


def test_images_decode_and_references_resolve(tmp_path):
    path = write_tsv(tmp_path / "t.tsv", [
        {"index": 7, "image": "7x"},  # names no row: a bad reference, not the row itself
        {"index": 8, "image": b64_png((6, 3))},
        {"index": 9, "image": "8"},
        {"index": 10, "image": "!" * 80},
    ])
    rows = vlmeval.table_rows(path, ["index", "image"])
    images = vlmeval.image_cells(rows)
    assert sorted(images) == ["10", "8"]  # cells longer than 64 characters hold pictures (or garbage)
    assert vlmeval.row_image(rows[1], images).size == (6, 3)
    assert vlmeval.row_image(rows[2], images).size == (6, 3)  # the picture of row 8
    with pytest.raises(DataError, match=r"t\.tsv:2: image cell '7x' names no row holding an image"):
        vlmeval.row_image(rows[0], images)
    with pytest.raises(DataError, match=r"t\.tsv:5: field 'image' is not base64"):
        vlmeval.row_image(rows[3], images)


def test_corrupt_base64_image_is_a_skippable_record_error(tmp_path):
    path = write_tsv(tmp_path / "t.tsv", [{"index": 0, "image": base64.b64encode(b"not a png" * 10).decode()}])
    (row,) = vlmeval.table_rows(path, ["image"])
    counts: Counter[str] = Counter()
    assert list(SkipPolicy(True, counts).convert([row], lambda r: vlmeval.row_image(r, {}))) == []
    assert counts == Counter({"corrupt image": 1})


def test_letter_options_stop_at_the_first_empty_column():
    assert vlmeval.letter_options(rec({"A": "red", "B": 3, "C": "", "D": float("nan")})) == ["red", "3"]
    assert vlmeval.letter_options(rec({"A": " left ", "B": "right", "C": None})) == ["left", "right"]
    with pytest.raises(DataError, match=r"bench\.tsv:2: option column\(s\) \['D'\] follow the empty option C"):
        vlmeval.letter_options(rec({"A": "x", "B": "y", "C": "", "D": "z"}))
    with pytest.raises(DataError, match="needs at least 2 options"):
        vlmeval.letter_options(rec({"A": "only"}))
    with pytest.raises(DataError, match="option B must be text"):
        vlmeval.letter_options(rec({"A": "x", "B": True}))


def test_answer_index_checks_the_letter_against_the_options():
    assert vlmeval.answer_index(rec({"answer": "B"}), ["x", "y"]) == 1
    assert vlmeval.answer_index(rec({"answer": "(A)"}), ["x", "y"]) == 0
    with pytest.raises(DataError, match=r"bench\.tsv:2: answer 'C' is not a letter of the 2 options"):
        vlmeval.answer_index(rec({"answer": "C"}), ["x", "y"])
