"""Pinned, judge-free evaluation: a model answers a benchmark through the student prompt, the official verifier
scores it, and the protocol is written next to the numbers.

    grounded-rl eval --model runs/vigorl-3b --task vstar --data-dir data/vstar --multi-turn --samples 4 --out ev/

Every model is reached through trace-forge's :class:`~trace_forge.teachers.TeacherClient` (``hf``/``vllm`` load a
local checkpoint; ``openai``/``anthropic`` call a server). Per question:

1. the prompt: the student system prompt of the task's answer kind, then the canvas and the question text;
2. single-turn: ``K`` samples in one request, each parsed with ``expect="single"``;
   multi-turn: ``K`` independent dialogs with the zoom tool of :class:`~grounded_rl.env.ZoomSession` (the same
   crops, observation text and image limit as GRPO); once the image budget is spent the answer is forced;
3. the answer (point answers converted to the pixel frame) is scored by the task's verifier.

Each finished sample is one line of ``samples.jsonl`` (appended and fsynced), so a killed run resumes where it
stopped. ``summary.json`` holds avg@K and pass@K under the benchmark's own aggregation, counts, parse problems and
the protocol; ``summary.md`` the table as the benchmark reports it.

One bad item does not end the run: a request the server refuses for good (a 400 such as a prompt over the context
length) or whose replies stay malformed through the client's retries fails only its sample, which is recorded with
the error (``error: {kind, message}``), scored as the official scripts score a wrong format (no answer: 0), counted
in the summary, and asked again by the next run in the same folder. ``max_failure_rate`` decides whether such a run
succeeded. Timeouts, rate limits and unreachable servers (after the client's retries) and auth or routing errors
stop the run instead: finished samples are kept, and a rerun resumes.

Next to accuracy, both report the grounding precision of the model's own points (:func:`grounding_precision`)
where the benchmark's samples carry target boxes: the share of its reasoning points and of its zoom points that
land in a target box (:func:`~trace_forge.tasks.on_target`), overall and per category. It is the automatic
counterpart of ViGoRL's human study (72.8% of points judged accurate). TreeBench also gets its evidence mIoU
(:func:`evidence_miou`), from the ``<box>`` tags of the responses, as its official script computes it.

Coordinates: a local model writes points in its family's frame (Qwen2.5-VL: pixels of the image as its processor
resized it; Qwen3-VL: a 0-1000 grid); an API model writes pixels of the image as sent (``max_pixels`` resizes it
first, as a vLLM server serving a Qwen model would), or, with ``frame="norm1000"``, the 0-1000 grid (a served
Qwen3-VL).

Chat template: a local checkpoint is prompted through our template of its family (the one SFT and GRPO render
dialogs with), whatever template it ships; its sha256 is part of the protocol.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from grounded_rl.env import DEFAULT_MAX_IMAGES, ZoomRefused, ZoomSession
from grounded_rl.models import Family
from trace_forge.durable import OutputLock, append_record, read_records, write_atomic
from trace_forge.errors import ConfigError, DataError, TraceForgeError
from trace_forge.grounding import (
    ZOOM_TOOL_NAME,
    Box,
    Frame,
    ImageGeometry,
    Parsed,
    Point,
    Resize,
    Step,
    View,
    format_point,
    parse_response,
)
from trace_forge.grounding.format import Expect
from trace_forge.tasks import Sample, Task, TaskSpec, metrics, on_target, score_answer
from trace_forge.tasks.prompts import NORM1000_HINT, PROMPT_VERSION, TEMPLATES_SHA256, prompts_for
from trace_forge.tasks.treebench import TreeBench, evidence_iou, read_boxes
from trace_forge.teachers import (
    ImageRef,
    Message,
    RuntimeConfig,
    SamplingParams,
    TeacherClient,
    TeacherError,
    TeacherFormatError,
    TeacherRejected,
    build_client,
)

__all__ = [
    "EvalConfig",
    "view_of",
    "Turn",
    "Dialog",
    "Student",
    "evaluate",
    "make_client",
    "chat_template_for",
    "protocol",
    "summarize",
    "fails_sample",
    "TooManyFailures",
    "grounding_precision",
    "evidence_miou",
    "LOCAL_BACKENDS",
    "PREFILL_BACKENDS",
    "SAMPLES_FILE",
    "SUMMARY_FILE",
    "SUMMARY_MD",
    "PROTOCOL_FILE",
]

logger = logging.getLogger(__name__)

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
SUMMARY_MD = "summary.md"
PROTOCOL_FILE = "eval.json"

LOCAL_BACKENDS = ("hf", "vllm")  # load a checkpoint in-process: its family decides the coordinate frame
API_BACKENDS = ("openai", "anthropic")
# Backends that continue a final assistant message (the forced answer is prefilled); the others get a user turn.
PREFILL_BACKENDS = frozenset(LOCAL_BACKENDS)
# The frames an API model may write points in (a local checkpoint's family decides its own).
API_FRAMES = (Frame.MODEL.value, Frame.NORM1000.value)
_RUNTIME = RuntimeConfig()  # the teacher client's defaults: eval's --timeout and --max-retries start from them


@dataclass
class EvalConfig:
    """Settings of ``grounded-rl eval``; everything that changes a number is recorded in the protocol.

    The fields come in three groups, marked below: the benchmark (task, data, split, limit), the protocol
    (single/multi-turn, K samples, decoding as in ViGoRL's evaluation: temperature 0.5, 2048 tokens; the zoom image
    budget of its code: 5 images) and the backend. ``grounded-rl eval`` exposes each field as a flag.
    """

    # --- benchmark ---
    task: str = field(metadata={"help": "Benchmark (a trace-forge task; see `trace-forge tasks list`)."})
    model: str = field(metadata={"help": "Checkpoint directory or Hub id (hf, vllm), or the served model name."})
    data_dir: str | None = field(default=None, metadata={"help": "Benchmark folder in its official layout."})
    task_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Options of the task (e.g. generic's column map, sat2's circular=true)."},
    )
    split: str | None = field(default=None, metadata={"help": "Split to evaluate; the task's default when unset."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate only the first N questions."})
    # --- protocol ---
    multi_turn: bool = field(default=False, metadata={"help": "Zoom dialogs instead of one grounded completion."})
    samples: int = field(default=1, metadata={"help": "Samples K per question: avg@K and pass@K."})
    temperature: float = field(default=0.5, metadata={"help": "Sampling temperature (ViGoRL's eval: 0.5)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    max_tokens: int = field(default=2048, metadata={"help": "Tokens per generated turn (ViGoRL's eval: 2048)."})
    seed: int = field(default=0, metadata={"help": "Seed of every request (per question, sample and turn)."})
    max_images: int = field(
        default=DEFAULT_MAX_IMAGES,
        metadata={"help": "Multi-turn image budget, the original included (ViGoRL: 5, i.e. 4 crops, then answer)."},
    )
    # --- backend ---
    backend: str = field(default="hf", metadata={"help": "hf, vllm (local checkpoint), openai or anthropic."})
    base_urls: list[str] = field(default_factory=list, metadata={"help": "Server endpoints (openai/anthropic)."})
    max_pixels: int | None = field(
        default=None,
        metadata={"help": "API backends: resize images to this pixel budget before sending (the served model's)."},
    )
    frame: str = field(
        default=Frame.MODEL.value,
        metadata={"help": "API backends: the coordinates the served model writes: model (pixels of the image as "
                          "sent) or norm1000 (a 0-1000 grid, e.g. Qwen3-VL). A local checkpoint's family decides."},
    )
    concurrency: int = field(default=16, metadata={"help": "Questions (dialogs) in flight at once."})
    timeout_s: float = field(
        default=_RUNTIME.timeout_s,
        metadata={"help": "Seconds before a request with no reply is cancelled (and retried, as a timeout)."},
    )
    max_retries: int = field(
        default=_RUNTIME.max_retries,
        metadata={"help": "Retries per request on rate limits, timeouts, 5xx and dropped connections."},
    )
    max_failure_rate: float = field(
        default=0.0,
        metadata={"help": "Share of samples that may fail (request refused for good, or malformed replies) with the "
                          "run still succeeding; failed samples score 0 either way and a rerun asks them again."},
    )
    grounding_margin: float = field(
        default=0.0,
        metadata={"help": "Pixels of slack around the target boxes when the summary counts the model's points on "
                          "target (grounding precision); a reporting setting: rerun with another to rescore."},
    )

    def __post_init__(self) -> None:
        problems = []
        if self.samples < 1:
            problems.append(f"samples={self.samples} (need >= 1)")
        if self.max_images < 1:
            problems.append(f"max_images={self.max_images} (need >= 1: the original image)")
        if self.limit is not None and self.limit < 1:
            problems.append(f"limit={self.limit} (need >= 1, or unset for all)")
        if self.concurrency < 1:
            problems.append(f"concurrency={self.concurrency} (need >= 1)")
        if self.grounding_margin < 0:
            problems.append(f"grounding_margin={self.grounding_margin} (need >= 0 pixels)")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            problems.append(f"max_failure_rate={self.max_failure_rate} (need 0 <= rate <= 1)")
        if self.backend not in LOCAL_BACKENDS + API_BACKENDS:
            problems.append(f"backend={self.backend!r} (choose one of {', '.join(LOCAL_BACKENDS + API_BACKENDS)})")
        if self.max_pixels is not None and self.backend in LOCAL_BACKENDS:
            problems.append("max_pixels is for API backends; a local model's processor decides its own resize")
        if self.frame not in API_FRAMES:
            problems.append(f"frame={self.frame!r} (choose one of {', '.join(API_FRAMES)})")
        elif self.frame != Frame.MODEL.value and self.backend in LOCAL_BACKENDS:
            problems.append("frame is for API backends; a local checkpoint's family decides its frame")
        if problems:
            raise ConfigError("invalid eval settings: " + "; ".join(problems))
        # Sampling and runtime settings are checked where they are used, once, by their own classes.
        self.sampling(1, None)
        self.runtime()

    @property
    def task_spec(self) -> TaskSpec:
        return TaskSpec(self.task, self.task_options)

    def sampling(self, n: int, seed: int | None) -> SamplingParams:
        return SamplingParams(n=n, temperature=self.temperature, top_p=self.top_p, max_tokens=self.max_tokens,
                              seed=seed)

    def runtime(self) -> RuntimeConfig:
        """The client's timeout and retry policy (its other limits keep their defaults)."""
        return RuntimeConfig(timeout_s=self.timeout_s, max_retries=self.max_retries)


# ---------------------------------------------------------------------------------------------------------------
# How the model sees an image
# ---------------------------------------------------------------------------------------------------------------


def view_of(config: EvalConfig) -> View:
    """How the evaluated model sees images. A local Qwen-VL checkpoint writes its family's frame under its
    processor's resize (read from the checkpoint's config files, weights untouched); an API model writes
    ``config.frame`` of the image as sent (resized to ``config.max_pixels`` when set)."""
    if config.backend not in LOCAL_BACKENDS:
        return View(Frame(config.frame), Resize(max_pixels=config.max_pixels) if config.max_pixels else None)
    if Path(config.model).is_dir():
        try:
            return View.of_checkpoint(config.model)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    from transformers import AutoImageProcessor

    resize = Resize.of_processor(AutoImageProcessor.from_pretrained(config.model))
    return View(_local_family(config).frame, resize)


def _coordinate_hint(view: View) -> str | None:
    """How the system prompt describes coordinates (None: "pixel coordinates as shown")."""
    return NORM1000_HINT if view.frame is Frame.NORM1000 else None


# ---------------------------------------------------------------------------------------------------------------
# The student: prompts, single-turn samples, zoom dialogs
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Turn:
    """One generated assistant turn: the full text (prefill included), and what was prefilled."""

    text: str
    finish_reason: str | None
    parsed: Parsed
    prefill: str = ""


def fails_sample(error: TeacherError) -> bool:
    """Whether a failed request fails only its own sample rather than the run: the server refused this prompt for
    good (a 400 such as a prompt over the context length: sent again, it fails again), or its replies stayed
    malformed through the client's retries. Auth and routing refusals (``TeacherRejected.endpoint_refused``) would
    fail every request, and transient errors (timeouts, 429, 5xx) deserve a rerun, so those stop the run."""
    if isinstance(error, TeacherFormatError):
        return True
    return isinstance(error, TeacherRejected) and not error.endpoint_refused


@dataclass
class Dialog:
    """One sample: its turns, the zoom crops served (pixel-frame points), and how it ended (``error``: the request
    that failed it, see :func:`fails_sample`; the turns before it are kept)."""

    geometry: ImageGeometry
    frame: Frame
    turns: list[Turn] = field(default_factory=list)
    crops: list[Image.Image] = field(default_factory=list)
    zooms: list[Point] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    forced: bool = False
    error: TeacherError | None = None

    @property
    def answer(self) -> str | None:
        return self.turns[-1].parsed.answer if self.turns else None

    def pixel_steps(self) -> list[Step]:
        """Every grounded step of every turn, converted to the pixel frame."""
        return [s.to(Frame.PIXEL, self.geometry) for t in self.turns for s in t.parsed.steps]

    def pixel_points(self) -> list[list[float]]:
        """Every point named (steps and tool calls, in order) in the pixel frame, as ``[x, y]``."""
        points = (p.to(Frame.PIXEL, self.geometry) for t in self.turns for p in t.parsed.points)
        return [[round(p.x, 2), round(p.y, 2)] for p in points]

    def pixel_answer_point(self) -> Point | None:
        """A point answer in the pixel frame (for drawing), or None."""
        point = self.turns[-1].parsed.answer_point if self.turns else None
        return point.to(Frame.PIXEL, self.geometry) if point is not None else None

    def pixel_answer(self) -> str | None:
        """The answer text, a point answer rewritten in the pixel frame (for drawing)."""
        point = self.pixel_answer_point()
        return format_point(point) if point is not None else self.answer


class Student:
    """Asks a model the student prompt and runs the zoom loop, through one :class:`TeacherClient`.

    Args:
        client: the backend.
        view: how the model sees images (its coordinate frame).
        config: decoding settings and the image budget.
        task: the benchmark (its zoom crop geometry).
    """

    def __init__(self, client: TeacherClient, view: View, config: EvalConfig, task: Task) -> None:
        self.client = client
        self.view = view
        self.config = config
        self.task = task
        self.prefill = config.backend in PREFILL_BACKENDS

    def prompt(self, sample: Sample, canvas: Image.Image) -> list[Message]:
        prompts = prompts_for(sample.answer_kind)
        system = prompts.student_system(self.config.multi_turn, coordinate_hint=_coordinate_hint(self.view))
        return [Message("system", (system,)), Message("user", (ImageRef(canvas), prompts.question_text(sample)))]

    def _geometry(self, canvas: Image.Image, ref: ImageRef) -> ImageGeometry:
        # An API model sees the image as the client encodes it; a local one as its processor resizes it.
        return self.client.geometry(ref) if self.config.backend in API_BACKENDS else self.view.geometry(*canvas.size)

    def _parse(self, text: str, geometry: ImageGeometry, expect: Expect) -> Parsed:
        return parse_response(text, geometry=geometry, frame=self.view.frame, expect=expect)

    async def single_turn(self, sample: Sample, canvas: Image.Image, n: int, seed: int) -> list[Dialog]:
        """``n`` one-completion samples from one request."""
        chat = self.prompt(sample, canvas)
        geometry = self._geometry(canvas, chat[1].images[0])
        try:
            completions = await self.client.generate(chat, self.config.sampling(n, seed))
        except TeacherError as e:
            if not fails_sample(e):
                raise
            return [Dialog(geometry, self.view.frame, error=e) for _ in range(n)]
        return [
            Dialog(geometry, self.view.frame, [Turn(c.text, c.finish_reason, self._parse(c.text, geometry, "single"))])
            for c in completions
        ]

    async def multi_turn(self, sample: Sample, canvas: Image.Image, seed: int) -> Dialog:
        """One zoom dialog: at most ``max_images`` turns, each serving all its zoom calls; the last is forced to
        answer."""
        prompts = prompts_for(sample.answer_kind)
        chat = self.prompt(sample, canvas)
        geometry = self._geometry(canvas, chat[1].images[0])
        session = ZoomSession(canvas, self.view, self.task.zoom, prompts, max_images=self.config.max_images)
        dialog = Dialog(geometry, self.view.frame)
        for turn in range(self.config.max_images):
            # Refused zooms spend a turn but no image, so the turn count bounds the dialog too.
            dialog.forced = session.exhausted or turn == self.config.max_images - 1
            prefill = ""
            if dialog.forced and self.prefill:
                prefill = prompts.forced_answer_prefix()
                request = [*chat, Message("assistant", (prefill,))]
            elif dialog.forced:
                request = [*chat, Message("user", (prompts.student_force_answer(),))]
            else:
                request = chat
            try:
                (completion,) = await self.client.generate(request, self.config.sampling(1, seed + turn))
            except TeacherError as e:
                if not fails_sample(e):
                    raise
                dialog.error = e  # e.g. the dialog outgrew the server's context: its turns so far are kept
                break
            text = prefill + completion.text
            parsed = self._parse(text, geometry, "turn")
            dialog.turns.append(Turn(text, completion.finish_reason, parsed, prefill))
            calls = [c for c in parsed.tool_calls if c.name == ZOOM_TOOL_NAME]
            if dialog.forced or parsed.answer is not None or not calls:
                break
            chat.append(Message("assistant", (text,)))
            # Every call of the turn is served in order, each its own tool message, as GRPO's tool loop does;
            # calls past the image budget are refused there too.
            chat.extend(Message("tool", self._serve(session, c.arguments.get("point"), dialog)) for c in calls)
        return dialog

    @staticmethod
    def _serve(session: ZoomSession, point: object, dialog: Dialog) -> tuple[str | ImageRef, ...]:
        """The tool's reply to a zoom call: the crop and its observation, or why it was refused (the same
        ``str(ZoomRefused)`` text GRPO's environment replies with)."""
        try:
            result = session.zoom_at(point)
        except ZoomRefused as e:
            dialog.refused.append(str(e))
            return (str(e),)
        dialog.crops.append(result.image)
        dialog.zooms.append(result.point)
        return (ImageRef(result.image), result.text)


# ---------------------------------------------------------------------------------------------------------------
# Records, resume, summary
# ---------------------------------------------------------------------------------------------------------------


def _seed(base: int, question_id: str, k: int) -> int:
    """A per-(question, sample) seed: independent of evaluation order, so a resumed run draws the same samples."""
    digest = hashlib.sha256(f"{base}:{question_id}:{k}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # 31 bits: every backend takes it


def _record(sample: Sample, k: int, dialog: Dialog, score: float, mode: str) -> dict[str, Any]:
    g = dialog.geometry
    return {
        "question_id": sample.id,
        "k": k,
        "task": sample.task,
        "category": sample.category,
        "mode": mode,
        "prompt_version": PROMPT_VERSION,
        "frame": dialog.frame.value,
        "geometry": [g.width, g.height, g.model_width, g.model_height],
        "turns": [
            {"text": t.text, "prefill": t.prefill, "finish_reason": t.finish_reason,
             "problems": [p.code.value for p in t.parsed.problems]}
            for t in dialog.turns
        ],
        "points": dialog.pixel_points(),
        "step_points": [[round(s.point.x, 2), round(s.point.y, 2)] for s in dialog.pixel_steps()],
        "zooms": [[round(p.x, 2), round(p.y, 2)] for p in dialog.zooms],
        "refused_zooms": len(dialog.refused),
        "forced": dialog.forced,
        "answer": dialog.answer,
        "score": score,
        "error": {"kind": dialog.error.kind, "message": str(dialog.error)} if dialog.error is not None else None,
    }


def protocol(config: EvalConfig, task: Task, view: View) -> dict[str, Any]:
    """Everything that decides a number: reproduce it by evaluating with the same protocol."""
    import grounded_rl
    import trace_forge

    template = chat_template_for(config)
    return {
        "task": config.task,
        "task_options": dict(config.task_options),
        "split": config.split or task.default_split,
        "model": config.model,
        "backend": config.backend,
        "mode": "multi" if config.multi_turn else "single",
        "samples": config.samples,
        "decoding": {"temperature": config.temperature, "top_p": config.top_p, "max_tokens": config.max_tokens},
        "seed": config.seed,
        "prompt_version": PROMPT_VERSION,
        "prompt_templates_sha256": TEMPLATES_SHA256,
        "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest() if template is not None else None,
        "coordinates": {**view.to_dict(), "coordinate_hint": _coordinate_hint(view), "max_pixels": config.max_pixels},
        "zoom": {
            "max_images": config.max_images,
            "max_turns": config.max_images,
            "crop": task.zoom.crop,
            "out": task.zoom.out,
            "dot": task.zoom.dot,
            "forced_answer": "prefill" if config.backend in PREFILL_BACKENDS else "user_instruction",
        } if config.multi_turn else None,
        "verifier": f"trace_forge.tasks.{type(task).__name__}.score",
        "versions": {"grounded_rl": grounded_rl.__version__, "trace_forge": trace_forge.__version__},
    }


def _check_protocol(out_dir: Path, current: dict[str, Any]) -> None:
    """Refuse to mix samples of two protocols in one output directory."""
    path = out_dir / PROTOCOL_FILE
    if not path.exists():
        write_atomic(path, json.dumps(current, indent=2, sort_keys=True) + "\n")
        return
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"not valid JSON ({e}); remove it to start this folder over, or use another --out",
                        path=path) from None
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        raise ConfigError(
            f"{out_dir} holds an evaluation with a different protocol (differs in: {', '.join(changed)}); "
            "use another --out, or the same settings to resume"
        )


def summarize(task: Task, samples: Iterable[Sample], records: Iterable[dict[str, Any]], k: int) -> dict[str, Any]:
    """Metrics of finished records under the benchmark's own aggregation.

    ``avg@K`` aggregates each question's mean score over its samples (with K=1, the benchmark's accuracy);
    ``pass@K`` aggregates the unbiased pass@K of each question. Only questions with all ``k`` samples count.
    """
    by_id = {s.id: s for s in samples}
    scores: dict[str, dict[int, float]] = {}
    for r in records:
        if r["question_id"] in by_id and r["k"] < k:
            scores.setdefault(r["question_id"], {})[r["k"]] = r["score"]
    complete = [(by_id[q], list(s.values())) for q, s in scores.items() if len(s) == k]
    if not complete:
        raise ConfigError("no question has all its samples scored; nothing to summarize")
    avg = task.aggregate([(s, metrics.mean(v)) for s, v in complete])
    passed = task.aggregate([(s, metrics.pass_at_k(k, sum(x >= 1.0 for x in v), k)) for s, v in complete])
    return {f"avg@{k}": avg, f"pass@{k}": passed, "questions": len(complete)}


def _latest_records(path: Path) -> list[dict[str, Any]]:
    """The last record of each (question, sample) in ``samples.jsonl``: a failed sample asked again by a later run
    is superseded by its new record."""
    return list({(r["question_id"], r["k"]): r for r in read_records(path)}.values())


# Where the points of each kind are in a record: reasoning steps (``<think>``), and zooms the tool served.
_POINT_KINDS = {"reasoning": "step_points", "zoom": "zooms"}


def _share(on: int, total: int) -> dict[str, Any]:
    return {"on_target": on, "points": total, "precision": on / total if total else None}


def grounding_precision(
    samples: Iterable[Sample], records: Iterable[dict[str, Any]], k: int, margin: float = 0.0
) -> dict[str, Any]:
    """The grounding precision of the model's own points, from the records: the share of its reasoning points and
    of its zoom points (pixel frame) that are :func:`~trace_forge.tasks.on_target` (within ``margin`` pixels),
    pooled over every sample of every question with target boxes, overall and per category.

    Returns:
        ``{"applicable": True, "margin_px", "questions", "overall": {kind: share}, "categories": {name: {kind:
        share}}}`` with kinds ``reasoning``, ``zoom`` and ``all`` and shares ``{"on_target", "points",
        "precision"}`` (precision None without points); ``{"applicable": False, "reason"}`` when no sample has
        target boxes.
    """
    by_id = {s.id: s for s in samples if s.target_boxes}
    if not by_id:
        return {"applicable": False, "reason": "the benchmark's samples carry no target boxes"}
    counts: dict[str, dict[str, list[int]]] = {}
    questions = set()
    for r in records:
        sample = by_id.get(r["question_id"])
        if sample is None or r["k"] >= k:
            continue
        questions.add(sample.id)
        for kind, key in _POINT_KINDS.items():
            flags = [on_target(Point(x, y), sample.target_boxes, margin) for x, y in r.get(key, ())]
            for group in ("overall", sample.category or "-"):
                for name in (kind, "all"):
                    tally = counts.setdefault(group, {}).setdefault(name, [0, 0])
                    tally[0] += sum(flags)
                    tally[1] += len(flags)

    def shares(group: str) -> dict[str, Any]:
        found = counts.get(group, {})
        return {kind: _share(*found.get(kind, (0, 0))) for kind in (*_POINT_KINDS, "all")}

    return {
        "applicable": True,
        "margin_px": margin,
        "questions": len(questions),
        "overall": shares("overall"),
        "categories": {name: shares(name) for name in sorted(counts) if name != "overall"},
    }


def evidence_miou(task: Task, samples: Iterable[Sample], records: Iterable[dict[str, Any]], k: int
                  ) -> dict[str, float] | None:
    """TreeBench's evidence mIoU of finished records, None for any other task: per sample, the
    :func:`~trace_forge.tasks.treebench.evidence_iou` of the ``<box>`` tags of all its turns (read as the official
    script reads them, then mapped from the model's frame to pixels) with the evidence boxes; per question the mean
    over its samples; aggregated by the benchmark (overall and per category)."""
    if not isinstance(task, TreeBench):
        return None
    by_id = {s.id: s for s in samples}
    scores: dict[str, list[float]] = {}
    for r in records:
        sample = by_id.get(r["question_id"])
        if sample is None or r["k"] >= k:
            continue
        geometry, frame = ImageGeometry(*r["geometry"]), Frame(r["frame"])
        boxes = [Box(b.x1, b.y1, b.x2, b.y2, frame).to(Frame.PIXEL, geometry)
                 for b in read_boxes("\n".join(t["text"] for t in r["turns"]))]
        scores.setdefault(sample.id, []).append(evidence_iou(boxes, sample.target_boxes))
    if not scores:
        return None
    return task.aggregate([(by_id[q], metrics.mean(v)) for q, v in scores.items()])


def _counts(records: list[dict[str, Any]]) -> dict[str, Any]:
    problems = Counter(code for r in records for t in r["turns"] for code in set(t["problems"]))
    errors = Counter(r["error"]["kind"] for r in records if r.get("error"))
    return {
        "samples": len(records),
        "failed": sum(errors.values()),
        "errors": dict(sorted(errors.items())),
        "answered": sum(r["answer"] is not None for r in records),
        "well_formed": sum(bool(r["turns"]) and not r.get("error") and not any(t["problems"] for t in r["turns"])
                           for r in records),
        "truncated": sum(bool(r["turns"]) and r["turns"][-1]["finish_reason"] == "length" for r in records),
        "forced_answers": sum(r["forced"] for r in records),
        "zooms": sum(len(r["zooms"]) for r in records),
        "refused_zooms": sum(r["refused_zooms"] for r in records),
        "problems": dict(sorted(problems.items())),
    }


def _markdown(summary: dict[str, Any], k: int) -> str:
    p = summary["protocol"]
    avg, passed = summary["metrics"][f"avg@{k}"], summary["metrics"][f"pass@{k}"]
    lines = [
        f"# {p['task']} ({p['split']}): {p['model']}",
        "",
        f"{p['mode']}-turn, K={k}, temperature {p['decoding']['temperature']}, top_p {p['decoding']['top_p']}, "
        f"seed {p['seed']}, prompt v{p['prompt_version']}, {summary['metrics']['questions']} questions.",
        "",
    ]
    counts = summary["counts"]
    if counts["failed"]:
        kinds = ", ".join(f"{kind} {n}" for kind, n in counts["errors"].items())
        lines += [f"{counts['failed']} of {counts['samples']} samples failed ({kinds}) and score 0.", ""]
    lines += [
        f"| category | avg@{k} (%) | pass@{k} (%) |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {100 * avg[name]:.2f} | {100 * passed[name]:.2f} |" for name in avg]
    lines += ["", *_grounding_markdown(summary["grounding"])]
    miou = summary.get("evidence_miou")
    if miou is not None:
        lines += ["", "## Evidence boxes (TreeBench mIoU)", "", "| category | mIoU (%) |", "|---|---:|"]
        lines += [f"| {name} | {100 * value:.2f} |" for name, value in miou.items()]
    return "\n".join(lines) + "\n"


def _grounding_markdown(grounding: dict[str, Any]) -> list[str]:
    lines = ["## Grounding precision", ""]
    if not grounding["applicable"]:
        return [*lines, f"Not applicable: {grounding['reason']}."]

    def cell(share: dict[str, Any]) -> str:
        if share["precision"] is None:
            return "-"
        return f"{100 * share['precision']:.2f} ({share['on_target']}/{share['points']})"

    lines += [
        f"Points of the model's own reasoning and zooms that land in a target box (margin {grounding['margin_px']:g} "
        f"px), over {grounding['questions']} questions.",
        "",
        "| category | reasoning points (%) | zoom points (%) | all points (%) |",
        "|---|---:|---:|---:|",
    ]
    groups = {"overall": grounding["overall"], **grounding["categories"]}
    lines += [f"| {name} | {cell(g['reasoning'])} | {cell(g['zoom'])} | {cell(g['all'])} |" for name, g in groups.items()]
    return lines


# ---------------------------------------------------------------------------------------------------------------
# The evaluation
# ---------------------------------------------------------------------------------------------------------------


def _local_family(config: EvalConfig) -> Family:
    """The family of a local checkpoint, from its config (a directory or a Hub id; weights untouched)."""
    from transformers import AutoConfig

    from grounded_rl.models import family_of

    return family_of(AutoConfig.from_pretrained(config.model))


def chat_template_for(config: EvalConfig) -> str | None:
    """The chat template a local checkpoint is evaluated with: ours for its family, the one SFT and GRPO render
    dialogs with, since a base or third-party checkpoint may ship one that renders tool turns differently.
    None for API backends: their servers apply their own."""
    if config.backend not in LOCAL_BACKENDS:
        return None
    from grounded_rl.templates import chat_template

    return chat_template(_local_family(config))


def make_client(config: EvalConfig) -> TeacherClient:
    """The client of ``config.backend`` under ``config``'s timeout and retries: a local checkpoint with our chat
    template (:func:`chat_template_for`); an API backend sending images resized to ``config.max_pixels`` if set."""
    template = chat_template_for(config)
    options = {"chat_template": template} if template is not None else {}
    resize = Resize(max_pixels=config.max_pixels) if config.max_pixels is not None else None
    # PNG: the model is scored on the lossless pixels it trained on (crops included), not on a JPEG's.
    return build_client(config.backend, config.model, config.base_urls, config=config.runtime(), resize=resize,
                        image_format="png", **options)


class TooManyFailures(TraceForgeError):
    """More samples failed than ``max_failure_rate`` allows; the summary was written all the same."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


def evaluate(
    config: EvalConfig,
    out_dir: str | Path,
    *,
    client: TeacherClient | None = None,
    on_record: Callable[[dict[str, Any], int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``config.model`` on ``config.task``, resuming from ``out_dir/samples.jsonl`` if present.

    Samples recorded as failed (:func:`fails_sample`) by an earlier run are asked again.

    Args:
        config: what to evaluate and how.
        out_dir: output directory (created); holds ``eval.json``, ``samples.jsonl``, ``summary.json/.md``.
        client: a ready client (tests, or to share a loaded model); built from ``config`` when None and closed
            at the end.
        on_record: called after each finished sample with ``(record, done, total)`` (progress bars).

    Returns:
        The summary written to ``summary.json``.

    Raises:
        ConfigError: bad settings, ``out_dir`` holds an evaluation under another protocol, or another process is
            writing it.
        TooManyFailures: more than ``config.max_failure_rate`` of the samples failed (after writing the summary).
        TeacherError: a request failed in a way that stops the run; finished samples are kept, rerun to resume.
        StorageError: ``samples.jsonl`` or the summary could not be written (e.g. a full disk).
    """
    out = Path(out_dir)
    with OutputLock(out, "eval"):  # a second eval in the same folder would pay twice and mix records
        return _evaluate(config, out, client, on_record)


def _evaluate(
    config: EvalConfig,
    out: Path,
    client: TeacherClient | None,
    on_record: Callable[[dict[str, Any], int, int], None] | None,
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    task = config.task_spec.build()
    samples = list(task.load(data_dir=config.data_dir, split=config.split, limit=config.limit))
    if not samples:
        raise ConfigError(f"task {config.task!r} loaded no samples from {config.data_dir}")
    view = view_of(config)
    current = protocol(config, task, view)
    _check_protocol(out, current)

    path = out / SAMPLES_FILE
    done = {(r["question_id"], r["k"]) for r in read_records(path, repair=True) if not r.get("error")}
    todo = [(s, [k for k in range(config.samples) if (s.id, k) not in done]) for s in samples]
    todo = [(s, ks) for s, ks in todo if ks]
    total = len(samples) * config.samples
    logger.info("%s: %d of %d samples already done", config.task, total - sum(len(ks) for _, ks in todo), total)
    asyncio.run(_run(config, task, view, client, todo, path, total, on_record))

    ids = {s.id for s in samples}
    records = [r for r in _latest_records(path) if r["question_id"] in ids]
    summary = {
        "task": config.task,
        "metrics": summarize(task, samples, records, config.samples),
        "grounding": grounding_precision(samples, records, config.samples, config.grounding_margin),
        "counts": _counts(records),
        "protocol": current,
    }
    miou = evidence_miou(task, samples, records, config.samples)
    if miou is not None:
        summary["evidence_miou"] = miou
    write_atomic(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    write_atomic(out / SUMMARY_MD, _markdown(summary, config.samples))
    failed, n = summary["counts"]["failed"], summary["counts"]["samples"]
    if failed > config.max_failure_rate * n:
        kinds = ", ".join(f"{kind} {count}" for kind, count in summary["counts"]["errors"].items())
        raise TooManyFailures(
            f"{failed} of {n} samples failed ({kinds}; their errors are in {path}), more than --max-failure-rate "
            f"{config.max_failure_rate:g} allows; {out / SUMMARY_FILE} scores them 0, and a rerun with the same "
            "settings asks them again", summary)
    return summary


async def _run(
    config: EvalConfig,
    task: Task,
    view: View,
    client: TeacherClient | None,
    todo: list[tuple[Sample, list[int]]],
    path: Path,
    total: int,
    on_record: Callable[[dict[str, Any], int, int], None] | None,
) -> None:
    owned = client is None
    client = client if client is not None else make_client(config)
    student = Student(client, view, config, task)
    mode = "multi" if config.multi_turn else "single"
    slots = asyncio.Semaphore(config.concurrency)
    done = total - sum(len(ks) for _, ks in todo)

    def finish(sample: Sample, k: int, dialog: Dialog) -> None:
        nonlocal done
        # A failed sample has no answer: scored as the official scripts score a reply in the wrong format.
        score = score_answer(task, sample, dialog.answer, dialog.geometry, dialog.frame).score
        record = _record(sample, k, dialog, score, mode)
        if dialog.error is not None:
            logger.warning("question %s sample %d failed: %s", sample.id, k, dialog.error)
        append_record(path, record)
        done += 1
        if on_record is not None:
            on_record(record, done, total)

    stopped = False

    async def question(sample: Sample, ks: list[int]) -> None:
        nonlocal stopped
        async with slots:
            # A run-ending error (an auth refusal) releases its slot before the task group cancels the queued
            # questions; the one woken by that release must not reach the server.
            if stopped:
                return
            try:
                canvas = sample.canvas()
                if config.multi_turn:
                    for k in ks:
                        finish(sample, k, await student.multi_turn(sample, canvas, _seed(config.seed, sample.id, k)))
                else:
                    # One request for all K samples; on resume the missing ones are taken from the same draw.
                    dialogs = await student.single_turn(
                        sample, canvas, config.samples, _seed(config.seed, sample.id, 0))
                    for k in ks:
                        finish(sample, k, dialogs[k])
            except BaseException:
                stopped = True
                raise

    try:
        async with asyncio.TaskGroup() as group:
            for sample, ks in todo:
                group.create_task(question(sample, ks))
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0]  # noqa: B904 - the first failure, with its own cause, is the error to report
    finally:
        if owned:
            await client.aclose()
