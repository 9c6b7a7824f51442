"""The training dataset: the one definition of its row, with its encoder and decoder side by side, and how a
search run becomes it.

A row is one chain (:mod:`trace_forge.linearize`) as a chat in TRL's conversational vision format, which
``trl.SFTTrainer`` trains on as loaded (:data:`COLUMNS` lists every column with its meaning):

- ``messages``: ``{"role", "content"}`` turns whose content is *always* a list of parts (``{"type": "text",
  "text"}`` or ``{"type": "image", "text": None}``); ``images``: the images in the order their parts appear.
- single-turn: system (the student prompt), user ``[image, question]``, one assistant turn with the whole chain
  (``<think>`` with every step, then ``<answer>``).
- multi-turn: system, user ``[image, question]``, then per zoom an assistant turn with its ``<tool_call>`` and a
  *user* turn ``["<tool_response>\\n", crop, observation, "\\n</tool_response>"]``, and a final answer turn. TRL
  fills image parts of user turns only, and our chat templates render a ``tool`` message as exactly this user
  turn, so SFT, GRPO's tool loop and evaluation show the model the same tokens.

Every point (in the text, ``steps`` and ``answer_point``) is in the row's ``frame``, which ``image_size`` and
``resize`` define: ``pixel`` (the default: model-agnostic), or a model's own frame when linearized for its
processor (``trace-forge linearize --processor DIR``), so plain TRL trains on the coordinates the model reads.
:class:`TraceRow` decodes a row, and :meth:`TraceRow.in_view` re-renders it in another frame from its structured
steps (crops re-cut where the model's zoom tool would cut them); ``grounded-rl sft`` does that for pixel datasets.

On disk (:func:`write_rows`, used by :func:`linearize_run`): the Hub repository layout, one copy::

    DIR/data/{split}-{i:05d}-of-{n:05d}.parquet     rows, written question by question
    DIR/README.md                                    the card (columns, frame, provenance, counts)
    DIR/provenance.json                              teacher, search parameters, per-category yield

``datasets.load_dataset(DIR)`` (or the Hub id after ``trace-forge publish``) reads it; :func:`load_traces` also
checks the row schema. The folder is built beside the target and renamed into place when complete, so a killed
write never replaces or half-writes a dataset.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, Literal

from datasets import Features, Image, List, Value
from PIL import Image as PILImage

from trace_forge.card import CARD, DATA_DIR, PROVENANCE, DataCounts, Provenance, render_card, teacher_label
from trace_forge.durable import OutputLock, check_version, write_atomic, write_json
from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import TOOL_RESPONSE, Box, Frame, ImageGeometry, Point, Resize, Step, View, zoom_on
from trace_forge.grounding.zoom import ZoomSpec
from trace_forge.linearize import Chain, ChainSource, LinearizeConfig, dialog_turns, linearize, plan_zooms
from trace_forge.search.records import QuestionRecord, read_questions
from trace_forge.search.store import RunStore
from trace_forge.tasks import AnswerKind, Sample, TaskSpec
from trace_forge.tasks.prompts import NORM1000_HINT, PROMPT_VERSION, prompts_for

__all__ = [
    "COLUMNS",
    "FEATURES",
    "MODES",
    "PIXEL_VIEW",
    "ROW_SCHEMA_VERSION",
    "Mode",
    "TraceRow",
    "linearize_run",
    "load_traces",
    "question_rows",
    "split_by_question",
    "write_rows",
]

log = logging.getLogger(__name__)

Mode = Literal["single", "multi"]
MODES: tuple[Mode, ...] = ("single", "multi")
ROW_SCHEMA_VERSION = 2
"""1: trace-forge 0.1.0 (``hf/`` + ``parquet/`` copies, points in pixels only, no question facts). 2: this layout."""

_MAX_SHARD_BYTES = 500 * 2**20
_EXIF_ORIENTATION = 0x0112

PIXEL_VIEW = View(Frame.PIXEL)  # points in pixels of the canvas: the model-agnostic default

_PART = {"type": Value("string"), "text": Value("string")}
_XY = {"x": Value("float64"), "y": Value("float64")}

COLUMNS: dict[str, tuple[Any, str]] = {
    "messages": (List({"role": Value("string"), "content": List(_PART)}),
                 "The chat (TRL's conversational format): system, user (canvas + question), assistant turns; in "
                 "multi-turn rows each zoom's crop comes back in a user turn wrapped in `<tool_response>` tags."),
    # mode="RGB": every reader decodes exactly the pixels the points were mined on.
    "images": (List(Image(mode="RGB")), "The sample canvas, then one crop per zoom, in the order of their image "
                                        "parts."),
    "schema_version": (Value("int32"), f"Row schema version ({ROW_SCHEMA_VERSION})."),
    "question_id": (Value("string"), "The question's id in its benchmark."),
    "task": (Value("string"), "The trace-forge task (benchmark) name."),
    "task_options": (Value("string"), "The task's options as a JSON object (e.g. a generic task's column map)."),
    "category": (Value("string"), "The benchmark's reporting category."),
    "question": (Value("string"), "The question or instruction, without options or format instructions."),
    "options": (List(Value("string")), "The choices of a multiple-choice question, in the order shown."),
    "answer_kind": (Value("string"), "`option`, `point` or `text`: how answers are judged."),
    "reference": (Value("string"), "The ground truth: the correct option's text or the reference answer (null "
                                   "for point questions, judged by `target_boxes`)."),
    "target_boxes": (List(List(Value("float64"))), "Target regions `[x1, y1, x2, y2]` in pixels of the canvas."),
    "frame": (Value("string"), "The frame of every point in the text, `steps` and `answer_point`: `pixel`, "
                               "`model` or `norm1000`."),
    "image_size": (List(Value("int32")), "The canvas `[width, height]` in pixels."),
    "resize": ({"min_pixels": Value("int64"), "max_pixels": Value("int64"), "factor": Value("int32")},
               "The processor resize that defines the `model` frame (smart_resize bounds); null otherwise."),
    "mode": (Value("string"), "`single` (one response) or `multi` (zoom dialog)."),
    "kind": (Value("string"), "`direct` or `backtracking`."),
    "steps": (List({"text": Value("string"), **_XY}), "Every grounded step in order: its text and point."),
    "connector": (Value("string"), "Backtracking rows: the sentence between the wrong and the right path."),
    "connector_index": (Value("int32"), "Backtracking rows: the number of steps before the connector."),
    "zoom_steps": (List(Value("int32")), "Multi-turn rows: the indices of the steps that zoom."),
    "answer": (Value("string"), "The final answer as written in the text."),
    "answer_point": (_XY, "A point answer, unrounded (null for other answers)."),
    "correct": (Value("bool"), "Whether the verifier judged the answer correct (always true: chains are correct)."),
    "reward": (Value("float64"), "The verifier's score of the answer."),
    "node_values": (List(Value("float64")), "MCTS mean values of the tree nodes on the chain's path, root first."),
    "source": (Value("string"), "JSON: the search run, tree node and rollout(s) the chain was read from."),
    "teacher": (Value("string"), "The teacher, `<backend>:<model>`."),
    "simulated": (Value("bool"), "Whether the teacher was trace-forge's simulator (not a real model)."),
    "prompt_version": (Value("string"), "Version of the prompt wording in `messages`."),
}
FEATURES = Features({name: feature for name, (feature, _) in COLUMNS.items()})
"""The columns of every trace-forge training dataset (train and validation, single- and multi-turn)."""


def _text(text: str) -> dict[str, str | None]:
    return {"type": "text", "text": text}


def _image_part() -> dict[str, str | None]:
    return {"type": "image", "text": None}


def _png(image: PILImage.Image) -> dict[str, Any]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _decoded(image: Any) -> PILImage.Image:
    """An image cell as PIL: already decoded, or ``{"bytes": ...}`` as written."""
    if isinstance(image, PILImage.Image):
        return image
    return PILImage.open(io.BytesIO(image["bytes"])).convert("RGB")


@cache
def _zoom_spec(task_key: str) -> ZoomSpec:
    return TaskSpec.from_dict(json.loads(task_key)).build().zoom


Cut = Callable[[PILImage.Image, Point, ImageGeometry, ZoomSpec], Any]


def _cut(canvas: PILImage.Image, point: Point, geometry: ImageGeometry, spec: ZoomSpec) -> PILImage.Image:
    return zoom_on(canvas, point, geometry, spec).image


@dataclass(frozen=True)
class TraceRow:
    """One decoded row: the question, the chain (points in ``view.frame``), and how it is shown.

    Attributes:
        sample: the question (its ``images`` are left empty; see ``images``); ``answer`` is the ground truth.
        task: the task spec.
        mode: ``single`` or ``multi``.
        view: the frame of the points and the resize that defines it.
        image_size: the canvas ``(width, height)`` in pixels.
        chain: the chain; its points are in ``view.frame``.
        zoom_steps: multi-turn: the steps that zoom.
        images: the canvas, then one crop per zoom step (PIL images, or ``{"bytes": ...}`` cells).
        teacher, simulated, prompt_version: provenance.
        source_run: the name of the search run the chain was read from.
    """

    sample: Sample
    task: TaskSpec
    mode: Mode
    view: View
    image_size: tuple[int, int]
    chain: Chain
    zoom_steps: tuple[int, ...]
    images: tuple[Any, ...]
    teacher: str
    simulated: bool
    prompt_version: str = PROMPT_VERSION
    source_run: str = ""

    @property
    def geometry(self) -> ImageGeometry:
        return self.view.geometry(*self.image_size)

    def image_sizes(self) -> list[tuple[int, int]]:
        """``(width, height)`` of each image, in order, read from the row (no image is decoded)."""
        out = _zoom_spec(self.task.key).out
        return [self.image_size, *[(out, out)] * len(self.zoom_steps)]

    # --- encoder -------------------------------------------------------------------------------------------

    def messages(self) -> list[dict[str, Any]]:
        """The chat, rendered from the structured chain in the row's frame."""
        prompts = prompts_for(self.sample.answer_kind)
        hint = NORM1000_HINT if self.view.frame is Frame.NORM1000 else None
        system = {"role": "system", "content": [_text(prompts.student_system(self.mode == "multi", hint))]}
        user = {"role": "user", "content": [_image_part(), _text(prompts.question_text(self.sample))]}
        if self.mode == "single":
            return [system, user, {"role": "assistant", "content": [_text(self.chain.render())]}]
        opening, closing = TOOL_RESPONSE
        dialog = []
        for turn in dialog_turns(self.chain, self.zoom_steps, prompts, dot=_zoom_spec(self.task.key).dot):
            if turn.zoom is None:
                dialog.append({"role": "assistant", "content": [_text(turn.text)]})
            else:
                parts = [_text(opening), _image_part(), _text(turn.text), _text(closing)]
                dialog.append({"role": "user", "content": parts})
        return [system, user, *dialog]

    def to_row(self) -> dict[str, Any]:
        """The row as stored (:data:`FEATURES`)."""
        chain, s = self.chain, self.sample
        resize = self.view.resize
        return {
            "messages": self.messages(),
            "images": list(self.images),
            "schema_version": ROW_SCHEMA_VERSION,
            "question_id": s.id,
            "task": self.task.name,
            "task_options": json.dumps(dict(self.task.options), sort_keys=True),
            "category": s.category,
            "question": s.question,
            "options": list(s.options),
            "answer_kind": s.answer_kind.value,
            "reference": s.answer,
            "target_boxes": [b.to_list() for b in s.target_boxes],
            "frame": self.view.frame.value,
            "image_size": list(self.image_size),
            "resize": None if resize is None else {"min_pixels": resize.min_pixels, "max_pixels": resize.max_pixels,
                                                   "factor": resize.factor},
            "mode": self.mode,
            "kind": chain.kind,
            "steps": [{"text": st.text, "x": st.point.x, "y": st.point.y} for st in chain.steps],
            "connector": chain.connector,
            "connector_index": chain.connector_index,
            "zoom_steps": list(self.zoom_steps),
            "answer": chain.answer,
            "answer_point": None if chain.answer_point is None else {"x": chain.answer_point.x,
                                                                     "y": chain.answer_point.y},
            "correct": chain.correct,
            "reward": chain.reward,
            "node_values": list(chain.node_values),
            "source": json.dumps({"run": self.source_run, "node": chain.source.node,
                                  "rollouts": list(chain.source.rollouts)}),
            "teacher": self.teacher,
            "simulated": self.simulated,
            "prompt_version": self.prompt_version,
        }

    # --- decoder -------------------------------------------------------------------------------------------

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, where: object = None) -> TraceRow:
        """Decode a stored row.

        Raises:
            DataError: a row of another schema version, or without a column of :data:`COLUMNS`.
        """
        _check_row_schema(row, where)
        missing = [name for name in COLUMNS if name not in row]
        if missing:
            raise DataError(f"not a trace-forge row: missing columns {missing}", path=where)
        frame = Frame(row["frame"])
        point = lambda d: Point(float(d["x"]), float(d["y"]), frame)  # noqa: E731
        source = json.loads(row["source"])
        answer_kind = AnswerKind(row["answer_kind"])
        chain = Chain(
            question_id=row["question_id"], kind=row["kind"],
            steps=tuple(Step(st["text"], point(st)) for st in row["steps"]),
            answer=row["answer"], correct=bool(row["correct"]), reward=float(row["reward"]),
            node_values=tuple(row["node_values"]), source=ChainSource(source["node"], tuple(source["rollouts"])),
            connector=row["connector"], connector_index=row["connector_index"],
            answer_point=point(row["answer_point"]) if row["answer_point"] is not None else None,
        )
        sample = Sample(
            id=row["question_id"], task=row["task"], images=[], question=row["question"], answer_kind=answer_kind,
            options=list(row["options"]), answer=row["reference"],
            target_boxes=[Box(*map(float, b)) for b in row["target_boxes"]], category=row["category"],
        )
        resize = Resize(**row["resize"]) if row["resize"] is not None else None
        return cls(
            sample=sample, task=TaskSpec(row["task"], json.loads(row["task_options"])), mode=row["mode"],
            view=View(frame, resize), image_size=(int(row["image_size"][0]), int(row["image_size"][1])),
            chain=chain, zoom_steps=tuple(row["zoom_steps"]), images=tuple(row["images"]),
            teacher=row["teacher"], simulated=bool(row["simulated"]), prompt_version=row["prompt_version"],
            source_run=source.get("run", ""),
        )

    # --- another frame -------------------------------------------------------------------------------------

    def in_view(self, view: View, *, canvas: PILImage.Image | None = None, cut: Cut | None = _cut) -> TraceRow:
        """This row as seen by a model of ``view``: every point converted from the structured steps (their
        literals rewritten), and, multi-turn, each crop cut again where that model's zoom tool cuts it (the
        zoom point as the model writes it, in its frame).

        Args:
            view: the target frame and resize.
            canvas: the canvas, when already decoded (else ``images[0]`` is decoded).
            cut: how a crop is made from ``(canvas, point, geometry, spec)`` (the dataset writer caches them);
                None cuts nothing and leaves None in the crops' places, for callers that need only the text
                (measuring lengths: :meth:`image_sizes` gives the sizes).
        """
        old, new = self.geometry, view.geometry(*self.image_size)
        chain = self.chain.map_points(lambda p: p.to(Frame.PIXEL, old).to(view.frame, new))
        images = self.images
        if self.zoom_steps and cut is None:
            images = (self.images[0], *[None] * len(self.zoom_steps))
        elif self.zoom_steps:
            canvas = canvas if canvas is not None else _decoded(self.images[0])
            spec = _zoom_spec(self.task.key)
            crops = [cut(canvas, Point(*chain.steps[i].point.rounded(), view.frame), new, spec)
                     for i in self.zoom_steps]
            images = (self.images[0], *crops)
        return replace(self, view=view, chain=chain, images=images)


def _check_row_schema(row: Mapping[str, Any], where: object) -> None:
    check_version(row, ROW_SCHEMA_VERSION, what="dataset rows", path=where,
                  remedy="re-run `trace-forge linearize` on the search run to rewrite the dataset")


# ------------------------------------------------------------------------------------------------------------
# From a search record to rows
# ------------------------------------------------------------------------------------------------------------


def _canvas_bytes(sample: Sample, canvas: PILImage.Image) -> dict[str, Any]:
    """The canvas cell: the original file when it decodes to exactly the canvas, else PNG.

    Keeping a single image file's own bytes avoids re-encoding a JPEG as a PNG several times its size. A file
    with an EXIF orientation is re-encoded, because ``datasets`` rotates such images when decoding while the
    canvas (and every mined point) uses the stored pixel order.
    """
    if len(sample.images) == 1 and isinstance(sample.images[0], str | Path):
        raw = Path(sample.images[0]).read_bytes()
        with PILImage.open(io.BytesIO(raw)) as original:
            if original.size == canvas.size and _EXIF_ORIENTATION not in original.getexif():
                return {"bytes": raw, "path": None}
    return _png(canvas)


def question_rows(
    record: QuestionRecord,
    sample: Sample,
    mode: Mode,
    config: LinearizeConfig | None = None,
    *,
    view: View = PIXEL_VIEW,
    run_id: str = "",
) -> list[dict[str, Any]]:
    """The rows of one question: one per chain of its tree, rendered in ``view``.

    Args:
        record: the question's ``trees.jsonl`` record.
        sample: its sample, images resolved (``record.question.sample(...)``).
        mode: ``"single"`` or ``"multi"``.
        config: linearization settings.
        view: the frame to write points in (default: pixels of the canvas).
        run_id: written into each row's ``source``.

    Raises:
        ConfigError: an unknown ``mode``.
        DataError: the canvas differs from the size the question was searched at.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    config = config or LinearizeConfig()
    canvas = sample.canvas()
    record.question.check_canvas(canvas)
    crops: dict[tuple[int, int, str], dict[str, Any]] = {}  # chains of a question share zoom points: cut each once

    def cut(image: PILImage.Image, point: Point, geometry: ImageGeometry, spec: ZoomSpec) -> dict[str, Any]:
        key = (*point.rounded(), point.frame.value)
        if key not in crops:
            crops[key] = _png(_cut(image, point, geometry, spec))
        return crops[key]

    teacher = record.teacher
    base = dict(
        sample=replace(sample, images=[]), task=record.question.task, mode=mode, view=PIXEL_VIEW,
        image_size=canvas.size, images=(_canvas_bytes(sample, canvas),), teacher=teacher_label(teacher),
        simulated=bool(teacher.get("simulated", False)), source_run=run_id,
    )
    rows = []
    for chain in linearize(record.tree, sample.id, config):
        zoom_steps = plan_zooms(chain.steps, config.max_zooms) if mode == "multi" else ()
        row = TraceRow(chain=chain, zoom_steps=zoom_steps, **base)
        if zoom_steps or view != row.view:
            row = row.in_view(view, canvas=canvas, cut=cut)
        rows.append(row.to_row())
    return rows


def split_by_question(
    keys: Iterable[tuple[str, str]], val_fraction: float = 0.05, seed: int = 0
) -> set[tuple[str, str]]:
    """The ``(task, question id)`` keys that go to the ``validation`` split; the rest train.

    Questions are ranked by a hash of ``(seed, task, question id)``, so the split depends neither on order nor
    on the other questions present: a question keeps its side when a run grows. The first
    ``round(n * val_fraction)`` go to validation; with at least two questions and ``val_fraction > 0`` at least
    one goes to each side.

    Raises:
        ValueError: unless ``0 <= val_fraction < 1``.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")

    def rank(key: tuple[str, str]) -> str:
        return hashlib.sha256(json.dumps([seed, *key]).encode()).hexdigest()

    questions = sorted(set(keys), key=rank)
    n_val = round(len(questions) * val_fraction)
    if val_fraction > 0 and len(questions) >= 2:
        n_val = min(max(n_val, 1), len(questions) - 1)
    return set(questions[:n_val])


# ------------------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------------------


class _SplitWriter:
    """The parquet shards of one split: one row group per question, a new shard past ``max_bytes`` or
    ``max_rows``; named ``{split}-{i:05d}-of-{n:05d}.parquet`` when closed."""

    def __init__(self, folder: Path, split: str, max_bytes: int, max_rows: int | None) -> None:
        self.folder, self.split, self.max_bytes, self.max_rows = folder, split, max_bytes, max_rows
        self.paths: list[Path] = []
        self._writer: Any = None
        self._bytes = self._rows = 0

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist([FEATURES.encode_example(r) for r in rows], schema=FEATURES.arrow_schema)
        full = self._bytes + table.nbytes > self.max_bytes or (
            self.max_rows is not None and self._rows + len(rows) > self.max_rows)
        if self._writer is None or (full and self._rows):
            self._close_current()
            self.paths.append(self.folder / f".{self.split}-{len(self.paths):05d}.parquet")
            # Dictionary pages large enough for images: the canvas repeats in every chain of a question (and crops
            # of shared zoom points too), and one row group holds one question, so each is stored once.
            self._writer = pq.ParquetWriter(self.paths[-1], FEATURES.arrow_schema, dictionary_pagesize_limit=2**30)
            self._bytes = self._rows = 0
        self._writer.write_table(table)
        self._bytes += table.nbytes
        self._rows += len(rows)

    def _close_current(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def close(self) -> list[str]:
        self._close_current()
        names = []
        for i, path in enumerate(self.paths):
            name = f"{self.split}-{i:05d}-of-{len(self.paths):05d}.parquet"
            path.rename(self.folder / name)
            names.append(f"{DATA_DIR}/{name}")
        return names


def write_rows(
    questions: Iterable[tuple[str, Sequence[dict[str, Any]]]],
    out_dir: str | Path,
    *,
    mode: Mode,
    provenance: Provenance,
    license_note: str = "",
    max_shard_bytes: int = _MAX_SHARD_BYTES,
    max_shard_rows: int | None = None,
    overwrite: bool = False,
) -> DataCounts:
    """Write rows, one question at a time, as a dataset folder (parquet shards, card, provenance).

    Only one question's rows are in memory at once. The folder is built as ``.{name}.writing`` beside ``out_dir``
    and renamed into place at the end; an earlier dataset there is replaced only then (with ``overwrite``).

    Args:
        questions: ``(split, rows)`` per question, rows in :data:`FEATURES` form.
        out_dir: the dataset folder.
        mode: ``single`` or ``multi`` (for the card).
        provenance: for ``provenance.json`` and the card.
        license_note: the source benchmark's licence note, for the card.
        max_shard_bytes: Arrow bytes per parquet shard at most (about 500 MB).
        max_shard_rows: rows per parquet shard at most (None: no row limit).
        overwrite: replace a dataset already in ``out_dir``.

    Raises:
        ConfigError: ``out_dir`` exists and ``overwrite`` is false.
        DataError: no rows at all.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite to replace it")
    tmp = out.with_name(f".{out.name}.writing")
    shutil.rmtree(tmp, ignore_errors=True)  # a killed write's leftover
    (tmp / DATA_DIR).mkdir(parents=True)
    writers: dict[str, _SplitWriter] = {}
    counts = DataCounts(mode)
    questions_by_split: dict[str, set[str]] = {}
    category_questions: dict[str, set[str]] = {}
    category_chains: Counter[str] = Counter()
    try:
        for split, rows in questions:
            if not rows:
                continue
            writer = writers.get(split) or writers.setdefault(
                split, _SplitWriter(tmp / DATA_DIR, split, max_shard_bytes, max_shard_rows))
            writer.write(rows)
            kinds = counts.rows.setdefault(split, Counter())
            for row in rows:
                kinds[row["kind"]] += 1
                questions_by_split.setdefault(split, set()).add(row["question_id"])
                category_questions.setdefault(row["category"], set()).add(row["question_id"])
                category_chains[row["category"]] += 1
        if not writers:
            raise DataError("no tree holds a correct grounded trajectory: no rows to write", path=out)
        counts.files = {split: writers[split].close() for split in sorted(writers)}
        counts.rows = {split: counts.rows[split] for split in sorted(counts.rows)}
        counts.questions = {split: len(ids) for split, ids in sorted(questions_by_split.items())}
        counts.categories = {c: {"questions": len(category_questions[c]), "chains": category_chains[c]}
                             for c in sorted(category_chains)}
        write_json(tmp / PROVENANCE, provenance.to_dict())
        columns = {name: doc for name, (_, doc) in COLUMNS.items()}
        write_atomic(tmp / CARD, render_card(provenance, counts, columns, license_note=license_note))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    log.info("wrote %s: %s", out, ", ".join(f"{s}: {sum(k.values())} rows" for s, k in counts.rows.items()))
    return counts


def _natural_key(question_id: str) -> list[Any]:
    """``q9`` before ``q10``: ids in the order a person reads them, whatever order the search finished them."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", question_id)]


def linearize_run(
    run_dir: str | Path,
    out_dir: str | Path,
    mode: Mode,
    config: LinearizeConfig | None = None,
    *,
    view: View = PIXEL_VIEW,
    data_dir: str | Path | None = None,
    val_fraction: float = 0.05,
    overwrite: bool = False,
) -> DataCounts:
    """Turn a search run directory into a training dataset folder.

    Reads ``run.json`` and ``trees.jsonl`` (every question's text, options, ground truth and image references
    are in its record: the benchmark is not reloaded), linearizes every tree, splits by question (``config.seed``)
    and writes the rows question by question with :func:`write_rows`, in question-id order, so linearizing the
    same run always gives the same dataset.

    Args:
        run_dir: the search run directory.
        out_dir: the dataset folder to write.
        mode: ``"single"`` or ``"multi"``.
        config: linearization settings (its ``seed`` also seeds the split).
        view: the frame to write points in: pixels (default), or a model's (``View.of_checkpoint``).
        data_dir: where the task data is now, when it moved since the run (default: ``run.json``'s).
        val_fraction: share of questions in the validation split.
        overwrite: replace an earlier dataset in ``out_dir``.

    Raises:
        DataError: no ``run.json``, no finished question, no chain at all, or a question whose images are
            missing or changed (named by its ``trees.jsonl`` line).
        ConfigError: ``out_dir`` exists and ``overwrite`` is false, or another process writes it.
    """
    from trace_forge.search.store import TREES

    config = config or LinearizeConfig()
    run_dir = Path(run_dir)
    store = RunStore(run_dir)
    run = store.read_run()
    if run is None:
        raise DataError(f"not a search run directory (no {store.run_path.name})", path=run_dir)
    if Path(out_dir).exists() and not overwrite:
        raise ConfigError(f"{out_dir} already exists; pass --overwrite to replace it")
    records = read_questions(run_dir / TREES)
    if not records:
        raise DataError("no finished question to linearize", path=run_dir / TREES)
    records.sort(key=lambda pair: _natural_key(pair[1].id))
    validation = split_by_question(((r.question.task.name, r.id) for _, r in records), val_fraction, config.seed)
    data = data_dir if data_dir is not None else run.data_dir

    def questions() -> Iterator[tuple[str, list[dict[str, Any]]]]:
        for line, record in records:
            try:
                sample = record.question.sample(run_dir, data)
                rows = question_rows(record, sample, mode, config, view=view, run_id=run_dir.name)
            except DataError as e:
                raise DataError(f"question {record.id!r}: {e}", path=store.trees_path, line=line) from e
            yield ("validation" if (record.question.task.name, record.id) in validation else "train"), rows

    provenance = Provenance.of_run(run_dir, run, view.to_dict())
    with OutputLock(out_dir, "linearize"):
        return write_rows(questions(), out_dir, mode=mode, provenance=provenance,
                          license_note=run.task.build().license_note, overwrite=overwrite)


# ------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------


def load_traces(source: str | Path, split: str = "train") -> Any:
    """One split of a trace dataset (a folder written by ``linearize``, or its Hub id), its schema checked.

    Returns:
        The split as a :class:`datasets.Dataset` (exactly what ``datasets.load_dataset`` gives).

    Raises:
        DataError: the folder holds no trace dataset, an older layout, or rows of another schema version; the
            split is absent.
    """
    from datasets import load_dataset

    path = Path(source)
    if path.exists():
        if (path / "hf").is_dir() or (path / "parquet").is_dir():
            raise DataError("a dataset written by trace-forge 0.1.0 (row schema 1: hf/ and parquet/ copies); "
                            "re-run `trace-forge linearize` on its search run", path=path)
        files = sorted((path / DATA_DIR).glob(f"{split}-*.parquet")) if path.is_dir() else []
        if not files:
            found = sorted({p.name.split("-", 1)[0] for p in (path / DATA_DIR).glob("*.parquet")})
            raise DataError(f"no split {split!r} here (splits: {found or 'none: not a trace-forge dataset'})",
                            path=path)
        dataset = load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split)
    else:
        dataset = load_dataset(str(source), split=split)
    missing = [name for name in COLUMNS if name not in dataset.column_names]
    if "schema_version" not in dataset.column_names or missing:
        if "schema_version" not in dataset.column_names:
            _check_row_schema({}, source)
        raise DataError(f"not a trace-forge dataset: missing columns {missing}", path=source)
    versions = set(dataset.unique("schema_version"))
    for version in versions:
        _check_row_schema({"schema_version": version}, source)
    return dataset
