"""The task interface and registry: load samples, prompt for them, score answers, aggregate scores."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from trace_forge.errors import ConfigError
from trace_forge.grounding import Point
from trace_forge.grounding.zoom import VISUAL_SEARCH_ZOOM, ZoomSpec
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = ["Task", "register", "get_task", "task_names"]

_REGISTRY: dict[str, type[Task]] = {}


class Task(ABC):
    """A benchmark: where its data lives, how answers are judged and aggregated, and which prompts it uses.

    Subclasses set the class attributes and implement :meth:`load`, :meth:`score` and :meth:`aggregate` with the
    benchmark's *official* rules (see ``shared/reference/benchmarks.md``).
    """

    name: ClassVar[str]
    answer_kind: ClassVar[AnswerKind]
    hub_id: ClassVar[str | None] = None  # official Hugging Face dataset id, when there is one
    default_split: ClassVar[str] = "test"
    zoom: ClassVar[ZoomSpec] = VISUAL_SEARCH_ZOOM  # crop geometry for multi-turn zoom on this task
    license_note: ClassVar[str] = ""  # licence of the source benchmark, for dataset cards

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.skipped: Counter[str] = Counter()  # records the last load() skipped, by reason

    @abstractmethod
    def load(
        self,
        data_dir: str | Path | None = None,
        split: str | None = None,
        limit: int | None = None,
        skip_bad: bool = False,
    ) -> Iterator[Sample]:
        """Yield normalised samples from ``data_dir`` (official on-disk layout) or the Hub id.

        Bad input raises :class:`~trace_forge.errors.DataError` naming the file and line, unless ``skip_bad``,
        in which case the bad record is skipped and counted in :attr:`skipped`.
        """

    @abstractmethod
    def score(self, sample: Sample, answer: str | Point | None) -> float:
        """Official score of one final answer (already extracted from ``<answer>``) for ``sample``."""

    @abstractmethod
    def aggregate(self, results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
        """Official metrics over scored samples: ``{"overall": ..., "<category>": ..., ...}``."""


def register(cls: type[Task]) -> type[Task]:
    """Class decorator adding a task to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"task {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def get_task(name: str, **options: Any) -> Task:
    """Instantiate a registered task by name; unknown names raise :class:`ConfigError` listing the known ones."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}") from None
    return cls(**options)
