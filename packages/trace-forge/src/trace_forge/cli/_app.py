"""The typer application object and the error policy shared by every command."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from trace_forge.errors import StorageError, TraceForgeError

app = typer.Typer(
    name="trace-forge",
    help="Mine visually grounded reasoning traces with Monte Carlo tree search over a teacher VLM.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)

console = Console(stderr=True, soft_wrap=True)  # progress, notes and errors; a line is never wrapped
out = Console(soft_wrap=True)  # a command's results: stdout, so `cmd > file` keeps them apart from progress


def version_option(text: str) -> typer.models.OptionInfo:
    """A ``--version`` flag that prints ``text()`` and exits (for each CLI's root callback)."""

    def show(value: bool) -> None:
        if value:
            typer.echo(text())
            raise typer.Exit()

    return typer.Option("--version", callback=show, is_eager=True, help="Print the version and exit.")


def _trace_forge_version() -> str:
    from trace_forge import __version__

    return f"trace-forge {__version__}"


def one_progress_display() -> None:
    """Switch off the progress bars of datasets, huggingface_hub and transformers (reading parquet, loading and
    saving weights): the commands draw their own (:class:`~trace_forge.cli.progress.Progress`), and tqdm's carriage
    returns would interleave with it and fill log files. Called by each CLI's root, before any command."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported already (a test run): its switch was read at import
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


@app.callback()
def _root(version: Annotated[bool, version_option(_trace_forge_version)] = False) -> None:
    """Mine visually grounded reasoning traces with Monte Carlo tree search over a teacher VLM."""
    one_progress_display()


def run(typer_app: typer.Typer) -> None:
    """Run a typer app: a known error becomes one red line and its exit code (``TRACE_FORGE_DEBUG=1`` re-raises).

    Exit codes: 0 success, 1 runtime failure (a server, a full disk), 2 bad usage or bad input data, 130
    interrupted. A full disk met outside trace-forge's own writes (parquet, the SQLite cache) is one line too.
    """
    logging.basicConfig(
        level=os.environ.get("TRACE_FORGE_LOG", "WARNING").upper(),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        # Not standalone, so that a usage error (a wrong flag, value or command) reaches us instead of being drawn
        # in a box that wraps at the terminal's width.
        code = typer_app(standalone_mode=False)
    except (TraceForgeError, OSError, sqlite3.OperationalError) as e:
        error = _known(e)
        if error is None or os.environ.get("TRACE_FORGE_DEBUG"):
            raise
        _error(str(error))
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    except Exception as e:
        if not _is_usage_error(e):
            raise
        if type(e).__name__ == "NoArgsIsHelpError":  # no arguments: the help, drawn when the error was made
            if e.format_message().strip():
                typer.echo(e.format_message(), err=True)
        else:
            context = getattr(e, "ctx", None)
            path = context.command_path if context is not None else typer_app.info.name
            _error(f"{e.format_message().rstrip('.')} (see {path} --help)")
        sys.exit(e.exit_code)
    if code == 130:  # typer's code for Ctrl-C
        console.print("[yellow]interrupted[/]")
    sys.exit(code if isinstance(code, int) else 0)


def _is_usage_error(error: Exception) -> bool:
    """Whether ``error`` is click's usage error, of whichever click typer runs on (its own vendored copy since
    0.26; click before): known by the shape click gives it, as its classes are not public in every version."""
    return callable(getattr(error, "format_message", None)) and isinstance(getattr(error, "exit_code", None), int)


def _error(message: str) -> None:
    """One red line whatever the terminal width or the wrapped library's message (soft_wrap, newlines folded), so
    a long path stays whole for a reader and for grep."""
    console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}", highlight=False, soft_wrap=True)


def _known(error: Exception) -> TraceForgeError | None:
    """The error as one of ours, when it is one or is a full disk; None for anything else (a bug: a traceback)."""
    if isinstance(error, TraceForgeError):
        return error
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageError(error.filename or "a file", error)
    if getattr(error, "sqlite_errorname", None) == "SQLITE_FULL":
        return StorageError("an SQLite database (the teacher cache)", OSError(errno.ENOSPC, "database or disk is full"))
    return None


@app.command()
def version() -> None:
    """Print the trace-forge version."""
    typer.echo(_trace_forge_version())
