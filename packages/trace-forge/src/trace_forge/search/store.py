"""The run directory: one JSON line per finished question, written so that a kill at any moment loses nothing
that was finished.

Layout of a run directory::

    run.json        the RunRecord: command, task, parameters, teacher, versions, and teacher usage per session
                    (``sessions``: one entry per search or resume, with its start, end and usage) and summed
                    (``usage``); replaced atomically, and during the run too, so a kill loses little of the accounting
    trees.jsonl     one QuestionRecord per finished question: the question, its images, the whole tree, its cost
    errors.jsonl    one line per question that failed (teacher gave up, bad image), with the reason
    images/         images that have no file of their own (decoded from parquet cells), by SHA-256
    cache.sqlite    the teacher response cache (see trace_forge.teachers.cache)

Records are described in :mod:`trace_forge.search.records`; lines are appended with
:func:`~trace_forge.durable.append_record`, so a kill mid-write leaves at most one torn last line, which
:meth:`RunStore.finished` cuts off.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trace_forge.durable import append_record, write_json
from trace_forge.errors import DataError
from trace_forge.search.records import QuestionRecord, RunRecord, read_questions

__all__ = ["RunStore", "sum_usage", "TREES", "ERRORS", "RUN_JSON", "CACHE"]

TREES = "trees.jsonl"
ERRORS = "errors.jsonl"
RUN_JSON = "run.json"
CACHE = "cache.sqlite"


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


class RunStore:
    """Append-only storage of one search run."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def trees_path(self) -> Path:
        return self.root / TREES

    @property
    def errors_path(self) -> Path:
        return self.root / ERRORS

    @property
    def cache_path(self) -> Path:
        return self.root / CACHE

    @property
    def run_path(self) -> Path:
        return self.root / RUN_JSON

    def finished(self) -> dict[str, QuestionRecord]:
        """Records of finished questions by question id; repairs a torn last line."""
        return {record.id: record for _, record in read_questions(self.trees_path, repair=True)}

    def append(self, record: QuestionRecord) -> None:
        """Append one finished question durably (one write, flush, fsync)."""
        self.root.mkdir(parents=True, exist_ok=True)
        append_record(self.trees_path, record.to_dict())

    def append_error(self, record: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        append_record(self.errors_path, record)

    def read_run(self) -> RunRecord | None:
        """``run.json``, or None when there is none.

        Raises:
            DataError: it is not valid JSON, is malformed, or has another schema version.
        """
        import json

        if not self.run_path.exists():
            return None
        try:
            data = json.loads(self.run_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"not valid JSON ({e})", path=self.run_path) from e
        if not isinstance(data, dict):
            raise DataError("not a run record (expected a JSON object)", path=self.run_path)
        return RunRecord.from_dict(data, path=self.run_path)

    def write_run(self, run: RunRecord) -> None:
        """Replace ``run.json`` atomically, so a kill never leaves half a file."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.run_path, run.to_dict())

    def start_session(self, run: RunRecord, *, resume: bool) -> RunRecord:
        """Write ``run.json`` for a search session starting now, with a new entry in ``sessions``.

        Resuming, the run's first ``started`` and earlier sessions (with their usage) are kept.
        """
        previous = self.read_run() if resume else None
        now = _utc_now()
        run.started = previous.started if previous is not None and previous.started else now
        run.sessions = [*(previous.sessions if previous is not None else []), {"started": now, "finished": None,
                                                                                 "usage": {}}]
        run.usage = previous.usage if previous is not None else {}
        self.write_run(run)
        return run

    def record_usage(self, usage: dict[str, Any], *, finished: bool = False) -> None:
        """Store the current session's teacher usage in ``run.json`` and the sum over all sessions as ``usage``.

        Called during the run (a kill then loses only what followed the last call) and once at its end with
        ``finished``, which stamps the session's end time.
        """
        run = self.read_run()
        if run is None or not run.sessions:
            raise DataError("no search session to record usage in (start_session first)", path=self.run_path)
        session = run.sessions[-1]
        session["usage"] = usage
        if finished:
            session["finished"] = _utc_now()
        run.usage = sum_usage([s["usage"] for s in run.sessions if s.get("usage")])
        self.write_run(run)
