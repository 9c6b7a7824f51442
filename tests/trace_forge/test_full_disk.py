"""A full disk at the write boundary (``os.write`` answering ENOSPC after the bytes left): one ``StorageError``
naming the file, nothing half-written that a resume would trust, and a resume after freeing space that ends where
an uninterrupted run ends."""

import errno
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from trace_forge.cli import app
from trace_forge.durable import append_record, read_records, write_json
from trace_forge.errors import StorageError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/fd")


class FullDisk:
    """``os.write`` to files under ``root`` writes at most ``free`` more bytes in all, then fails with ENOSPC."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path, free: int, pause_s: float = 0.0) -> None:
        self.root, self.free, self.refused, self.pause_s = str(root), free, 0, pause_s
        self._write = os.write
        monkeypatch.setattr(os, "write", self.write)

    def write(self, fd: int, data) -> int:
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            target = ""
        if not target.startswith(self.root):
            return self._write(fd, data)
        if self.free <= 0:
            self.refused += 1
            time.sleep(self.pause_s)  # a slow device: other writers run in the meantime
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        n = self._write(fd, bytes(data[: self.free]))
        self.free -= n
        time.sleep(self.pause_s)
        return n


def test_a_record_that_does_not_fit_is_cut_back_not_left_torn(tmp_path, monkeypatch, caplog):
    path = tmp_path / "trees.jsonl"
    append_record(path, {"question_id": "q1", "tree": "x" * 100})
    before = path.read_bytes()
    disk = FullDisk(monkeypatch, tmp_path, free=40)  # room for part of the next line only
    with pytest.raises(StorageError, match=rf"{path}: cannot write \(No space left on device\); free some space"):
        append_record(path, {"question_id": "q2", "tree": "y" * 100})
    assert disk.refused == 1 and disk.free == 0
    assert path.read_bytes() == before  # the 40 bytes that made it were cut off again
    assert [r["question_id"] for r in read_records(path)] == ["q1"] and "torn" not in caplog.text


def test_threads_appending_to_a_full_disk_leave_whole_lines_only(tmp_path, monkeypatch):
    # The search appends finished questions from worker threads: a writer that cuts the file back to the end it saw
    # must not undo (or, cutting "back" past another's cut, pad with zeros) what another writer did meanwhile.
    path = tmp_path / "trees.jsonl"
    append_record(path, {"question_id": "q0"})
    FullDisk(monkeypatch, tmp_path, free=250, pause_s=0.002)
    errors = []

    def writer(i: int) -> None:
        try:
            append_record(path, {"question_id": f"q{i}", "tree": "x" * 90})
        except StorageError as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    data = path.read_bytes()
    assert b"\0" not in data and data.endswith(b"\n")
    kept = [json.loads(line)["question_id"] for line in data.splitlines()]  # every line whole
    assert kept[0] == "q0" and len(kept) == 1 + 8 - len(errors) and len(errors) >= 6  # two records fit in 250 bytes


def test_a_whole_file_that_does_not_fit_leaves_the_old_one_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    write_json(path, {"sessions": [1]})
    FullDisk(monkeypatch, tmp_path, free=3)
    with pytest.raises(StorageError, match=r"run\.json: cannot write"):
        write_json(path, {"sessions": [1, 2]})
    assert json.loads(path.read_text()) == {"sessions": [1]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]  # no .run.json.*.tmp, not even empty


def test_a_search_that_fills_the_disk_stops_in_one_line_and_resumes_to_the_same_trees(tmp_path, monkeypatch):
    args = ["search", "--task", "vstar", "--data-dir", "data/samples/vstar", "--teacher", "sim", "--simulations",
            "2", "--concurrency", "1", "--quiet", "--no-linearize"]
    clean = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "clean")])
    assert clean.exit_code == 0, clean.output
    expected = {r["question"]["id"]: r["tree"] for r in read_records(tmp_path / "clean" / "trees.jsonl")}
    # Questions finish in any order (several are in flight even at --concurrency 1), so the first record written
    # may be any of them: the room is counted in the largest.
    largest = max(len(line) + 1 for line in (tmp_path / "clean" / "trees.jsonl").read_bytes().splitlines())
    run_json = (tmp_path / "clean" / "run.json").stat().st_size

    out = tmp_path / "full"
    with monkeypatch.context() as patch:  # room for run.json and about one and a half records
        disk = FullDisk(patch, out, free=run_json + largest * 3 // 2)
        result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert isinstance(result.exception, StorageError) and disk.refused >= 1, result.output
    assert "No space left on device" in str(result.exception) and str(out) in str(result.exception)
    kept = list(read_records(out / "trees.jsonl"))
    assert 1 <= len(kept) < len(expected) and (out / "trees.jsonl").read_bytes().endswith(b"\n")  # whole records

    resumed = CliRunner().invoke(app, [*args, "--out", str(out), "--resume"])  # space freed
    assert resumed.exit_code == 0, resumed.output
    assert {r["question"]["id"]: r["tree"] for r in read_records(out / "trees.jsonl")} == expected
