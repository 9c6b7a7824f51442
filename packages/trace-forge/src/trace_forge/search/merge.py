"""Merge the run directories of one search split over several machines (shards) into one run directory.

Shards must be parts of the same run: same task and task options, search parameters, teacher and prompt
version (otherwise their traces would not be comparable, and :class:`~trace_forge.errors.ConfigError` names the
differing field).
Records are concatenated in shard order; a question finished by two shards keeps its first record (a
conflicting copy is logged). Errors of questions that some shard finished are dropped. The merged ``run.json``
is the first shard's, with the teacher ``usage`` counters summed over shards and every shard's own
``run.json`` under ``shards``. Teacher caches (every ``*.sqlite`` file with a ``completions`` table, see
:mod:`trace_forge.teachers.cache`) are merged row by row with ``INSERT OR IGNORE``, so a resumed run on the
merged directory replays every shard's calls.

Example:
    >>> merge_runs("runs/vstar", ["runs/vstar-a", "runs/vstar-b"])  # doctest: +SKIP
    MergeReport(questions=191, duplicates=0, conflicts=[], errors=2, cache_rows={'cache.sqlite': 5730})
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_forge.errors import ConfigError, DataError
from trace_forge.search.store import ERRORS, TREES, RunStore, read_records, sum_usage
from trace_forge.teachers.cache import ResponseCache

__all__ = ["MergeReport", "merge_runs", "COMPATIBILITY_FIELDS"]

log = logging.getLogger(__name__)

COMPATIBILITY_FIELDS = ("task", "task_options", "params", "teacher", "prompt_version")
# Teacher keys that say where a shard ran and what it spent: they differ between the shards of one run by
# nature.
_TEACHER_LOCAL_KEYS = ("base_urls", "usage")


@dataclass
class MergeReport:
    """What :func:`merge_runs` wrote.

    Attributes:
        questions: records in the merged ``trees.jsonl``.
        duplicates: identical records of one question found in several shards (one kept).
        conflicts: question ids whose shard records differ (the first shard's kept).
        errors: records in the merged ``errors.jsonl``.
        cache_rows: rows of each merged cache file, by file name.
    """

    questions: int = 0
    duplicates: int = 0
    conflicts: list[str] = field(default_factory=list)
    errors: int = 0
    cache_rows: dict[str, int] = field(default_factory=dict)


@dataclass
class _Shard:
    root: Path
    run: dict[str, Any]
    records: list[dict[str, Any]]

    def identity(self, name: str) -> Any:
        """The value of a compatibility field; the prompt version falls back to the records' versions."""
        if name == "teacher":
            return {k: v for k, v in (self.run.get("teacher") or {}).items() if k not in _TEACHER_LOCAL_KEYS}
        if name == "prompt_version" and "prompt_version" not in self.run:
            return sorted({r.get("prompt_version") for r in self.records}, key=str)
        return self.run.get(name)


def _load_shard(root: Path) -> _Shard:
    run = RunStore(root).read_run_json() if root.is_dir() else None
    if run is None:
        raise DataError("not a run directory (no run.json)", path=root)
    return _Shard(root, run, list(read_records(root / TREES)))


def _check_compatible(shards: Sequence[_Shard]) -> None:
    first = shards[0]
    for shard in shards[1:]:
        for name in COMPATIBILITY_FIELDS:
            a, b = first.identity(name), shard.identity(name)
            if a != b:
                raise ConfigError(
                    f"shards are not parts of one run: {name} differs between {first.root} ({json.dumps(a)}) "
                    f"and {shard.root} ({json.dumps(b)})"
                )


def _write_jsonl(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """All records in the store's line format, written to a temp file then renamed (never half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _merge_caches(out: Path, shards: Sequence[_Shard]) -> dict[str, int]:
    """Rows of each shard cache copied into the cache of the same name in ``out``; returns row counts."""
    names = sorted({p.name for s in shards for p in s.root.glob("*.sqlite")})
    counts: dict[str, int] = {}
    for name in names:
        sources = [s.root / name for s in shards if _has_completions(s.root / name)]
        if not sources:
            continue
        ResponseCache(out / name).close()  # creates the file with the cache's own schema and WAL mode
        db = sqlite3.connect(out / name, isolation_level=None, uri=True)  # uri: ATTACH read-only
        try:
            for source in sources:
                db.execute("ATTACH DATABASE ? AS shard", (f"file:{source}?mode=ro",))
                db.execute("INSERT OR IGNORE INTO completions SELECT * FROM shard.completions")
                db.execute("DETACH DATABASE shard")
            counts[name] = db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]
        finally:
            db.close()
    return counts


def _has_completions(path: Path) -> bool:
    if not path.is_file():
        return False
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return (
            db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'completions'").fetchone()
            is not None
        )
    finally:
        db.close()


def merge_runs(out: str | Path, shard_dirs: Sequence[str | Path]) -> MergeReport:
    """Merge shard run directories into ``out``: ``trees.jsonl``, ``errors.jsonl``, ``run.json``, caches.

    Args:
        out: the merged run directory (created); it must not already hold a ``trees.jsonl``.
        shard_dirs: the shards, in the order their records are kept.

    Returns:
        What was written.

    Raises:
        ConfigError: fewer than two shards, ``out`` already a run or one of the shards, or incompatible shards
            (the message names the field).
        DataError: a shard is not a run directory or holds a corrupt record.
    """
    out = Path(out)
    roots = [Path(d) for d in shard_dirs]
    if len(roots) < 2:
        raise ConfigError(f"merge needs at least two shard directories, got {len(roots)}")
    if out.resolve() in {r.resolve() for r in roots}:
        raise ConfigError(f"the output {out} is one of the shards; merge into a new directory")
    if (out / TREES).exists():
        raise ConfigError(f"{out / TREES} exists; merge into a new directory")
    shards = [_load_shard(r) for r in roots]
    _check_compatible(shards)

    report = MergeReport()
    kept: dict[str, dict[str, Any]] = {}
    for shard in shards:
        for record in shard.records:
            qid = record["question_id"]
            if qid not in kept:
                kept[qid] = record
            elif kept[qid] == record:
                report.duplicates += 1
            else:
                log.warning(
                    "question %s: %s has a different record than an earlier shard; keeping the first",
                    qid,
                    shard.root,
                )
                report.conflicts.append(qid)
    errors = [e for s in shards for e in read_records(s.root / ERRORS) if e.get("question_id") not in kept]

    store = RunStore(out)
    _write_jsonl(store.trees_path, list(kept.values()))
    if errors:
        _write_jsonl(store.errors_path, errors)
    report.questions, report.errors = len(kept), len(errors)
    report.cache_rows = _merge_caches(out, shards)
    # Sessions belong to a shard (each keeps its own under "shards"); the merged usage sums them all.
    merged = {k: v for k, v in shards[0].run.items() if k not in ("shard", "sessions")}
    merged["usage"] = sum_usage([s.run.get("usage") or {} for s in shards])
    merged["shards"] = [{"path": str(s.root), "questions": len(s.records), "run": s.run} for s in shards]
    store.write_run_json(merged)
    log.info("merged %d shards into %s: %d questions", len(shards), out, report.questions)
    return report
