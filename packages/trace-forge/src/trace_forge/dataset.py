"""The training dataset: the one definition of its columns, and how a search run becomes it.

Each row is one chain (see :mod:`trace_forge.linearize`) as a chat in TRL's conversational vision format:
``messages`` is a list of ``{"role", "content"}`` whose content is *always* a list of parts; an image part
is ``{"type": "image", "text": None}`` and the ``images`` column holds the images in the order their parts
appear.

- ``mode="single"``: system (``student_system(False)``), user ``[image, question]``, one assistant turn with
  the whole chain (``<think>`` with every step, then ``<answer>``).
- ``mode="multi"``: system (``student_system(True)``), user ``[image, question]``, then per zoom an assistant
  turn with its ``<tool_call>`` text inline and a ``tool`` turn ``[crop, observation]``, and a final answer
  turn.

Message text keeps points in the *pixel* frame of the sample canvas, so the dataset is model-agnostic:
grounded-rl rewrites points into its model's frame at load time from the ``steps`` metadata
(``format.move_anchor``).
grounded-rl reads :data:`FEATURES`; change it only together with its reader.

On disk (:func:`write_dataset`): ``out_dir/hf`` (``DatasetDict.save_to_disk``) and
``out_dir/parquet/{split}-{i:05d}-of-{n:05d}.parquet`` shards (Hub layout, ``load_dataset("parquet", ...)``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from datasets import Dataset, DatasetDict, Features, Image, List, Value
from PIL import Image as PILImage

from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import zoom
from trace_forge.grounding.zoom import ZoomSpec
from trace_forge.linearize import Chain, LinearizeConfig, linearize, to_dialog
from trace_forge.publish import build_provenance, write_provenance
from trace_forge.search.store import RUN_JSON, RunStore, read_records
from trace_forge.search.tree import Tree
from trace_forge.tasks import Sample, get_task
from trace_forge.tasks.prompts import PROMPT_VERSION, PromptSet, prompts_for

__all__ = [
    "FEATURES",
    "MODES",
    "Mode",
    "build_rows",
    "linearize_run",
    "record_rows",
    "split_by_question",
    "write_dataset",
]

log = logging.getLogger(__name__)

Mode = Literal["single", "multi"]
MODES: tuple[Mode, ...] = ("single", "multi")
_MAX_SHARD_BYTES = 500 * 2**20
_EXIF_ORIENTATION = 0x0112

_PART = {"type": Value("string"), "text": Value("string")}
_STEP = {"text": Value("string"), "x": Value("float64"), "y": Value("float64"), "frame": Value("string")}

FEATURES = Features(
    {
        "messages": List({"role": Value("string"), "content": List(_PART)}),
        # mode="RGB": every reader decodes exactly the pixels the points were mined on (the RGB canvas).
        "images": List(Image(mode="RGB")),
        "question_id": Value("string"),
        "task": Value("string"),
        "category": Value("string"),
        "kind": Value("string"),  # "direct" | "backtracking"
        "mode": Value("string"),  # "single" | "multi"
        "steps": List(_STEP),
        "answer": Value("string"),
        "correct": Value("bool"),
        "reward": Value("float64"),
        "node_values": List(Value("float64")),
        "image_size": List(Value("int32")),  # canvas [width, height]
        "target_boxes": List(List(Value("float64"))),  # [[x1, y1, x2, y2], ...] in canvas pixels
        "source": Value("string"),  # JSON: run, node, rollouts, connector_index
        "teacher": Value("string"),  # "<backend>:<model>"
        "simulated": Value("bool"),
        "prompt_version": Value("string"),  # version of the student prompts in `messages`
    }
)
"""The columns of every trace-forge training dataset (train and validation, single- and multi-turn)."""


def _text(text: str) -> dict[str, str | None]:
    return {"type": "text", "text": text}


def _image_part() -> dict[str, str | None]:
    return {"type": "image", "text": None}


def _png(image: PILImage.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _canvas_bytes(sample: Sample, canvas: PILImage.Image) -> bytes:
    """The canvas as image file bytes: the original file when it decodes to exactly the canvas, else PNG.

    Keeping a single image file's own bytes avoids re-encoding a JPEG as a PNG several times its size. A file
    with an EXIF orientation is re-encoded, because ``datasets`` rotates such images when decoding while the
    canvas (and every mined point) uses the stored pixel order.
    """
    if len(sample.images) == 1 and isinstance(sample.images[0], str | Path):
        raw = Path(sample.images[0]).read_bytes()
        with PILImage.open(io.BytesIO(raw)) as original:
            if original.size == canvas.size and _EXIF_ORIENTATION not in original.getexif():
                return raw
    return _png(canvas)


def _teacher_name(teacher: Mapping[str, Any]) -> str:
    # Search records hold the backend's describe(): {"backend": ..., "model": ...}.
    return f"{teacher.get('backend') or teacher.get('name', '')}:{teacher.get('model', '')}"


def record_rows(
    record: Mapping[str, Any],
    sample: Sample,
    mode: Mode,
    config: LinearizeConfig | None = None,
    *,
    zoom_spec: ZoomSpec | None = None,
    run_id: str = "",
) -> list[dict[str, Any]]:
    """The dataset rows of one ``trees.jsonl`` record: one per chain of its tree.

    Args:
        record: a finished question as the search writes it (``question_id``, ``tree``, ``image_size``, ...).
        sample: the task sample of that question (for the canvas and the question text).
        mode: ``"single"`` or ``"multi"``.
        config: linearization settings.
        zoom_spec: crop geometry of multi-turn zooms; default: the sample's task's spec.
        run_id: written into each row's ``source``.

    Raises:
        ConfigError: an unknown ``mode``.
        ValueError: the record does not match the sample (other question, other canvas size).
        KeyError: the record lacks a field.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    config = config or LinearizeConfig()
    if (record["task"], record["question_id"]) != (sample.task, sample.id):
        raise ValueError(
            f"record of {record['task']}/{record['question_id']} given the sample {sample.task}/{sample.id}"
        )
    canvas = sample.canvas()
    if tuple(record["image_size"]) != canvas.size:
        raise ValueError(
            f"image_size {record['image_size']} differs from the canvas {list(canvas.size)} of {sample.id!r}"
        )
    prompts = prompts_for(sample.answer_kind)
    spec = zoom_spec or get_task(sample.task).zoom
    chains = linearize(Tree.from_dict(record["tree"]), sample.id, config)
    user = {"role": "user", "content": [_image_part(), _text(prompts.question_text(sample))]}
    system = {"role": "system", "content": [_text(prompts.student_system(mode == "multi"))]}
    canvas_image = {"bytes": _canvas_bytes(sample, canvas), "path": None}
    crops: dict[tuple[int, int], dict[str, Any]] = {}  # chains of a question share zoom points: cut each once

    def crop(xy: tuple[int, int]) -> dict[str, Any]:
        if xy not in crops:
            crops[xy] = {"bytes": _png(zoom(canvas, *xy, spec).image), "path": None}
        return crops[xy]

    teacher = record["teacher"]
    base = {
        "question_id": sample.id,
        "task": sample.task,
        "category": record.get("category", sample.category),
        "mode": mode,
        "image_size": list(canvas.size),
        "target_boxes": [list(map(float, box)) for box in record["target_boxes"]],
        "teacher": _teacher_name(teacher),
        "simulated": bool(teacher.get("simulated", False)),
        "prompt_version": PROMPT_VERSION,
    }
    rows = []
    for chain in chains:
        if mode == "single":
            dialog, crops_used = [{"role": "assistant", "content": [_text(chain.render())]}], []
        else:
            dialog, crops_used = _dialog_messages(chain, prompts, spec.dot, config.max_zooms, crop)
        rows.append({**base, **_chain_columns(chain, run_id), "messages": [system, user, *dialog],
                     "images": [canvas_image, *crops_used]})
    return rows


def _dialog_messages(
    chain: Chain,
    prompts: PromptSet,
    dot: bool,
    max_zooms: int,
    crop: Callable[[tuple[int, int]], dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The multi-turn messages of a chain after the question, and the crops their image parts stand for."""
    messages, crops = [], []
    for turn in to_dialog(chain, prompts, dot=dot, max_zooms=max_zooms):
        if turn.zoom is None:
            messages.append({"role": turn.role, "content": [_text(turn.text)]})
        else:
            crops.append(crop(turn.zoom))
            messages.append({"role": turn.role, "content": [_image_part(), _text(turn.text)]})
    return messages, crops


def _chain_columns(chain: Chain, run_id: str) -> dict[str, Any]:
    source = {"run": run_id, "node": chain.source.node, "rollouts": list(chain.source.rollouts),
              "connector_index": chain.connector_index}
    return {
        "kind": chain.kind,
        "steps": [step.to_dict() for step in chain.steps],
        "answer": chain.answer,
        "correct": chain.correct,
        "reward": chain.reward,
        "node_values": list(chain.node_values),
        "source": json.dumps(source),
    }


def build_rows(
    records: Iterable[Mapping[str, Any]],
    samples_by_id: Mapping[str, Sample],
    mode: Mode,
    config: LinearizeConfig | None = None,
    *,
    zoom_spec: ZoomSpec | None = None,
    run_id: str = "",
) -> list[dict[str, Any]]:
    """The rows of many records (see :func:`record_rows`), in record order.

    Raises:
        KeyError: a record's question is not in ``samples_by_id``.
    """
    rows: list[dict[str, Any]] = []
    for record in records:
        sample = samples_by_id[record["question_id"]]
        rows += record_rows(record, sample, mode, config, zoom_spec=zoom_spec, run_id=run_id)
    return rows


def _question_key(row: Mapping[str, Any]) -> tuple[str, str]:
    return row["task"], row["question_id"]


def split_by_question(
    rows: Sequence[dict[str, Any]], val_fraction: float = 0.05, seed: int = 0
) -> dict[str, list[dict[str, Any]]]:
    """Split rows into ``train`` and ``validation`` with every chain of a question on the same side.

    Questions are ranked by a hash of ``(seed, task, question id)``, so the split depends neither on row order
    nor on the other questions present: a question keeps its side when a run grows. The first
    ``round(n * val_fraction)`` go to validation; with at least two questions and ``val_fraction > 0`` at
    least one goes to each side.

    Raises:
        ValueError: unless ``0 <= val_fraction < 1``.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")

    def rank(key: tuple[str, str]) -> str:
        return hashlib.sha256(json.dumps([seed, *key]).encode()).hexdigest()

    questions = sorted({_question_key(r) for r in rows}, key=rank)
    n_val = round(len(questions) * val_fraction)
    if val_fraction > 0 and len(questions) >= 2:
        n_val = min(max(n_val, 1), len(questions) - 1)
    val = set(questions[:n_val])
    return {
        "train": [r for r in rows if _question_key(r) not in val],
        "validation": [r for r in rows if _question_key(r) in val],
    }


def _num_shards(ds: Dataset, max_bytes: int, max_rows: int | None) -> int:
    by_bytes = math.ceil(ds.data.nbytes / max_bytes)
    by_rows = math.ceil(len(ds) / max_rows) if max_rows else 1
    return max(1, min(len(ds), max(by_bytes, by_rows)))


def _to_dataset(rows: Sequence[dict[str, Any]]) -> Dataset:
    # Column by column, so that a row missing a column fails here instead of becoming nulls.
    return Dataset.from_dict({name: [row[name] for row in rows] for name in FEATURES}, features=FEATURES)


def write_dataset(
    rows_by_split: Mapping[str, Sequence[dict[str, Any]]],
    out_dir: str | Path,
    *,
    max_shard_bytes: int = _MAX_SHARD_BYTES,
    max_shard_rows: int | None = None,
    overwrite: bool = False,
) -> DatasetDict:
    """Save rows as a :class:`DatasetDict` (``out_dir/hf``) and as parquet shards (``out_dir/parquet``).

    A split is cut into ``n`` contiguous shards ``{split}-{i:05d}-of-{n:05d}.parquet``, enough that none holds
    more than ``max_shard_bytes`` of Arrow data (about 500 MB) or ``max_shard_rows`` rows. Empty splits are
    left out of both forms, since ``load_dataset`` cannot read a parquet file without rows.

    Args:
        rows_by_split: rows (in :data:`FEATURES` form) by split name.
        out_dir: the output folder; created if needed.
        max_shard_bytes: Arrow bytes per parquet shard at most.
        max_shard_rows: rows per parquet shard at most (None: no row limit).
        overwrite: replace ``hf`` and ``parquet`` if they exist (otherwise that is an error).

    Returns:
        The dataset as saved.

    Raises:
        ConfigError: ``hf`` or ``parquet`` already exists and ``overwrite`` is false.
        ValueError: every split is empty.
    """
    out_dir = Path(out_dir)
    hf_dir, parquet_dir = out_dir / "hf", out_dir / "parquet"
    existing = [d for d in (hf_dir, parquet_dir) if d.exists()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} already exists; pass overwrite (--overwrite) to replace it")
    # An empty split is left out: its parquet shard would hold no rows, which load_dataset refuses to read.
    dataset = DatasetDict({split: _to_dataset(rows) for split, rows in rows_by_split.items() if rows})
    if not dataset:
        raise ValueError("no rows to write")
    for folder in existing:
        # Stale shards of another shard count would otherwise be read together with the new ones.
        shutil.rmtree(folder)
    dataset.save_to_disk(str(hf_dir))
    parquet_dir.mkdir(parents=True)
    for split, ds in dataset.items():
        n = _num_shards(ds, max_shard_bytes, max_shard_rows)
        for i in range(n):
            shard = parquet_dir / f"{split}-{i:05d}-of-{n:05d}.parquet"
            ds.shard(n, i, contiguous=True).to_parquet(str(shard))
    log.info("wrote %s", ", ".join(f"{split}: {len(ds)} rows" for split, ds in dataset.items()))
    return dataset


def _numbered_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of ``trees.jsonl``, the last record of each question (a resumed run may
    repeat one).

    :func:`read_records` yields one record per non-blank line in order (a torn last line is dropped at the
    end), so pairing its records with the non-blank line numbers names each record's line exactly.
    """
    lines = [i for i, raw in enumerate(path.read_bytes().split(b"\n"), start=1) if raw.strip()]
    latest: dict[Any, tuple[int, dict[str, Any]]] = {}
    for line, record in zip(lines, read_records(path), strict=False):
        if not isinstance(record, dict) or "question_id" not in record:
            raise DataError("record without a question_id", path=path, line=line)
        if record["question_id"] in latest:
            log.info("%s:%d: question %r repeated; the later one is used", path, line, record["question_id"])
        latest[record["question_id"]] = (line, record)
    return sorted(latest.values(), key=lambda pair: pair[0])


def linearize_run(
    run_dir: str | Path,
    out_dir: str | Path,
    mode: Mode,
    config: LinearizeConfig | None = None,
    data_dir: str | Path | None = None,
    *,
    val_fraction: float = 0.05,
    overwrite: bool = False,
) -> DatasetDict:
    """Turn a search run directory into a training dataset on disk.

    Reads ``run.json`` and ``trees.jsonl``, reloads the samples of the searched questions (for canvases and
    question text) from ``data_dir`` or the run's own ``data_dir``, split and task options, linearizes every tree,
    splits by question (``config.seed``) and writes with :func:`write_dataset`, plus ``provenance.json`` (teacher,
    search parameters, per-category yield) for the dataset card. Rows follow the task data's question order, not
    the order questions finished in, so linearizing the same run always gives the same dataset.

    Args:
        run_dir: the search run directory.
        out_dir: where to write ``hf`` and ``parquet``.
        mode: ``"single"`` or ``"multi"``.
        config: linearization settings (its ``seed`` also seeds the split).
        data_dir: the task data, when it moved since the run (default: ``run.json``'s ``data_dir``).
        val_fraction: share of questions in the validation split.
        overwrite: replace an earlier dataset in ``out_dir``.

    Raises:
        DataError: no ``run.json``, no finished question or no chain at all; a record whose question is not
            in the task data, or that does not match its sample, named by its ``trees.jsonl`` line.
    """
    config = config or LinearizeConfig()
    run_dir = Path(run_dir)
    if not (run_dir / RUN_JSON).is_file():
        raise DataError(f"no {RUN_JSON}: not a search run directory", path=run_dir)
    store = RunStore(run_dir)
    run = store.read_run_json()
    try:
        task = get_task(run["task"], **(run.get("task_options") or {}))
    except KeyError:
        raise DataError("run.json names no task", path=run_dir / RUN_JSON) from None
    records = _numbered_records(store.trees_path)
    if not records:
        raise DataError("no finished question to linearize", path=store.trees_path)
    source_dir = data_dir if data_dir is not None else run.get("data_dir")
    samples = _searched_samples(task.load(source_dir, split=run.get("split")), {r["question_id"] for _, r in records})
    by_question = {record["question_id"]: (line, record) for line, record in records}
    for line, record in records:
        if record["question_id"] not in samples:
            raise DataError(
                f"question {record['question_id']!r} is not in the {task.name} data "
                f"({source_dir or task.hub_id}, split {run.get('split') or task.default_split})",
                path=store.trees_path, line=line,
            )
    rows: list[dict[str, Any]] = []
    for qid, sample in samples.items():
        line, record = by_question[qid]
        try:
            rows += record_rows(record, sample, mode, config, zoom_spec=task.zoom, run_id=run_dir.name)
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"bad record for {sample.id!r}: {e!r}", path=store.trees_path, line=line) from e
    if not rows:
        raise DataError("no tree holds a correct grounded trajectory", path=store.trees_path)
    splits = split_by_question(rows, val_fraction, config.seed)
    dataset = write_dataset(splits, out_dir, overwrite=overwrite)
    write_provenance(out_dir, build_provenance(out_dir, run_dir))
    return dataset


def _searched_samples(samples: Iterable[Sample], wanted: set[str]) -> dict[str, Sample]:
    """The samples whose ids are in ``wanted``, in the task data's order; reading stops once all are found (a run
    of 100 questions need not hold a 172k-question split in memory)."""
    found: dict[str, Sample] = {}
    for sample in samples:
        if sample.id in wanted and sample.id not in found:
            found[sample.id] = sample
            if len(found) == len(wanted):
                break
    return found
