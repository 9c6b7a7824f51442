"""Merge the run directories of one search split over several machines (shards) into one run directory.

Shards must be parts of the same run: same task and options, split, search parameters, teacher settings and
prompt version (their :meth:`~trace_forge.search.records.RunRecord.differences`; where each shard's data and
teacher lived may differ). Otherwise their traces would not be comparable, and :class:`ConfigError` names the
differing fields.

Records are concatenated in shard order; a question finished by two shards keeps its first record (a
conflicting copy is logged). Errors of questions that some shard finished are dropped. The merged ``run.json`` is
the first shard's, with the teacher ``usage`` summed over shards and every shard's own ``run.json`` under
``shards``. Images a shard stored itself (``images/``) are copied. Teacher caches (every ``*.sqlite`` file with a
``completions`` table, see :mod:`trace_forge.teachers.cache`) are merged row by row with ``INSERT OR IGNORE``, so a
resumed run on the merged directory replays every shard's calls.

The merge is built in a temporary sibling folder and renamed into place at the end: a killed merge leaves no
half-merged run (the next merge clears the leftover).

Example:
    >>> merge_runs("runs/vstar", ["runs/vstar-a", "runs/vstar-b"])  # doctest: +SKIP
    MergeReport(questions=191, duplicates=0, conflicts=[], errors=2, cache_rows={'cache.sqlite': 5730})
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trace_forge.durable import OutputLock, append_record, read_records
from trace_forge.errors import ConfigError, DataError
from trace_forge.search.records import IMAGES_DIR, QuestionRecord, RunRecord, read_questions
from trace_forge.search.store import ERRORS, TREES, RunStore, sum_usage
from trace_forge.teachers.cache import ResponseCache

__all__ = ["MergeReport", "merge_runs", "COMPATIBILITY_FIELDS"]

log = logging.getLogger(__name__)

# What shards of one run share; unlike a resumed run they may keep their data in different folders.
COMPATIBILITY_FIELDS = tuple(name for name in RunRecord.IDENTITY if name != "data_dir")


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
    run: RunRecord
    records: list[QuestionRecord]


def _load_shard(root: Path) -> _Shard:
    run = RunStore(root).read_run() if root.is_dir() else None
    if run is None:
        raise DataError("not a run directory (no run.json)", path=root)
    return _Shard(root, run, [record for _, record in read_questions(root / TREES)])


def _check_compatible(shards: Sequence[_Shard]) -> None:
    first = shards[0]
    for shard in shards[1:]:
        changed = first.run.differences(shard.run, COMPATIBILITY_FIELDS)
        if changed:
            raise ConfigError(
                f"shards are not parts of one run: {first.root} and {shard.root} differ in {'; '.join(changed)}"
            )


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


def _copy_images(out: Path, shards: Sequence[_Shard]) -> None:
    """The images shards stored themselves, by SHA-256 (equal names are equal files)."""
    for shard in shards:
        folder = shard.root / IMAGES_DIR
        if folder.is_dir():
            shutil.copytree(folder, out / IMAGES_DIR, dirs_exist_ok=True)


def merge_runs(out: str | Path, shard_dirs: Sequence[str | Path]) -> MergeReport:
    """Merge shard run directories into ``out``: ``trees.jsonl``, ``errors.jsonl``, ``run.json``, images, caches.

    Args:
        out: the merged run directory; it must not exist yet, or be empty.
        shard_dirs: the shards, in the order their records are kept.

    Returns:
        What was written.

    Raises:
        ConfigError: fewer than two shards, ``out`` not empty, in use or one of the shards, or incompatible shards
            (the message names the fields).
        DataError: a shard is not a run directory or holds a corrupt record.
    """
    with OutputLock(out, "merge"):  # one writer: a second merge into the same folder is refused
        return _merge(Path(out), shard_dirs)


def _merge(out: Path, shard_dirs: Sequence[str | Path]) -> MergeReport:
    roots = [Path(d) for d in shard_dirs]
    if len(roots) < 2:
        raise ConfigError(f"merge needs at least two shard directories, got {len(roots)}")
    if out.resolve() in {r.resolve() for r in roots}:
        raise ConfigError(f"the output {out} is one of the shards; merge into a new directory")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; merge into a new directory")
    shards = [_load_shard(r) for r in roots]
    _check_compatible(shards)

    report = MergeReport()
    kept: dict[str, QuestionRecord] = {}
    for shard in shards:
        for record in shard.records:
            if record.id not in kept:
                kept[record.id] = record
            elif kept[record.id].to_dict() == record.to_dict():
                report.duplicates += 1
            else:
                log.warning("question %s: %s has a different record than an earlier shard; keeping the first",
                            record.id, shard.root)
                report.conflicts.append(record.id)
    errors = [e for s in shards for e in read_records(s.root / ERRORS) if e.get("question_id") not in kept]

    tmp = out.with_name(f".{out.name}.merging")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed merge's leftover
    tmp.mkdir(parents=True)
    store = RunStore(tmp)
    for record in kept.values():
        store.append(record)
    for error in errors:
        append_record(store.errors_path, error)
    report.questions, report.errors = len(kept), len(errors)
    _copy_images(tmp, shards)
    report.cache_rows = _merge_caches(tmp, shards)
    shard_info: list[dict[str, Any]] = [
        {"path": str(s.root), "questions": len(s.records), "run": s.run.to_dict()} for s in shards
    ]
    # Sessions belong to a shard (each keeps its own under "shards"); the merged usage sums them all.
    store.write_run(replace(shards[0].run, shard=None, sessions=[], shards=shard_info,
                            usage=sum_usage([s.run.usage for s in shards])))
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(tmp, out)
    log.info("merged %d shards into %s: %d questions", len(shards), out, report.questions)
    return report
