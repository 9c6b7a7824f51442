"""The progress display of every long command: a live bar on a terminal, plain periodic lines otherwise.

A bar redrawn in place is what a person at a terminal wants; in a log file (``nohup``, a cluster job, CI) it is
either nothing or a mess of carriage returns. So when stderr is not a terminal, :class:`Progress` prints one
whole line every ``every_s`` seconds (``TRACE_FORGE_PROGRESS_S``, default 30) and one at the end, never wrapped:

    search: 40/500 (8%) · 0:03:12 elapsed · with a correct trajectory 31/40 · 5.2 teacher calls/s

Example:
    >>> import io
    >>> from rich.console import Console
    >>> log = Console(file=io.StringIO())
    >>> with Progress("demo", 2, console=log, every_s=0) as p:
    ...     p.advance(status="first")
    ...     p.advance(status="second")
    >>> print(log.file.getvalue().splitlines()[-1].split(" · ")[0])
    demo: 2/2 (100%)
"""

from __future__ import annotations

import os
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as _Bar

from trace_forge.cli._app import console as stderr

__all__ = ["Progress", "PROGRESS_EVERY_S"]

PROGRESS_EVERY_S = 30.0


def _every_s() -> float:
    raw = os.environ.get("TRACE_FORGE_PROGRESS_S")
    try:
        return max(0.0, float(raw)) if raw else PROGRESS_EVERY_S
    except ValueError:
        return PROGRESS_EVERY_S


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress of ``total`` units of work labelled ``label`` (``total`` None: not known yet).

    Args:
        label: what is progressing ("search", "eval vstar", "sft").
        total: units of work, or None until :meth:`update` sets it.
        console: where to draw (stderr by default; results go to stdout).
        every_s: seconds between plain lines when ``console`` is not a terminal (default
            ``TRACE_FORGE_PROGRESS_S`` or 30).
        enabled: False draws nothing (``--quiet``).
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        *,
        console: Console | None = None,
        every_s: float | None = None,
        enabled: bool = True,
    ) -> None:
        self.label, self.total, self.completed, self.status = label, total, 0, ""
        self.console = console or stderr
        self.every_s = _every_s() if every_s is None else every_s
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self._start = self._last = time.monotonic()
        self._printed: tuple[int, int | None, str] | None = None  # what the last plain line said
        self._bar: _Bar | None = None
        self._task = None

    def __enter__(self) -> Progress:
        self._start = self._last = time.monotonic()
        if self.live:
            self._bar = _Bar(
                TextColumn(f"[bold]{self.label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                console=self.console,
            )
            self._task = self._bar.add_task(self.label, total=self.total, completed=self.completed, status="")
            self._bar.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled and kind is None and self._printed != (self.completed, self.total, self.status):
            self._line()  # where it ended, with the latest status

    def advance(self, n: int = 1, *, status: str | None = None) -> None:
        """``n`` more units done; ``status`` replaces the text after the counts."""
        self.update(self.completed + n, status=status)

    def update(self, completed: int, *, total: int | None = None, status: str | None = None) -> None:
        """Set the units done (and the total, once known)."""
        self.completed = completed
        if total is not None:
            self.total = total
        if status is not None:
            self.status = status
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, total=self.total, status=self.status)
            return
        now = time.monotonic()
        first = self._printed is None  # a log shows at once that the work started, and from where
        if first or now - self._last >= self.every_s:
            self._last = now
            self._line()

    def _line(self) -> None:
        counts = f"{self.completed}/{self.total}" if self.total is not None else f"{self.completed}"
        if self.total:
            counts += f" ({self.completed / self.total:.0%})"
        parts = [f"{self.label}: {counts}", f"{_clock(time.monotonic() - self._start)} elapsed"]
        if self.status:
            parts.append(self.status)
        self.console.print(" · ".join(parts), highlight=False, markup=False, soft_wrap=True)
        self._printed = (self.completed, self.total, self.status)
