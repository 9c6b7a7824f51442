"""Benchmark tasks: each loads its official data into :class:`Sample` records and scores answers officially.

Importing this package registers every task; pick one with :func:`get_task` (``task_names()`` lists them).
"""

from trace_forge.tasks import (  # noqa: F401  (registers the tasks)
    blink,
    generic,
    hrbench,
    mme_realworld,
    osatlas,
    robospatial,
    sat,
    screenspot,
    treebench,
    visualprobe,
    vstar,
)
from trace_forge.tasks.base import Task, TaskSpec, get_task, parse_task_options, task_names, task_options
from trace_forge.tasks.sample import AnswerKind, Sample
from trace_forge.tasks.scoring import Verdict, on_target, on_target_share, score_answer

__all__ = [
    "AnswerKind",
    "Sample",
    "Task",
    "TaskSpec",
    "Verdict",
    "get_task",
    "on_target",
    "on_target_share",
    "parse_task_options",
    "score_answer",
    "task_names",
    "task_options",
]
