"""A SQLite cache of teacher completions, shared safely by every process of a run.

A row is one sample: ``(key, idx)`` where ``key`` fingerprints the request without ``n`` (backend, model, messages
with images replaced by their content hash, sampling parameters) and ``idx`` is the sample's index. So a request
for ``n=3`` after one for ``n=2`` reuses samples 0-1 and asks the server for one more, and a resumed search replays
its earlier calls without sending any.

The database runs in WAL mode (readers never block the writer) with a busy timeout, and every write is one short
transaction, so several mining processes can share one file in the run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from trace_forge.teachers.base import Chat, Completion, SamplingParams
from trace_forge.teachers.images import ImageRef

__all__ = ["ResponseCache", "request_key"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    key TEXT NOT NULL,
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    finish_reason TEXT,
    prompt_tokens INTEGER NOT NULL,  -- billed when first sampled: kept for offline cost analysis of a run
    completion_tokens INTEGER NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (key, idx)
) WITHOUT ROWID
"""


def request_key(
    backend: str,
    model: str,
    chat: Chat,
    params: SamplingParams,
    image_hash: Callable[[ImageRef], str],
) -> str:
    """SHA-256 of the canonical JSON of a request, ``n`` excluded.

    Args:
        image_hash: content hash of an image as sent (``ImageEncoder.encode(ref).sha256``), so equal pixels at
            equal size give equal keys whatever object or path they came from.
    """
    messages = [
        {"role": m.role, "content": [p if isinstance(p, str) else {"image": image_hash(p)} for p in m.content]}
        for m in chat
    ]
    sampling = dataclasses.asdict(params)
    del sampling["n"]
    blob = json.dumps(
        {"backend": backend, "model": model, "messages": messages, "params": sampling},
        sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """Completions by request key and sample index, in ``path`` (created with its parent directory).

    Args:
        path: the database file, usually ``<run dir>/teacher_cache.sqlite``.
        busy_timeout_s: how long a write waits for another process's transaction before failing.

    Example:
        >>> import tempfile
        >>> c = ResponseCache(Path(tempfile.mkdtemp()) / "cache.sqlite")
        >>> c.put_many("k", {0: Completion("hi", "stop", 5, 1)})
        >>> c.get_many("k", range(2))
        {0: Completion(text='hi', finish_reason='stop', prompt_tokens=0, completion_tokens=0, cached=True)}
        >>> c.close()
    """

    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode (isolation_level=None): each statement or explicit BEGIN..COMMIT is its own short
        # transaction instead of Python's implicit long-lived one, which would hold the write lock.
        self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        self._lock = threading.Lock()  # one connection shared by the event loop and any worker threads
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")  # durable at checkpoints; a lost tail is re-asked
            self._db.execute(_SCHEMA)

    def get_many(self, key: str, indices: Iterable[int]) -> dict[int, Completion]:
        """Cached completions among ``indices`` (marked ``cached=True`` with zero tokens), by index."""
        wanted = list(indices)
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        with self._lock:
            rows = self._db.execute(
                f"SELECT idx, text, finish_reason FROM completions WHERE key = ? AND idx IN ({marks})",
                (key, *wanted),
            ).fetchall()
        return {idx: Completion(text, finish, cached=True) for idx, text, finish in rows}

    def put_many(self, key: str, completions: Mapping[int, Completion]) -> None:
        """Store completions by index in one transaction; an index already stored keeps its first value."""
        if not completions:
            return
        now = time.time()
        rows = [(key, i, c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens, now)
                for i, c in completions.items()]
        with self._lock:
            # BEGIN IMMEDIATE takes the write lock up front, so a busy database waits (busy timeout) here
            # rather than failing mid-transaction.
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR IGNORE INTO completions VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM completions").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"
