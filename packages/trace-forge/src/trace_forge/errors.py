"""Typed errors of trace-forge. The CLI turns each into one line and an exit code."""

from __future__ import annotations

import errno

__all__ = ["TraceForgeError", "DataError", "ConfigError", "StorageError", "image_error"]


class TraceForgeError(Exception):
    """Base of every error trace-forge raises on purpose."""

    exit_code = 1


class DataError(TraceForgeError):
    """Bad input data: names the file (and line or field) at fault."""

    exit_code = 2

    def __init__(self, message: str, *, path: object | None = None, line: int | None = None) -> None:
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{where}{message}")
        self.path = path
        self.line = line


class ConfigError(TraceForgeError):
    """Invalid options or settings; the message says which and how to fix it."""

    exit_code = 2


class StorageError(TraceForgeError):
    """A durable write failed (a full disk, a quota, a read-only folder): names the file; what was already
    complete is kept, and nothing half-written is left for a resume to trust."""

    def __init__(self, path: object, error: OSError) -> None:
        reason = error.strerror or str(error)
        hint = ("free some space, then rerun the same command: finished work is kept"
                if error.errno in (errno.ENOSPC, errno.EDQUOT) else "fix the folder, then rerun the same command")
        super().__init__(f"{path}: cannot write ({reason}); {hint}")
        self.path = path
        self.errno = error.errno


def image_error(error: Exception) -> str:
    """Why an image could not be read, in words for a :class:`DataError` (PIL names a file it cannot identify by
    the repr of its buffer, ``<_io.BytesIO object at 0x...>``, which tells a reader nothing)."""
    from PIL import UnidentifiedImageError

    if isinstance(error, UnidentifiedImageError):
        return "not an image file (PNG, JPEG, WebP, GIF, BMP, TIFF, ...)"
    return str(error)
