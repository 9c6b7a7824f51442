"""The two records a search writes and every later stage reads, each with its one encoder and decoder.

- :class:`RunRecord` is ``run.json``: how the run was made (task, search parameters, teacher, versions) and what it
  spent (teacher usage per session).
- :class:`QuestionRecord` is one line of ``trees.jsonl``: the question as it was asked (:class:`Question`: text,
  options, ground truth, target boxes, the images it was asked about and their size) with its search tree.

Whether each step of a tree lands on a target box (:meth:`QuestionRecord.step_grounding`) is derived from the
record, not stored: every step's point and every target box are already in the pixel frame of the canvas, so the
flags follow whatever margin a reader asks for, and runs searched before the measure existed have it too.

A record carries everything later stages need, so linearization, ``show``, ``stats`` and GRPO never reload the
benchmark to learn what was asked. Images are referenced, not copied: a file of the task data by its path
relative to the run's ``data_dir`` (so data that moved can be pointed at again), any other file by its absolute
path, and an image that has no file (decoded from a parquet cell) is written once into the run folder
(``images/<sha256>.png``). Every reference keeps the SHA-256 of the bytes it names, so a changed file is an
error instead of a silently different picture.

Both records carry ``schema_version`` (:data:`SCHEMA_VERSION`); a file of another version is refused with a
message naming both versions.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from trace_forge.durable import check_version, read_records, write_atomic
from trace_forge.errors import DataError
from trace_forge.grounding import Box
from trace_forge.search.tree import Tree
from trace_forge.tasks import AnswerKind, Sample, TaskSpec, on_target

__all__ = [
    "SCHEMA_VERSION",
    "ImageSource",
    "Question",
    "QuestionRecord",
    "RunRecord",
    "StepGrounding",
    "check_schema",
    "read_questions",
    "store_images",
]

SCHEMA_VERSION = 2
"""Version of ``run.json`` and ``trees.jsonl`` records. 1: trace-forge 0.1.0, whose records named the task and the
question id only (stages reloaded the benchmark). 2: records carry the question, its images and the task spec."""

IMAGES_DIR = "images"


def check_schema(data: Mapping[str, Any], what: str, *, path: object = None, line: int | None = None) -> None:
    """Raise :class:`DataError` unless ``data`` is of :data:`SCHEMA_VERSION` (a record without one is version 1)."""
    check_version(data, SCHEMA_VERSION, what=what, remedy="re-run the search into a new --out to get it",
                  path=path, line=line)


# ------------------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageSource:
    """Where one image of a question is, and the SHA-256 of its bytes.

    Attributes:
        path: relative to the run's ``data_dir`` (``base="data"``) or to the run folder (``"run"``), or absolute
            (``"file"``).
        base: what ``path`` is relative to.
        sha256: hex digest of the file's bytes.
    """

    path: str
    base: Literal["data", "run", "file"]
    sha256: str

    def resolve(self, run_dir: Path, data_dir: str | Path | None) -> Path:
        """The file, checked to exist and to hold the bytes it held when the question was searched.

        Raises:
            DataError: the file is missing (for task data: pass the folder it moved to as ``--data-dir``) or
                changed.
        """
        if self.base == "data":
            if data_dir is None:
                raise DataError(f"image {self.path!r} is relative to the task data, but no data folder is known; "
                                "pass --data-dir")
            path = Path(data_dir) / self.path
        elif self.base == "run":
            path = Path(run_dir) / self.path
        else:
            path = Path(self.path)
        try:
            data = path.read_bytes()
        except OSError as e:
            hint = "; pass the task data's new folder as --data-dir" if self.base == "data" else ""
            raise DataError(f"image not found ({e.strerror or e}){hint}", path=path) from None
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise DataError("image changed since the search (its SHA-256 differs); restore it or search again",
                            path=path)
        return path

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ImageSource:
        return cls(str(d["path"]), d["base"], str(d["sha256"]))


def store_images(sample: Sample, run_dir: Path, data_dir: str | Path | None) -> list[ImageSource]:
    """References to ``sample``'s images; images without a file are written into ``run_dir/images`` first.

    Example:
        >>> import tempfile
        >>> s = Sample("q", "vstar", [Image.new("RGB", (4, 4))], "?", AnswerKind.TEXT, answer="x")
        >>> with tempfile.TemporaryDirectory() as run:
        ...     [(src.base, src.path.startswith("images/")) for src in store_images(s, Path(run), None)]
        [('run', True)]
    """
    root = Path(data_dir).resolve() if data_dir is not None else None
    sources = []
    for image in sample.images:
        if isinstance(image, Image.Image):
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            data = buffer.getvalue()
            digest = hashlib.sha256(data).hexdigest()
            rel = f"{IMAGES_DIR}/{digest}.png"
            target = Path(run_dir) / rel
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(target, data)
            sources.append(ImageSource(rel, "run", digest))
            continue
        path = Path(image).resolve()
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if root is not None and path.is_relative_to(root):
            sources.append(ImageSource(path.relative_to(root).as_posix(), "data", digest))
        else:
            sources.append(ImageSource(str(path), "file", digest))
    return sources


# ------------------------------------------------------------------------------------------------------------
# The question
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Question:
    """A searched question: the :class:`~trace_forge.tasks.Sample` facts, with its images as references.

    Attributes:
        id, text, answer_kind, options, answer, category, source, meta: as the sample's (``text`` is its question).
        task: the task the sample came from, with its options.
        target_boxes: target regions in the pixel frame of the canvas.
        images: the sample's images, in order (composed side by side into the canvas).
        image_size: the canvas ``(width, height)``: the pixel frame of every stored point.
    """

    id: str
    task: TaskSpec
    text: str
    answer_kind: AnswerKind
    images: list[ImageSource]
    image_size: tuple[int, int]
    options: list[str] = field(default_factory=list)
    answer: str | None = None
    target_boxes: list[Box] = field(default_factory=list)
    category: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, sample: Sample, task: TaskSpec, images: Sequence[ImageSource], image_size: tuple[int, int]) -> Question:
        return cls(
            id=sample.id, task=task, text=sample.question, answer_kind=sample.answer_kind, images=list(images),
            image_size=(int(image_size[0]), int(image_size[1])), options=list(sample.options), answer=sample.answer,
            target_boxes=list(sample.target_boxes), category=sample.category, source=sample.source,
            meta=dict(sample.meta),
        )

    def sample(self, run_dir: Path, data_dir: str | Path | None) -> Sample:
        """The sample again, its images resolved to their (checked) files.

        Raises:
            DataError: an image is missing or changed.
        """
        return Sample(
            id=self.id, task=self.task.name, images=[src.resolve(run_dir, data_dir) for src in self.images],
            question=self.text, answer_kind=self.answer_kind, options=list(self.options), answer=self.answer,
            target_boxes=list(self.target_boxes), category=self.category, source=self.source, meta=dict(self.meta),
        )

    def check_canvas(self, canvas: Image.Image) -> None:
        """Raise :class:`DataError` unless ``canvas`` has the size the question was searched at (its points would
        land elsewhere)."""
        if canvas.size != tuple(self.image_size):
            raise DataError(f"question {self.id!r}: the canvas is {canvas.size[0]}x{canvas.size[1]} but the search "
                            f"saw {self.image_size[0]}x{self.image_size[1]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task": self.task.to_dict(),
            "text": self.text,
            "answer_kind": self.answer_kind.value,
            "options": list(self.options),
            "answer": self.answer,
            "target_boxes": [b.to_list() for b in self.target_boxes],
            "category": self.category,
            "source": self.source,
            "meta": self.meta,
            "images": [src.to_dict() for src in self.images],
            "image_size": list(self.image_size),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Question:
        width, height = d["image_size"]
        return cls(
            id=str(d["id"]), task=TaskSpec.from_dict(d["task"]), text=d["text"], answer_kind=AnswerKind(d["answer_kind"]),
            images=[ImageSource.from_dict(src) for src in d["images"]], image_size=(int(width), int(height)),
            options=list(d.get("options") or []), answer=d.get("answer"),
            target_boxes=[Box(*map(float, b)) for b in d.get("target_boxes") or []],
            category=d.get("category") or "", source=d.get("source") or "", meta=dict(d.get("meta") or {}),
        )


@dataclass(frozen=True)
class StepGrounding:
    """Whether each step of a question's tree is on target (:func:`~trace_forge.tasks.on_target`).

    Attributes:
        margin: the margin the flags were computed with, in pixels of the canvas.
        nodes: tree node id -> whether its step is on target (nodes with a step only).
        rollouts: ``(node id, rollout index)`` -> whether each of the rollout's steps is on target, in order.
    """

    margin: float
    nodes: dict[int, bool]
    rollouts: dict[tuple[int, int], tuple[bool, ...]]


@dataclass
class QuestionRecord:
    """One ``trees.jsonl`` line: a question, its search tree, the teacher that wrote it and what it cost.

    Attributes:
        question: the question as asked.
        tree: the search tree; points in the pixel frame of the canvas.
        teacher: the teacher's description (``backend``, ``model``, ``simulated``, ...).
        prompt_version: version of the teacher prompts.
        stats: the search's counters for this question (requests, tokens, dead samples, stop reason, ...).
    """

    question: Question
    tree: Tree
    teacher: dict[str, Any]
    prompt_version: str
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.question.id

    def step_grounding(self, margin: float = 0.0) -> StepGrounding | None:
        """Whether every step of the tree (tree nodes and rollout steps) lands on a target box grown by ``margin``
        pixels; None for a question without target boxes, where grounding precision does not apply."""
        boxes = self.question.target_boxes
        if not boxes:
            return None
        nodes = self.tree.nodes
        return StepGrounding(
            margin,
            {n.id: on_target(n.step.point, boxes, margin) for n in nodes if n.step is not None},
            {(n.id, i): tuple(on_target(s.point, boxes, margin) for s in r.steps)
             for n in nodes for i, r in enumerate(n.rollouts)},
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "question": self.question.to_dict(),
            "teacher": self.teacher,
            "prompt_version": self.prompt_version,
            "stats": self.stats,
            "tree": self.tree.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, path: object = None, line: int | None = None) -> QuestionRecord:
        """Decode one line; a record of another schema version or a malformed one is a :class:`DataError`."""
        check_schema(d, "trees.jsonl record", path=path, line=line)
        try:
            return cls(
                question=Question.from_dict(d["question"]), tree=Tree.from_dict(d["tree"]), teacher=dict(d["teacher"]),
                prompt_version=str(d["prompt_version"]), stats=dict(d.get("stats") or {}),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"malformed trees.jsonl record ({type(e).__name__}: {e})", path=path, line=line) from None


def read_questions(path: Path, *, repair: bool = False) -> list[tuple[int, QuestionRecord]]:
    """``(line number, record)`` of each question of a ``trees.jsonl``, the last record of a question winning
    (merged shards and resumed runs may repeat one), in line order. A missing file has no questions.

    :func:`~trace_forge.durable.read_records` yields one record per non-blank line in order (a torn last line is
    dropped at the end), so pairing its records with the non-blank line numbers names each record's line exactly.
    With ``repair``, a torn last line is cut off the file.

    Raises:
        DataError: a record is corrupt, malformed or of another schema version (naming its line).
    """
    if not path.exists():
        return []
    lines = [i for i, raw in enumerate(path.read_bytes().split(b"\n"), start=1) if raw.strip()]
    latest: dict[str, tuple[int, QuestionRecord]] = {}
    for line, raw in zip(lines, list(read_records(path, repair=repair)), strict=False):
        record = QuestionRecord.from_dict(raw, path=path, line=line)
        latest[record.id] = (line, record)
    return sorted(latest.values(), key=lambda pair: pair[0])


# ------------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------------


@dataclass
class RunRecord:
    """``run.json``: how a search run was made and what its teacher cost.

    Attributes:
        task: the task and its options.
        params: the search parameters (``SearchConfig`` fields).
        teacher: the teacher's description and image resize (``base_urls`` say where it was served).
        prompt_version: version of the teacher prompts.
        data_dir: the task data folder (absolute), or None for the task's Hub dataset.
        split, limit, shard: which questions were searched.
        command: the command line that started the run.
        versions: package versions of the search.
        started: when the first session started (UTC, ISO 8601).
        sessions: one entry per search or resume: ``started``, ``finished`` and that session's teacher ``usage``.
        usage: the teacher usage summed over sessions (shards, for a merged run).
        shards: for a merged run, each shard's path, question count and own ``run.json``.
    """

    task: TaskSpec
    params: dict[str, Any]
    teacher: dict[str, Any]
    prompt_version: str
    data_dir: str | None = None
    split: str | None = None
    limit: int | None = None
    shard: str | None = None
    command: str = ""
    versions: dict[str, Any] = field(default_factory=dict)
    started: str | None = None
    sessions: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    shards: list[dict[str, Any]] | None = None

    # What must match between a run and its resumption, and between the shards of one run (``teacher`` is
    # compared without where it is served: see :func:`teacher_settings`).
    IDENTITY = ("task", "data_dir", "split", "params", "teacher", "prompt_version")

    def identity(self) -> dict[str, Any]:
        from trace_forge.teachers.runtime import teacher_settings

        ident = {name: getattr(self, name) for name in self.IDENTITY}
        ident["task"] = self.task.to_dict()
        ident["teacher"] = teacher_settings(self.teacher)
        return ident

    def differences(self, other: RunRecord, names: Sequence[str] = IDENTITY) -> list[str]:
        """The identity fields (of ``names``) that differ, each teacher setting named on its own
        (``teacher.skill``), with both values: ``"params.simulations: 8 -> 4"``."""
        mine, theirs = self.identity(), other.identity()
        changed = []
        for name in names:
            a, b = mine[name], theirs[name]
            if name in ("teacher", "params"):
                changed += [f"{name}.{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(a.keys() | b.keys())
                            if a.get(k) != b.get(k)]
            elif a != b:
                changed.append(f"{name}: {a!r} -> {b!r}")
        return changed

    def to_dict(self) -> dict[str, Any]:
        out = {"schema_version": SCHEMA_VERSION, **asdict(self), "task": self.task.to_dict()}
        if self.shards is None:
            del out["shards"]
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, path: object = None) -> RunRecord:
        check_schema(d, "run.json", path=path)
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        try:
            return cls(**{**known, "task": TaskSpec.from_dict(d["task"])})
        except (KeyError, TypeError) as e:
            raise DataError(f"malformed run.json ({type(e).__name__}: {e})", path=path) from None

