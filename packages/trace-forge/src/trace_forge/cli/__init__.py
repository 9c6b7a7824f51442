"""The ``trace-forge`` command line.

Each command group lives in its own module below and registers itself on :data:`app`. Modules import only light
dependencies at top level; torch, transformers and the teacher SDKs are imported inside the commands that use them,
so ``trace-forge --help`` stays fast.
"""

from __future__ import annotations

import importlib

from trace_forge.cli._app import app, console, one_progress_display, out, run, version_option
from trace_forge.cli.progress import Progress

# Command modules register on `app` when imported.
for _name in ("tasks", "teacher", "linearize", "search", "traces"):
    importlib.import_module(f"trace_forge.cli.{_name}")


def main() -> None:
    run(app)


__all__ = ["Progress", "app", "console", "main", "one_progress_display", "out", "run", "version_option"]
