"""Benchmark tasks: each loads its official data into :class:`Sample` records and scores answers officially.

Importing this package registers every task; pick one with :func:`get_task` (``task_names()`` lists them).
"""

from trace_forge.tasks import blink, generic, sat, screenspot, vstar  # noqa: F401  (registers the tasks)
from trace_forge.tasks.base import Task, get_task, task_names
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = ["AnswerKind", "Sample", "Task", "get_task", "task_names"]
