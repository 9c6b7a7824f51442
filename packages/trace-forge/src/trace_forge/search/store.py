"""The run directory: one JSON line per finished question, written so that a kill at any moment loses nothing
that was finished.

Layout of a run directory::

    run.json        command, parameters, teacher, versions, and teacher usage per session (``sessions``: one
                    entry per search or resume, with its start, end and usage) and summed (``usage``); written
                    atomically, and during the run too, so a kill loses little of the accounting
    trees.jsonl     one line per finished question: the whole tree, rewards, teacher usage
    errors.jsonl    one line per question that failed (teacher gave up, bad image), with the reason
    cache.sqlite    the teacher response cache (see trace_forge.teachers.cache)

Each line is written with a single ``write`` followed by ``flush`` and ``fsync``. A process killed mid-write can
leave at most one torn last line; :meth:`RunStore.finished` detects it, reports it, and cuts it off so the next
append starts on a clean line.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from trace_forge.errors import DataError

__all__ = ["RunStore", "read_records", "append_record", "sum_usage"]

log = logging.getLogger(__name__)

TREES = "trees.jsonl"
ERRORS = "errors.jsonl"
RUN_JSON = "run.json"
CACHE = "cache.sqlite"


def read_records(path: Path, *, repair: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the JSON records of a ``.jsonl`` file written by :class:`RunStore`.

    A torn last line (no newline, or not valid JSON) is what a kill mid-write leaves: it is reported and skipped,
    and with ``repair`` the file is truncated to the last complete line. A bad line anywhere else is corruption
    and raises :class:`DataError` naming the file and line.
    """
    if not path.exists():
        return
    data = path.read_bytes()
    lines = data.split(b"\n")
    # `lines[-1]` is what follows the last newline: empty for a clean file, a torn fragment otherwise.
    complete, tail = lines[:-1], lines[-1]
    good_end = len(data) - len(tail)
    for i, raw in enumerate(complete, start=1):
        if not raw.strip():
            continue
        try:
            yield json.loads(raw)
        except json.JSONDecodeError as e:
            if i == len(complete) and not tail:
                # A torn line can also end in a newline if the kill hit between two writes of a buffer.
                log.warning("%s:%d: torn last line ignored (%s)", path, i, e)
                good_end -= len(raw) + 1
                break
            raise DataError(f"corrupt record ({e})", path=path, line=i) from e
    if tail.strip():
        log.warning("%s:%d: torn last line (%d bytes, no newline) ignored", path, len(complete) + 1, len(tail))
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())


def sum_usage(usages: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Teacher usage counters (``run.json`` ``usage``) summed over sessions or shards; a counter missing or
    non-numeric in any of them (an unknown cost, latency percentiles) is left out rather than under-counted."""
    keys = set.intersection(*(set(u) for u in usages)) if usages else set()
    return {
        k: sum(u[k] for u in usages)
        for k in sorted(keys)
        if all(isinstance(u[k], int | float) and not isinstance(u[k], bool) for u in usages)
    }


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON record durably: a single write, flush and fsync (a kill can tear at most this line)."""
    line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    with open(path, "ab") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


class RunStore:
    """Append-only storage of one search run."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def trees_path(self) -> Path:
        return self.root / TREES

    @property
    def errors_path(self) -> Path:
        return self.root / ERRORS

    @property
    def cache_path(self) -> Path:
        return self.root / CACHE

    def finished(self) -> dict[str, dict[str, Any]]:
        """Records of finished questions by question id; repairs a torn last line (see :func:`read_records`)."""
        return {r["question_id"]: r for r in read_records(self.trees_path, repair=True)}

    def append(self, record: dict[str, Any]) -> None:
        """Append one finished question durably (one write, flush, fsync)."""
        append_record(self.trees_path, record)

    def append_error(self, record: dict[str, Any]) -> None:
        append_record(self.errors_path, record)

    def write_run_json(self, info: dict[str, Any]) -> None:
        """Write ``run.json`` atomically (temp file + rename), so a kill never leaves half a file."""
        tmp = self.root / f".{RUN_JSON}.tmp"
        tmp.write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, self.root / RUN_JSON)

    def start_session(self, info: dict[str, Any], *, resume: bool) -> None:
        """Write ``run.json`` for a search session starting now, with a new entry in ``sessions``.

        Resuming, ``info`` is laid over what the file holds: the first ``started`` and earlier sessions (with their
        usage) are kept; a file from before sessions existed turns its ``usage`` into the first session.
        """
        previous = (self.read_run_json() or {}) if resume else {}
        now = _utc_now()
        sessions = previous.get("sessions") or []
        if not sessions and previous.get("usage"):  # a run.json from before sessions existed
            sessions = [{"started": previous.get("started"), "finished": None, "usage": previous["usage"]}]
        sessions = [*sessions, {"started": now, "finished": None, "usage": {}}]
        self.write_run_json({**previous, **info, "started": previous.get("started", now), "sessions": sessions})

    def record_usage(self, usage: dict[str, Any], *, finished: bool = False) -> None:
        """Store the current session's teacher usage in ``run.json`` and the sum over all sessions as ``usage``.

        Called during the run (a kill then loses only what followed the last call) and once at its end with
        ``finished``, which stamps the session's end time.
        """
        run = self.read_run_json()
        if not run or not run.get("sessions"):
            raise DataError("no search session to record usage in (start_session first)", path=self.root / RUN_JSON)
        session = run["sessions"][-1]
        session["usage"] = usage
        if finished:
            session["finished"] = _utc_now()
        run["usage"] = sum_usage([s["usage"] for s in run["sessions"] if s.get("usage")])
        self.write_run_json(run)

    def read_run_json(self) -> dict[str, Any] | None:
        path = self.root / RUN_JSON
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"not valid JSON ({e})", path=path) from e
