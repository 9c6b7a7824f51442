"""Files that survive a kill at any moment: append-only JSON lines, whole files replaced atomically, and one writer
per output folder.

Every stage writes through these: the search's ``trees.jsonl``, evaluation's ``samples.jsonl``, and each
``run.json``, summary and dataset card.

- :func:`append_record` writes one JSON line with a single ``write``, then ``fsync``: a process killed mid-write
  leaves at most one torn last line, which :func:`read_records` detects, reports and (with ``repair``) cuts off, so
  the next append starts on a clean line. A write that fails (a full disk) cuts the file back to where it was.
- :func:`write_atomic` writes a temporary sibling, fsyncs it and renames it over the target: a reader sees the old
  file or the new one, never half of one; a failed write removes its temporary file.
- :class:`OutputLock` claims an output folder for one process: a second one is refused at once.

A write that fails raises :class:`~trace_forge.errors.StorageError` naming the file (one line, exit 1).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trace_forge.errors import ConfigError, DataError, StorageError

__all__ = ["OutputLock", "append_record", "check_version", "read_records", "write_atomic", "write_json"]

log = logging.getLogger(__name__)


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """An OSError of the block (ENOSPC, EDQUOT, EROFS, ...) as a :class:`StorageError` naming ``path``."""
    try:
        yield
    except OSError as e:
        raise StorageError(path, e) from e


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


_APPEND_LOCKS: dict[str, threading.Lock] = {}
_APPEND_LOCKS_GUARD = threading.Lock()


def _append_lock(path: Path) -> threading.Lock:
    """One lock per file: threads of a process append to one file (the search stores each question from a worker
    thread), and a writer cutting a failed line back to the end it saw would otherwise cut off, or pad with zeros,
    what another thread appended in between. Other processes never share the file (:class:`OutputLock`)."""
    key = os.path.abspath(path)
    with _APPEND_LOCKS_GUARD:
        return _APPEND_LOCKS.setdefault(key, threading.Lock())


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON record durably: one write and an fsync (a kill can tear at most this line).

    Raises:
        StorageError: the line could not be written whole; the file is cut back to its previous end, so no
            partial line remains (should the cut fail too, :func:`read_records` drops the torn line).
    """
    line = (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
    with _append_lock(path), _writing(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            end = os.fstat(fd).st_size
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except OSError:
                try:
                    os.ftruncate(fd, end)
                except OSError:
                    log.warning("%s: could not cut a partial line; the next read drops it", path)
                raise
        finally:
            os.close(fd)


def read_records(path: Path, *, repair: bool = False) -> Iterator[dict[str, Any]]:
    """Yield the JSON records of a ``.jsonl`` file written by :func:`append_record`.

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
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if i == len(complete) and not tail:
                # A torn line can also end in a newline if the kill hit between two writes of a buffer.
                log.warning("%s:%d: torn last line ignored (%s)", path, i, e)
                good_end -= len(raw) + 1
                break
            raise DataError(f"corrupt record ({e})", path=path, line=i) from e
        if not isinstance(record, dict):
            raise DataError(f"expected a JSON object, got {type(record).__name__}", path=path, line=i)
        yield record
    if tail.strip():
        log.warning("%s:%d: torn last line (%d bytes, no newline) ignored", path, len(complete) + 1, len(tail))
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            f.flush()
            os.fsync(f.fileno())


def check_version(
    data: Any, version: int, *, what: str, remedy: str, path: object = None, line: int | None = None
) -> None:
    """Raise :class:`DataError` unless ``data["schema_version"]`` is ``version`` (a record without one is version 1),
    naming both versions and what to do.

    Example:
        >>> check_version({"schema_version": 2}, 2, what="run.json", remedy="search again")
    """
    found = data.get("schema_version", 1)
    if found != version:
        from trace_forge import __version__

        raise DataError(f"{what} has schema version {found}; trace-forge {__version__} reads version {version} "
                        f"({remedy})", path=path, line=line)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` atomically (temporary sibling, fsync, rename); text is written as UTF-8.

    The temporary file has a name of its own, so concurrent writers of one path (two questions storing the same
    image) each rename a complete file.

    Raises:
        StorageError: the write failed; ``path`` is untouched and the temporary file removed.
    """
    path = Path(path)
    with _writing(path):
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(name)
        try:
            try:
                os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide run records and cards from the rest of a team
                _write_all(fd, data.encode("utf-8") if isinstance(data, str) else data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_json(path: Path, value: Any) -> None:
    """:func:`write_atomic` of ``value`` as indented JSON with sorted keys (equal values, equal bytes)."""
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


class OutputLock:
    """An exclusive claim on an output folder while a command writes it: ``with OutputLock(out, "search"): ...``.

    The lock is an advisory ``flock`` on a sibling file ``.{name}.lock``, so it also covers a folder that is built
    elsewhere and renamed into place, and it creates nothing inside the folder. A second process is refused at
    once (one line naming the folder and the holder's pid); the kernel drops the lock of a process that dies, so a
    lock left by a killed run is simply taken over.

    Raises:
        ConfigError: another process holds the folder.
    """

    def __init__(self, folder: str | Path, command: str) -> None:
        self.folder = Path(folder)
        self.command = command
        self.path = self.folder.with_name(f".{self.folder.name}.lock")
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"{self.folder} is in use by another process (pid {holder}); wait for it to finish, "
                              "or choose another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {self.command}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock; the file stays (unlinking it would race a new holder)
            self._fd = None
