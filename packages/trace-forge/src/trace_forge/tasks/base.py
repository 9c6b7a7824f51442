"""The task interface and registry: load samples, prompt for them, score answers, aggregate scores.

A task is named everywhere by its :class:`TaskSpec` (registry name + options), so a stage downstream of the search
rebuilds exactly the task the questions came from, with its options (a generic task's column map, SAT-2's
circular protocol).
"""

from __future__ import annotations

import inspect
import json
import math
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, ClassVar

from trace_forge.errors import ConfigError
from trace_forge.grounding import Point
from trace_forge.grounding.zoom import VISUAL_SEARCH_ZOOM, ZoomSpec
from trace_forge.tasks import scoring
from trace_forge.tasks.io import RecordError, SkipPolicy, canvas_size
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = [
    "Task", "TaskSpec", "register", "get_task", "parse_task_options", "task_names", "task_options", "checked_samples",
]

_REGISTRY: dict[str, type[Task]] = {}


@dataclass(frozen=True)
class TaskSpec:
    """A task as stored and passed between stages: its registry name and the options it was built with.

    Example:
        >>> spec = TaskSpec("sat2", {"circular": True})
        >>> spec.to_dict(), spec.build().circular
        ({'name': 'sat2', 'options': {'circular': True}}, True)
    """

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Task:
        """The task; an option its constructor does not take is a :class:`ConfigError`."""
        return get_task(self.name, **self.options)

    @property
    def key(self) -> str:
        """Canonical JSON of the spec: equal specs, equal keys."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def __hash__(self) -> int:  # options are a dict: hash the canonical form
        return hash(self.key)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TaskSpec:
        return cls(str(d["name"]), dict(d.get("options") or {}))


class Task(ABC):
    """A benchmark: where its data lives, how answers are judged and aggregated, and which prompts it uses.

    Subclasses set the class attributes and implement :meth:`load`, :meth:`score` and :meth:`aggregate` with the
    benchmark's *official* rules (see ``shared/reference/benchmarks.md``).
    """

    name: ClassVar[str]
    answer_kind: ClassVar[AnswerKind]
    hub_id: ClassVar[str | None] = None  # official Hugging Face dataset id, when there is one
    default_split: ClassVar[str] = "test"
    splits: ClassVar[tuple[str, ...]] = ("test",)  # the splits load() reads; empty: whichever the data holds
    zoom: ClassVar[ZoomSpec] = VISUAL_SEARCH_ZOOM  # crop geometry for multi-turn zoom on this task
    license_note: ClassVar[str] = ""  # licence of the source benchmark, for dataset cards

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.skipped: Counter[str] = Counter()  # records the last load() skipped, by reason

    @classmethod
    def option_docs(cls) -> dict[str, str]:
        """The task's options (``-o KEY=VALUE``) and what each does: the ``Args:`` of the class docstring, so the
        help a user reads is the documentation of the code."""
        return docstring_section(inspect.getdoc(cls) or "")

    @property
    def spec(self) -> TaskSpec:
        """The name and options that rebuild this task."""
        return TaskSpec(self.name, dict(self.options))

    def load(
        self,
        data_dir: str | Path | None = None,
        split: str | None = None,
        limit: int | None = None,
        skip_bad: bool = False,
    ) -> Iterator[Sample]:
        """Yield normalised samples from ``data_dir`` (official on-disk layout) or the Hub id: the first ``limit``.

        Every sample is checked on its way out (:func:`checked_samples`: a unique id, target boxes inside the
        image). Bad input raises :class:`~trace_forge.errors.DataError` naming the file and line, unless
        ``skip_bad``, in which case the bad record is skipped and counted in :attr:`skipped` by reason.
        """
        self.skipped.clear()
        policy = SkipPolicy(skip_bad, self.skipped)
        return islice(checked_samples(self.read(data_dir, split, policy), policy), limit)

    @abstractmethod
    def read(self, data_dir: str | Path | None, split: str | None, policy: SkipPolicy) -> Iterable[Sample]:
        """The samples of ``data_dir`` (official on-disk layout) or the Hub id, in the benchmark's order, lazily.

        Errors about a whole file raise; a bad record raises a :class:`~trace_forge.tasks.io.RecordError`, which
        the reader routes through ``policy`` (see :meth:`SkipPolicy.convert`). :meth:`load` checks and limits them.
        """

    def resolve_split(self, split: str | None) -> str:
        """``split``, or :attr:`default_split` when None.

        Raises:
            ConfigError: a split this task does not have (the message lists :attr:`splits`).
        """
        split = split or self.default_split
        if self.splits and split not in self.splits:
            raise ConfigError(f"task {self.name!r} has no split {split!r}; its splits: {', '.join(self.splits)}")
        return split

    def choose(self, sample: Sample, answer: str) -> int | None:
        """The option an answer selects (index into ``sample.options``), or None: :func:`scoring.choose_option`
        unless the benchmark's official script reads answers differently."""
        return scoring.choose_option(answer, sample.options)

    def score(self, sample: Sample, answer: str | Point | None) -> float:
        """Official score of one final answer (already extracted from ``<answer>``) for ``sample``.

        OPTION: the answer must select the correct option (:meth:`choose`); POINT: the point, in the pixel frame
        of :meth:`Sample.canvas`, must fall in a target box; TEXT: normalised exact match. A point given to an
        option or text question scores 0. Use :func:`~trace_forge.tasks.score_answer` for model text written in
        another frame.
        """
        if sample.answer_kind is AnswerKind.POINT:
            return scoring.score_point(answer, sample.target_boxes)
        text = answer if isinstance(answer, str) else None
        if sample.answer_kind is AnswerKind.OPTION:
            index = self.choose(sample, text) if text else None
            return scoring.score_choice(index, sample.options, sample.answer or "")
        return scoring.score_text(text, sample.answer or "")

    @abstractmethod
    def aggregate(self, results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
        """Official metrics over scored samples: ``{"overall": ..., "<category>": ..., ...}``."""


def checked_samples(samples: Iterable[Sample], policy: SkipPolicy) -> Iterator[Sample]:
    """``samples`` with the checks every benchmark needs, each failure a :class:`RecordError` through ``policy``:

    - ids are unique: a second question under one id would be searched and paid for, then shadow the first in
      every later stage (its tree could be drawn under the other's question);
    - every target box is finite, has a positive area, and overlaps the image (the canvas, for several images):
      a point question whose box lies elsewhere can never be answered right.
    """
    seen: dict[str, str] = {}
    for sample in samples:
        try:
            if sample.id in seen:
                raise RecordError(f"duplicate question id {sample.id!r} (first at {seen[sample.id]}); ids must be "
                                  "unique", reason="duplicate id", path=sample.source or None)
            _check_boxes(sample)
        except RecordError as e:
            policy(e)
            continue
        seen[sample.id] = sample.source or "an earlier record"
        yield sample


def _check_boxes(sample: Sample) -> None:
    if not sample.target_boxes:
        return
    width, height = canvas_size(sample.images)
    for box in sample.target_boxes:
        corners = box.to_list()
        if not all(math.isfinite(v) for v in corners):
            problem, reason = "is not finite", "box not finite"
        elif box.area <= 0:
            problem, reason = "has no area", "empty box"
        elif box.x1 >= width or box.y1 >= height or box.x2 <= 0 or box.y2 <= 0:
            problem, reason = f"lies outside the {width} x {height} image", "box outside the image"
        else:
            continue
        raise RecordError(f"question {sample.id!r}: target box [{', '.join(f'{v:g}' for v in corners)}] (x1, y1, "
                          f"x2, y2 pixels) {problem}", reason=reason, path=sample.source or None)


def register(cls: type[Task]) -> type[Task]:
    """Class decorator adding a task to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise ValueError(f"task {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def task_names() -> list[str]:
    return sorted(_REGISTRY)


def docstring_section(doc: str, title: str = "Args:") -> dict[str, str]:
    """``{name: description}`` of a Google-style ``Args:`` (or ``title``) section, continuation lines joined."""
    out: dict[str, str] = {}
    lines = iter(doc.splitlines())
    for line in lines:
        if line.strip() == title:
            break
    name = None
    for line in lines:
        if not line.strip():
            continue
        if not line.startswith(" "):
            break  # the next section
        entry = re.match(r"\s{4}(\*{0,2}\w+)(?: \(.*?\))?:\s*(.*)", line)
        if entry and not line.startswith(" " * 5):
            name = entry.group(1)
            out[name] = entry.group(2)
        elif name is not None:
            out[name] += " " + line.strip()
    return {k: v.replace("``", "") for k, v in out.items() if not k.startswith("*")}


def get_task(name: str, **options: Any) -> Task:
    """Instantiate a registered task by name.

    Raises:
        ConfigError: an unknown name (the known ones are listed) or an option the task does not take.
    """
    cls = _task_class(name)
    try:
        return cls(**options)
    except TypeError as e:  # an option the task's constructor does not take
        known = ", ".join(cls.option_docs()) or "none"
        raise ConfigError(f"bad option for task {name!r}: {e}; its options (-o KEY=VALUE): {known}") from None


def task_options(name: str) -> dict[str, str]:
    """The options task ``name`` takes (``-o KEY=VALUE``) and what each does."""
    return _task_class(name).option_docs()


def _task_class(name: str) -> type[Task]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}") from None


def parse_task_options(pairs: list[str]) -> dict[str, Any]:
    """``-o KEY=VALUE`` flags as task options; VALUE is read as JSON when it parses, else kept as text.

    Example:
        >>> parse_task_options(["circular=true", "image=img"])
        {'circular': True, 'image': 'img'}
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"task option {pair!r} is not KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options
