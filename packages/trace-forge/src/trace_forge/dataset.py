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

Two more row kinds come out of the same trees (:func:`~trace_forge.linearize.preference_pairs` and
:func:`~trace_forge.linearize.step_paths`), each with its own columns (:data:`PREFERENCE_COLUMNS`,
:data:`STEPWISE_COLUMNS`), encoder and decoder (:class:`PreferenceRow`, :class:`StepwiseRow`), the same question and
frame columns, and the same writer:

- ``preference``: TRL's conversational preference format with an image, which ``trl.DPOTrainer`` trains on as
  loaded: ``prompt`` (system, user ``[image, question]``), ``chosen`` and ``rejected`` (one assistant turn each),
  ``images`` (the canvas). The grounded prefix the two branches share is written at the start of *both* responses,
  not as an assistant turn in the prompt: TRL renders a prompt ending in an assistant message as a turn of its own
  and the response as the next one, which would teach the model to end its turn mid-thought. DPO's loss is a
  difference of chosen and rejected log-ratios, so the shared prefix tokens cancel out of it exactly.
- ``stepwise``: TRL's stepwise-supervision format: ``prompt`` (the question, plain text), ``completions`` (the
  grounded steps), ``labels`` (each step's MCTS value at least ``label_threshold``), plus ``images``.

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
from dataclasses import asdict, dataclass, replace
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from datasets import Features, Image, List, Value
from PIL import Image as PILImage

from trace_forge.card import CARD, DATA_DIR, PROVENANCE, DataCounts, Provenance, render_card, teacher_label
from trace_forge.durable import OutputLock, check_version, write_atomic, write_json
from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import TOOL_RESPONSE, Box, Frame, ImageGeometry, Point, Resize, Step, View, zoom_on
from trace_forge.grounding.zoom import ZoomSpec
from trace_forge.linearize import (
    MODES,
    SFT_MODES,
    Chain,
    ChainSource,
    LinearizeConfig,
    Mode,
    Pair,
    StepPath,
    dialog_turns,
    linearize,
    plan_zooms,
    preference_pairs,
    step_paths,
)
from trace_forge.search.records import QuestionRecord, read_questions
from trace_forge.search.store import RunStore
from trace_forge.tasks import AnswerKind, Sample, TaskSpec
from trace_forge.tasks.prompts import NORM1000_HINT, PROMPT_VERSION, prompts_for

__all__ = [
    "COLUMNS",
    "FEATURES",
    "MODES",
    "PIXEL_VIEW",
    "PREFERENCE_COLUMNS",
    "PREFERENCE_FEATURES",
    "PREFERENCE_ROWS",
    "PREFERENCE_SCHEMA_VERSION",
    "ROW_SCHEMA_VERSION",
    "ROWS",
    "SFT_MODES",
    "STEPWISE_COLUMNS",
    "STEPWISE_FEATURES",
    "STEPWISE_ROWS",
    "STEPWISE_SCHEMA_VERSION",
    "TRACE_ROWS",
    "Mode",
    "PreferenceRow",
    "RowSchema",
    "StepwiseRow",
    "TraceRow",
    "linearize_run",
    "load_traces",
    "question_rows",
    "split_by_question",
    "write_rows",
]

log = logging.getLogger(__name__)

ROW_SCHEMA_VERSION = 2
"""1: trace-forge 0.1.0 (``hf/`` + ``parquet/`` copies, points in pixels only, no question facts). 2: this layout."""
PREFERENCE_SCHEMA_VERSION = 1
"""Version of preference rows. 1: this layout."""
STEPWISE_SCHEMA_VERSION = 1
"""Version of stepwise rows. 1: this layout."""

_MAX_SHARD_BYTES = 500 * 2**20
_EXIF_ORIENTATION = 0x0112

PIXEL_VIEW = View(Frame.PIXEL)  # points in pixels of the canvas: the model-agnostic default

_PART = {"type": Value("string"), "text": Value("string")}
_XY = {"x": Value("float64"), "y": Value("float64")}
_MESSAGES = List({"role": Value("string"), "content": List(_PART)})
_STEPS = List({"text": Value("string"), **_XY})
# mode="RGB": every reader decodes exactly the pixels the points were mined on.
_IMAGES = List(Image(mode="RGB"))

# The columns every row kind shares: the question as asked, the frame of its points, and where it came from.
_QUESTION_COLUMNS: dict[str, tuple[Any, str]] = {
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
}


def _frame_columns(points: str) -> dict[str, tuple[Any, str]]:
    return {
        "frame": (Value("string"), f"The frame of every point in {points}: `pixel`, `model` or `norm1000`."),
        "image_size": (List(Value("int32")), "The canvas `[width, height]` in pixels."),
        "resize": ({"min_pixels": Value("int64"), "max_pixels": Value("int64"), "factor": Value("int32")},
                   "The processor resize that defines the `model` frame (smart_resize bounds); null otherwise."),
    }


def _provenance_columns(text: str) -> dict[str, tuple[Any, str]]:
    return {
        "teacher": (Value("string"), "The teacher, `<backend>:<model>`."),
        "simulated": (Value("bool"), "Whether the teacher was trace-forge's simulator (not a real model)."),
        "prompt_version": (Value("string"), f"Version of the prompt wording in {text}."),
    }


COLUMNS: dict[str, tuple[Any, str]] = {
    "messages": (_MESSAGES, "The chat (TRL's conversational format): system, user (canvas + question), assistant "
                            "turns; in multi-turn rows each zoom's crop comes back in a user turn wrapped in "
                            "`<tool_response>` tags."),
    "images": (_IMAGES, "The sample canvas, then one crop per zoom, in the order of their image parts."),
    "schema_version": (Value("int32"), f"Row schema version ({ROW_SCHEMA_VERSION})."),
    **_QUESTION_COLUMNS,
    **_frame_columns("the text, `steps` and `answer_point`"),
    "mode": (Value("string"), "`single` (one response) or `multi` (zoom dialog)."),
    "kind": (Value("string"), "`direct` or `backtracking`."),
    "steps": (_STEPS, "Every grounded step in order: its text and point."),
    "connector": (Value("string"), "Backtracking rows: the sentence between the wrong and the right path."),
    "connector_index": (Value("int32"), "Backtracking rows: the number of steps before the connector."),
    "zoom_steps": (List(Value("int32")), "Multi-turn rows: the indices of the steps that zoom."),
    "answer": (Value("string"), "The final answer as written in the text."),
    "answer_point": (_XY, "A point answer, unrounded (null for other answers)."),
    "correct": (Value("bool"), "Whether the verifier judged the answer correct (always true: chains are correct)."),
    "reward": (Value("float64"), "The verifier's score of the answer."),
    "node_values": (List(Value("float64")), "MCTS mean values of the tree nodes on the chain's path, root first."),
    "source": (Value("string"), "JSON: the search run, tree node and rollout(s) the chain was read from."),
    **_provenance_columns("`messages`"),
}
FEATURES = Features({name: feature for name, (feature, _) in COLUMNS.items()})
"""The columns of every trace-forge training dataset (train and validation, single- and multi-turn)."""

PREFERENCE_COLUMNS: dict[str, tuple[Any, str]] = {
    "prompt": (_MESSAGES, "The prompt (TRL's conversational preference format): system (the student prompt), user "
                          "(canvas + question)."),
    "chosen": (_MESSAGES, "The correct response, one assistant turn: `<think>` with every grounded step (the shared "
                          "prefix first), then `<answer>`."),
    "rejected": (_MESSAGES, "The wrong response, one assistant turn written the same way, from the same shared "
                            "prefix."),
    "images": (_IMAGES, "The sample canvas (the prompt's image part)."),
    "schema_version": (Value("int32"), f"Row schema version ({PREFERENCE_SCHEMA_VERSION})."),
    **_QUESTION_COLUMNS,
    **_frame_columns("the text, `chosen_steps`, `rejected_steps` and the answer points"),
    "node": (Value("int32"), "The search-tree node where the two responses part: the deepest node on both paths."),
    "node_value": (Value("float64"), "That node's MCTS value: the mean reward of every trajectory through it."),
    "prefix_length": (Value("int32"), "How many leading steps the two responses share (the path to `node`)."),
    "chosen_steps": (_STEPS, "Every grounded step of the chosen response in order: its text and point."),
    "rejected_steps": (_STEPS, "Every grounded step of the rejected response in order."),
    "chosen_answer": (Value("string"), "The chosen response's final answer as written."),
    "rejected_answer": (Value("string"), "The rejected response's final answer as written."),
    "chosen_answer_point": (_XY, "A point answer of the chosen response, unrounded (null for other answers)."),
    "rejected_answer_point": (_XY, "A point answer of the rejected response, unrounded (null for other answers)."),
    "chosen_reward": (Value("float64"), "The verifier's score of the chosen answer (1)."),
    "rejected_reward": (Value("float64"), "The verifier's score of the rejected answer (below 1)."),
    "source": (Value("string"), "JSON: the search run, the parting node, and the node and rollout each response "
                                "was read from."),
    **_provenance_columns("`prompt`, `chosen` and `rejected`"),
}
PREFERENCE_FEATURES = Features({name: feature for name, (feature, _) in PREFERENCE_COLUMNS.items()})
"""The columns of a preference dataset (``linearize --mode preference``)."""

STEPWISE_COLUMNS: dict[str, tuple[Any, str]] = {
    "prompt": (Value("string"), "The question as the model reads it (TRL's stepwise-supervision format: plain "
                                "text); its image is `images[0]`."),
    "completions": (List(Value("string")), "The grounded steps in order, each its text with its point `(x, y)`."),
    "labels": (List(Value("bool")), "Per step: whether its node's MCTS value is at least `label_threshold`."),
    "images": (_IMAGES, "The sample canvas."),
    "schema_version": (Value("int32"), f"Row schema version ({STEPWISE_SCHEMA_VERSION})."),
    **_QUESTION_COLUMNS,
    **_frame_columns("`completions` and `steps`"),
    "steps": (_STEPS, "The same steps, structured: text and point."),
    "values": (List(Value("float64")), "Per step: its search-tree node's MCTS value, the mean reward of every "
                                       "trajectory backed up through it."),
    "visits": (List(Value("int32")), "Per step: how many trajectories its value averages."),
    "label_threshold": (Value("float64"), "The value at or above which a step is labelled good (True)."),
    "source": (Value("string"), "JSON: the search run and the tree node of each step."),
    **_provenance_columns("`prompt`"),
}
STEPWISE_FEATURES = Features({name: feature for name, (feature, _) in STEPWISE_COLUMNS.items()})
"""The columns of a stepwise-supervision dataset (``linearize --mode stepwise``)."""


@dataclass(frozen=True)
class RowSchema:
    """One kind of dataset row: its columns (feature and meaning), its schema version, and what a row is called.

    Attributes:
        name: how messages name the rows (``trace``, ``preference``, ``stepwise``).
        columns: every column with its feature and description, in order.
        version: the ``schema_version`` its rows carry.
        unit: what one row is, for counts and cards (``chains``, ``pairs``, ``sequences``).
        empty: why a run can give no row at all.
    """

    name: str
    columns: Mapping[str, tuple[Any, str]]
    version: int
    unit: str
    empty: str

    @cached_property
    def features(self) -> Features:
        return Features({name: feature for name, (feature, _) in self.columns.items()})

    def check(self, columns: Iterable[str], versions: Iterable[int], where: object) -> None:
        """Raise :class:`DataError` unless rows with these columns and ``schema_version`` values are of this schema:
        rows of another kind are named as such, then a version is checked, then every column must be there."""
        names = set(columns)
        missing = [name for name in self.columns if name not in names]
        other = next((s for s in ROWS.values() if s is not self and set(s.columns) <= names), None)
        if missing and other is not None:
            raise DataError(f"it holds {other.name} rows, not {self.name} rows", path=where)
        for found in versions:
            check_version({"schema_version": found}, self.version, what=f"{self.name} rows", path=where,
                          remedy="re-run `trace-forge linearize` on the search run to rewrite the dataset")
        if missing:
            raise DataError(f"not {self.name} rows (not a trace-forge dataset?): missing columns {missing}",
                            path=where)

    def check_row(self, row: Mapping[str, Any], where: object) -> None:
        """:meth:`check` of one row (a row without ``schema_version`` is version 1)."""
        self.check(row, [row.get("schema_version", 1)], where)


TRACE_ROWS = RowSchema("trace", COLUMNS, ROW_SCHEMA_VERSION, "chains",
                       "no tree holds a correct grounded trajectory (that passes --min-grounding)")
PREFERENCE_ROWS = RowSchema("preference", PREFERENCE_COLUMNS, PREFERENCE_SCHEMA_VERSION, "pairs",
                            "no tree holds both a correct grounded trajectory (that passes --min-grounding) and a "
                            "wrong one the teacher answered")
STEPWISE_ROWS = RowSchema("stepwise", STEPWISE_COLUMNS, STEPWISE_SCHEMA_VERSION, "sequences",
                          "no tree holds a step node that was evaluated")
ROWS: dict[Mode, RowSchema] = {"single": TRACE_ROWS, "multi": TRACE_ROWS, "preference": PREFERENCE_ROWS,
                               "stepwise": STEPWISE_ROWS}
"""The row schema each ``linearize`` mode writes."""


def _text(text: str) -> dict[str, str | None]:
    return {"type": "text", "text": text}


def _image_part() -> dict[str, str | None]:
    return {"type": "image", "text": None}


def _assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [_text(text)]}


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


# --- the columns every row kind shares: encoders and decoders side by side ------------------------------------


def _prompt(sample: Sample, view: View, multi_turn: bool) -> list[dict[str, Any]]:
    """System (the student prompt, worded for ``view``'s frame) and user (canvas + question) messages."""
    prompts = prompts_for(sample.answer_kind)
    hint = NORM1000_HINT if view.frame is Frame.NORM1000 else None
    return [{"role": "system", "content": [_text(prompts.student_system(multi_turn, hint))]},
            {"role": "user", "content": [_image_part(), _text(prompts.question_text(sample))]}]


def _question_cells(sample: Sample, task: TaskSpec) -> dict[str, Any]:
    return {
        "question_id": sample.id,
        "task": task.name,
        "task_options": json.dumps(dict(task.options), sort_keys=True),
        "category": sample.category,
        "question": sample.question,
        "options": list(sample.options),
        "answer_kind": sample.answer_kind.value,
        "reference": sample.answer,
        "target_boxes": [b.to_list() for b in sample.target_boxes],
    }


def _question_of(row: Mapping[str, Any]) -> tuple[Sample, TaskSpec]:
    sample = Sample(
        id=row["question_id"], task=row["task"], images=[], question=row["question"],
        answer_kind=AnswerKind(row["answer_kind"]), options=list(row["options"]), answer=row["reference"],
        target_boxes=[Box(*map(float, b)) for b in row["target_boxes"]], category=row["category"],
    )
    return sample, TaskSpec(row["task"], json.loads(row["task_options"]))


def _frame_cells(view: View, image_size: tuple[int, int]) -> dict[str, Any]:
    resize = view.resize
    return {
        "frame": view.frame.value,
        "image_size": list(image_size),
        "resize": None if resize is None else {"min_pixels": resize.min_pixels, "max_pixels": resize.max_pixels,
                                               "factor": resize.factor},
    }


def _view_of(row: Mapping[str, Any]) -> tuple[View, tuple[int, int]]:
    resize = Resize(**row["resize"]) if row["resize"] is not None else None
    return View(Frame(row["frame"]), resize), (int(row["image_size"][0]), int(row["image_size"][1]))


def _steps_cell(steps: Sequence[Step]) -> list[dict[str, Any]]:
    return [{"text": st.text, "x": st.point.x, "y": st.point.y} for st in steps]


def _steps_of(cell: Sequence[Mapping[str, Any]], frame: Frame) -> tuple[Step, ...]:
    return tuple(Step(st["text"], Point(float(st["x"]), float(st["y"]), frame)) for st in cell)


def _point_cell(point: Point | None) -> dict[str, float] | None:
    return None if point is None else {"x": point.x, "y": point.y}


def _point_of(cell: Mapping[str, Any] | None, frame: Frame) -> Point | None:
    return None if cell is None else Point(float(cell["x"]), float(cell["y"]), frame)


def _to_view(old: ImageGeometry, view: View, image_size: tuple[int, int]) -> Callable[[Point], Point]:
    """The map of a point of a row seen through ``old`` into ``view``, through the pixel frame (exact both ways)."""
    new = view.geometry(*image_size)
    return lambda p: p.to(Frame.PIXEL, old).to(view.frame, new)


@dataclass(frozen=True, kw_only=True)
class _QuestionRow:
    """What every decoded row holds besides its own content: the question, how its points are shown, its canvas
    and where it came from (see :class:`TraceRow` for each field)."""

    sample: Sample
    task: TaskSpec
    view: View
    image_size: tuple[int, int]
    images: tuple[Any, ...]
    teacher: str
    simulated: bool
    prompt_version: str = PROMPT_VERSION
    source_run: str = ""

    @property
    def geometry(self) -> ImageGeometry:
        return self.view.geometry(*self.image_size)

    def _provenance_cells(self) -> dict[str, Any]:
        return {"teacher": self.teacher, "simulated": self.simulated, "prompt_version": self.prompt_version}

    @staticmethod
    def _common_of(row: Mapping[str, Any], source: Mapping[str, Any]) -> dict[str, Any]:
        """The shared fields of a stored row (its ``source`` JSON decoded), as keyword arguments."""
        sample, task = _question_of(row)
        view, image_size = _view_of(row)
        return dict(sample=sample, task=task, view=view, image_size=image_size, images=tuple(row["images"]),
                    teacher=row["teacher"], simulated=bool(row["simulated"]), prompt_version=row["prompt_version"],
                    source_run=source.get("run", ""))


@dataclass(frozen=True, kw_only=True)
class TraceRow(_QuestionRow):
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

    mode: Mode
    chain: Chain
    zoom_steps: tuple[int, ...]

    def image_sizes(self) -> list[tuple[int, int]]:
        """``(width, height)`` of each image, in order, read from the row (no image is decoded)."""
        out = _zoom_spec(self.task.key).out
        return [self.image_size, *[(out, out)] * len(self.zoom_steps)]

    # --- encoder -------------------------------------------------------------------------------------------

    def messages(self) -> list[dict[str, Any]]:
        """The chat, rendered from the structured chain in the row's frame."""
        prompt = _prompt(self.sample, self.view, self.mode == "multi")
        if self.mode == "single":
            return [*prompt, _assistant(self.chain.render())]
        prompts = prompts_for(self.sample.answer_kind)
        opening, closing = TOOL_RESPONSE
        dialog = []
        for turn in dialog_turns(self.chain, self.zoom_steps, prompts, dot=_zoom_spec(self.task.key).dot):
            if turn.zoom is None:
                dialog.append(_assistant(turn.text))
            else:
                parts = [_text(opening), _image_part(), _text(turn.text), _text(closing)]
                dialog.append({"role": "user", "content": parts})
        return [*prompt, *dialog]

    def to_row(self) -> dict[str, Any]:
        """The row as stored (:data:`FEATURES`)."""
        chain = self.chain
        return {
            "messages": self.messages(),
            "images": list(self.images),
            "schema_version": ROW_SCHEMA_VERSION,
            **_question_cells(self.sample, self.task),
            **_frame_cells(self.view, self.image_size),
            "mode": self.mode,
            "kind": chain.kind,
            "steps": _steps_cell(chain.steps),
            "connector": chain.connector,
            "connector_index": chain.connector_index,
            "zoom_steps": list(self.zoom_steps),
            "answer": chain.answer,
            "answer_point": _point_cell(chain.answer_point),
            "correct": chain.correct,
            "reward": chain.reward,
            "node_values": list(chain.node_values),
            "source": json.dumps({"run": self.source_run, "node": chain.source.node,
                                  "rollouts": list(chain.source.rollouts)}),
            **self._provenance_cells(),
        }

    # --- decoder -------------------------------------------------------------------------------------------

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, where: object = None) -> TraceRow:
        """Decode a stored row.

        Raises:
            DataError: a row of another schema version, or without a column of :data:`COLUMNS`.
        """
        TRACE_ROWS.check_row(row, where)
        source = json.loads(row["source"])
        common = cls._common_of(row, source)
        frame = common["view"].frame
        chain = Chain(
            question_id=row["question_id"], kind=row["kind"], steps=_steps_of(row["steps"], frame),
            answer=row["answer"], correct=bool(row["correct"]), reward=float(row["reward"]),
            node_values=tuple(row["node_values"]), source=ChainSource(source["node"], tuple(source["rollouts"])),
            connector=row["connector"], connector_index=row["connector_index"],
            answer_point=_point_of(row["answer_point"], frame),
        )
        return cls(mode=row["mode"], chain=chain, zoom_steps=tuple(row["zoom_steps"]), **common)

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
        new = view.geometry(*self.image_size)
        chain = self.chain.map_points(_to_view(self.geometry, view, self.image_size))
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


@dataclass(frozen=True, kw_only=True)
class PreferenceRow(_QuestionRow):
    """One decoded preference row: the question, the pair (points in ``view.frame``), and its canvas.

    Attributes:
        sample: the question (``images`` left empty; see ``images``); ``answer`` is the ground truth.
        task: the task spec.
        view: the frame of the points and the resize that defines it.
        image_size: the canvas ``(width, height)`` in pixels.
        pair: the pair; decoded chains carry no ``node_values`` (rows keep the parting node's value only).
        images: ``(canvas,)``.
        teacher, simulated, prompt_version, source_run: provenance.
    """

    pair: Pair

    def to_row(self) -> dict[str, Any]:
        """The row as stored (:data:`PREFERENCE_FEATURES`)."""
        pair = self.pair
        chosen, rejected = pair.chosen, pair.rejected

        def source(chain: Chain) -> dict[str, Any]:
            return {"node": chain.source.node, "rollouts": list(chain.source.rollouts)}

        return {
            "prompt": _prompt(self.sample, self.view, False),
            "chosen": [_assistant(chosen.render())],
            "rejected": [_assistant(rejected.render())],
            "images": list(self.images),
            "schema_version": PREFERENCE_SCHEMA_VERSION,
            **_question_cells(self.sample, self.task),
            **_frame_cells(self.view, self.image_size),
            "node": pair.node,
            "node_value": pair.node_value,
            "prefix_length": pair.prefix_length,
            "chosen_steps": _steps_cell(chosen.steps),
            "rejected_steps": _steps_cell(rejected.steps),
            "chosen_answer": chosen.answer,
            "rejected_answer": rejected.answer,
            "chosen_answer_point": _point_cell(chosen.answer_point),
            "rejected_answer_point": _point_cell(rejected.answer_point),
            "chosen_reward": chosen.reward,
            "rejected_reward": rejected.reward,
            "source": json.dumps({"run": self.source_run, "node": pair.node, "chosen": source(chosen),
                                  "rejected": source(rejected)}),
            **self._provenance_cells(),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, where: object = None) -> PreferenceRow:
        """Decode a stored row.

        Raises:
            DataError: a row of another schema version, or without a column of :data:`PREFERENCE_COLUMNS`.
        """
        PREFERENCE_ROWS.check_row(row, where)
        source = json.loads(row["source"])
        common = cls._common_of(row, source)
        frame = common["view"].frame

        def chain(side: str) -> Chain:
            reward = float(row[f"{side}_reward"])
            return Chain(row["question_id"], "direct", _steps_of(row[f"{side}_steps"], frame),
                         row[f"{side}_answer"], reward >= 1, reward, (),
                         ChainSource(source[side]["node"], tuple(source[side]["rollouts"])),
                         answer_point=_point_of(row[f"{side}_answer_point"], frame))

        pair = Pair(row["question_id"], int(row["node"]), float(row["node_value"]), int(row["prefix_length"]),
                    chain("chosen"), chain("rejected"))
        return cls(pair=pair, **common)

    def in_view(self, view: View) -> PreferenceRow:
        """This row as seen by a model of ``view``: every point converted, its literal rewritten (no crops to cut:
        both responses are single-turn)."""
        return replace(self, view=view, pair=self.pair.map_points(_to_view(self.geometry, view, self.image_size)))


@dataclass(frozen=True, kw_only=True)
class StepwiseRow(_QuestionRow):
    """One decoded stepwise row: the question, a path of tree steps with their values, and the label threshold.

    Attributes:
        sample, task, view, image_size, images, teacher, simulated, prompt_version, source_run: as
            :class:`PreferenceRow`.
        path: the steps (points in ``view.frame``), their nodes, values and visits.
        label_threshold: the value at or above which a step is labelled good.
    """

    path: StepPath
    label_threshold: float

    def to_row(self) -> dict[str, Any]:
        """The row as stored (:data:`STEPWISE_FEATURES`)."""
        path = self.path
        return {
            "prompt": prompts_for(self.sample.answer_kind).question_text(self.sample),
            "completions": [step.render() for step in path.steps],
            "labels": list(path.labels(self.label_threshold)),
            "images": list(self.images),
            "schema_version": STEPWISE_SCHEMA_VERSION,
            **_question_cells(self.sample, self.task),
            **_frame_cells(self.view, self.image_size),
            "steps": _steps_cell(path.steps),
            "values": list(path.values),
            "visits": list(path.visits),
            "label_threshold": self.label_threshold,
            "source": json.dumps({"run": self.source_run, "nodes": list(path.nodes)}),
            **self._provenance_cells(),
        }

    @classmethod
    def from_row(cls, row: Mapping[str, Any], *, where: object = None) -> StepwiseRow:
        """Decode a stored row.

        Raises:
            DataError: a row of another schema version, or without a column of :data:`STEPWISE_COLUMNS`.
        """
        STEPWISE_ROWS.check_row(row, where)
        source = json.loads(row["source"])
        common = cls._common_of(row, source)
        path = StepPath(row["question_id"], tuple(source["nodes"]), _steps_of(row["steps"], common["view"].frame),
                        tuple(float(v) for v in row["values"]), tuple(int(n) for n in row["visits"]))
        return cls(path=path, label_threshold=float(row["label_threshold"]), **common)

    def in_view(self, view: View) -> StepwiseRow:
        """This row with every point converted into ``view``, its literal rewritten."""
        return replace(self, view=view, path=self.path.map_points(_to_view(self.geometry, view, self.image_size)))


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


def _check_mode(mode: str, config: LinearizeConfig) -> None:
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "stepwise" and config.min_grounding is not None:
        raise ConfigError("--min-grounding filters chains and chosen responses; it does not apply to --mode stepwise "
                          "(its rows are every valued path of a tree)")


def question_rows(
    record: QuestionRecord,
    sample: Sample,
    mode: Mode,
    config: LinearizeConfig | None = None,
    *,
    view: View = PIXEL_VIEW,
    run_id: str = "",
) -> list[dict[str, Any]]:
    """The rows of one question in ``mode``, rendered in ``view``: one per chain (``single``, ``multi``), per
    preference pair (``preference``) or per path of step nodes (``stepwise``).

    Args:
        record: the question's ``trees.jsonl`` record.
        sample: its sample, images resolved (``record.question.sample(...)``).
        mode: one of :data:`MODES`.
        config: linearization settings.
        view: the frame to write points in (default: pixels of the canvas).
        run_id: written into each row's ``source``.

    Raises:
        ConfigError: an unknown ``mode``, or a setting that does not apply to it.
        DataError: the canvas differs from the size the question was searched at.
    """
    config = config or LinearizeConfig()
    _check_mode(mode, config)
    canvas = sample.canvas()
    record.question.check_canvas(canvas)
    teacher = record.teacher
    base = dict(
        sample=replace(sample, images=[]), task=record.question.task, view=PIXEL_VIEW, image_size=canvas.size,
        images=(_canvas_bytes(sample, canvas),), teacher=teacher_label(teacher),
        simulated=bool(teacher.get("simulated", False)), source_run=run_id,
    )
    tree, boxes = record.tree, record.question.target_boxes
    if mode == "preference":
        pairs = [PreferenceRow(pair=pair, **base) for pair in preference_pairs(tree, sample.id, config, boxes)]
        return [(row if view == PIXEL_VIEW else row.in_view(view)).to_row() for row in pairs]
    if mode == "stepwise":
        paths = [StepwiseRow(path=path, label_threshold=config.label_threshold, **base)
                 for path in step_paths(tree, sample.id, config)]
        return [(row if view == PIXEL_VIEW else row.in_view(view)).to_row() for row in paths]
    crops: dict[tuple[int, int, str], dict[str, Any]] = {}  # chains of a question share zoom points: cut each once

    def cut(image: PILImage.Image, point: Point, geometry: ImageGeometry, spec: ZoomSpec) -> dict[str, Any]:
        key = (*point.rounded(), point.frame.value)
        if key not in crops:
            crops[key] = _png(_cut(image, point, geometry, spec))
        return crops[key]

    rows = []
    for chain in linearize(tree, sample.id, config, boxes):
        zoom_steps = plan_zooms(chain.steps, config.max_zooms) if mode == "multi" else ()
        row = TraceRow(chain=chain, zoom_steps=zoom_steps, mode=mode, **base)
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

    def __init__(self, folder: Path, split: str, features: Features, max_bytes: int, max_rows: int | None) -> None:
        self.folder, self.split, self.features = folder, split, features
        self.max_bytes, self.max_rows = max_bytes, max_rows
        self.paths: list[Path] = []
        self._writer: Any = None
        self._bytes = self._rows = 0

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        features = self.features
        table = pa.Table.from_pylist([features.encode_example(r) for r in rows], schema=features.arrow_schema)
        full = self._bytes + table.nbytes > self.max_bytes or (
            self.max_rows is not None and self._rows + len(rows) > self.max_rows)
        if self._writer is None or (full and self._rows):
            self._close_current()
            self.paths.append(self.folder / f".{self.split}-{len(self.paths):05d}.parquet")
            # Dictionary pages large enough for images: the canvas repeats in every chain of a question (and crops
            # of shared zoom points too), and one row group holds one question, so each is stored once.
            self._writer = pq.ParquetWriter(self.paths[-1], features.arrow_schema, dictionary_pagesize_limit=2**30)
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
        questions: ``(split, rows)`` per question, rows of the schema of ``mode`` (:data:`ROWS`).
        out_dir: the dataset folder.
        mode: one of :data:`MODES`: the row schema, and what the card says.
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
    schema = ROWS[mode]
    writers: dict[str, _SplitWriter] = {}
    counts = DataCounts(mode, unit=schema.unit)
    questions_by_split: dict[str, set[str]] = {}
    category_questions: dict[str, set[str]] = {}
    category_chains: Counter[str] = Counter()
    try:
        for split, rows in questions:
            if not rows:
                continue
            writer = writers.get(split) or writers.setdefault(
                split, _SplitWriter(tmp / DATA_DIR, split, schema.features, max_shard_bytes, max_shard_rows))
            writer.write(rows)
            kinds = counts.rows.setdefault(split, Counter())
            for row in rows:
                kinds[row.get("kind", schema.unit)] += 1
                questions_by_split.setdefault(split, set()).add(row["question_id"])
                category_questions.setdefault(row["category"], set()).add(row["question_id"])
                category_chains[row["category"]] += 1
        if not writers:
            raise DataError(f"no rows to write: {schema.empty}", path=out)
        counts.files = {split: writers[split].close() for split in sorted(writers)}
        counts.rows = {split: counts.rows[split] for split in sorted(counts.rows)}
        counts.questions = {split: len(ids) for split, ids in sorted(questions_by_split.items())}
        counts.categories = {c: {"questions": len(category_questions[c]), "rows": category_chains[c]}
                             for c in sorted(category_chains)}
        write_json(tmp / PROVENANCE, provenance.to_dict())
        columns = {name: doc for name, (_, doc) in schema.columns.items()}
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
    on_question: Callable[[int, int], None] | None = None,
) -> DataCounts:
    """Turn a search run directory into a training dataset folder.

    Reads ``run.json`` and ``trees.jsonl`` (every question's text, options, ground truth and image references
    are in its record: the benchmark is not reloaded), linearizes every tree, splits by question (``config.seed``)
    and writes the rows question by question with :func:`write_rows`, in question-id order, so linearizing the
    same run always gives the same dataset.

    Args:
        run_dir: the search run directory.
        out_dir: the dataset folder to write.
        mode: one of :data:`MODES` (``single``, ``multi``, ``preference``, ``stepwise``).
        config: linearization settings (its ``seed`` also seeds the split).
        view: the frame to write points in: pixels (default), or a model's (``View.of_checkpoint``).
        data_dir: where the task data is now, when it moved since the run (default: ``run.json``'s).
        val_fraction: share of questions in the validation split.
        overwrite: replace an earlier dataset in ``out_dir``.
        on_question: called with ``(questions done, questions in all)`` after each question (progress displays).

    Raises:
        DataError: no ``run.json``, no finished question, no chain at all, or a question whose images are
            missing or changed (named by its ``trees.jsonl`` line).
        ConfigError: ``out_dir`` exists and ``overwrite`` is false, or another process writes it; a setting that
            does not apply to ``mode``; ``min_grounding`` on a run whose questions have no target boxes.
    """
    from trace_forge.search.store import TREES

    config = config or LinearizeConfig()
    _check_mode(mode, config)
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
    if config.min_grounding is not None and not any(r.question.target_boxes for _, r in records):
        raise ConfigError(f"--min-grounding needs target boxes, and no question of {run_dir} has any")
    records.sort(key=lambda pair: _natural_key(pair[1].id))
    validation = split_by_question(((r.question.task.name, r.id) for _, r in records), val_fraction, config.seed)
    data = data_dir if data_dir is not None else run.data_dir

    def questions() -> Iterator[tuple[str, list[dict[str, Any]]]]:
        for done, (line, record) in enumerate(records, 1):
            try:
                sample = record.question.sample(run_dir, data)
                rows = question_rows(record, sample, mode, config, view=view, run_id=run_dir.name)
            except DataError as e:
                raise DataError(f"question {record.id!r}: {e}", path=store.trees_path, line=line) from e
            yield ("validation" if (record.question.task.name, record.id) in validation else "train"), rows
            if on_question is not None:
                on_question(done, len(records))

    provenance = Provenance.of_run(run_dir, run, view.to_dict(), {"mode": mode, **asdict(config)})
    with OutputLock(out_dir, "linearize"):
        return write_rows(questions(), out_dir, mode=mode, provenance=provenance,
                          license_note=run.task.build().license_note, overwrite=overwrite)


# ------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------


def load_traces(source: str | Path, split: str = "train", *, rows: RowSchema = TRACE_ROWS) -> Any:
    """One split of a dataset written by ``linearize`` (a folder, or its Hub id), its row schema checked.

    Args:
        source: the dataset folder or Hub id.
        split: the split to load.
        rows: the row kind expected: :data:`TRACE_ROWS` (SFT chains, the default), :data:`PREFERENCE_ROWS` or
            :data:`STEPWISE_ROWS`.

    Returns:
        The split as a :class:`datasets.Dataset` (exactly what ``datasets.load_dataset`` gives).

    Raises:
        DataError: the folder holds no such dataset (another row kind is named), an older layout, or rows of
            another schema version; the split is absent.
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
    versions = set(dataset.unique("schema_version")) if "schema_version" in dataset.column_names else {1}
    rows.check(dataset.column_names, sorted(versions), source)
    return dataset
