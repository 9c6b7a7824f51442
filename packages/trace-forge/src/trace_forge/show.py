"""Draw a grounded trace as one picture: the image with numbered point markers, the steps beside it, crops
below. Where the question has target boxes, each marker is ringed green when its point is on target
(:func:`~trace_forge.tasks.on_target`) and red when it is not, and the panel says which.

:func:`render_trace` is the drawing; the loaders turn what is on disk into :class:`TraceView` objects to draw:

- :func:`dataset_views`: one row of a linearized dataset (``DIR/hf`` saved with ``save_to_disk``, or ``DIR``).
- :func:`run_views`: a question of a search run directory (``trees.jsonl``): its most informative trajectory
  (:func:`best_trajectory`), or all correct ones, on the sample canvas re-loaded from the task data named in
  ``run.json``.

Every picture carries the question, and an answer that is missing or forced says why.

Example:
    >>> from PIL import Image
    >>> from trace_forge.grounding import Point, Step
    >>> steps = [Step("The mug (40, 30).", Point(40, 30))]
    >>> picture = render_trace(Image.new("RGB", (640, 480)), steps, "red")
    >>> picture.width > 640
    True
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import Box, Frame, Point, Step, zoom
from trace_forge.search.records import read_questions
from trace_forge.search.store import TREES, RunStore
from trace_forge.search.tree import Tree
from trace_forge.tasks import Sample, on_target
from trace_forge.tasks.prompts import lettered

__all__ = [
    "PALETTE",
    "TraceView",
    "TreeTrajectory",
    "render_trace",
    "tree_trajectories",
    "step_flags",
    "best_trajectory",
    "asked",
    "dataset_views",
    "run_views",
    "load_views",
    "save_views",
]

log = logging.getLogger(__name__)

# Tableau 10: distinct hues that all stay readable under white label text. Step i uses PALETTE[i % 10].
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)
ANSWER_COLOUR = (255, 215, 0)  # a point answer: gold ring, apart from every step colour
BOX_COLOUR = (0, 255, 0)  # ground-truth target boxes
ON_TARGET_COLOUR = (0, 200, 0)  # ring of a step point inside a target box
OFF_TARGET_COLOUR = (230, 0, 0)  # ring of a step point outside every target box
PANEL_WIDTH = 560
CROP_SIDE = 200  # crops are shown at most this large
MARGIN = 16
_BG = (255, 255, 255)
_INK = (20, 20, 20)
_QUESTION_INK = (70, 70, 110)
_FONT_SIZE = 16


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font, so rendering does not depend on the fonts installed on the machine.
    return ImageFont.load_default(size=size)


# ------------------------------------------------------------------------------------------------------------
# Drawing
# ------------------------------------------------------------------------------------------------------------


def _wrap(text: str, font: Any, width: float) -> list[str]:
    """Greedy word wrap to ``width`` pixels; a word longer than a line is cut by characters."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        while font.getlength(word) > width:  # e.g. a long URL: cut where it stops fitting
            cut = max(1, max(i for i in range(1, len(word) + 1) if font.getlength(word[:i]) <= width))
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines or [""]


def _label(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    colour: tuple[int, int, int],
    font: Any,
    bounds: tuple[int, int],
    taken: list[tuple[float, float, float, float]],
) -> None:
    """A filled tag with white text whose bottom-left corner sits at ``xy``, kept inside ``bounds``.

    A tag that would cover one in ``taken`` (nearby points) moves down until it does not; its box is then
    added.
    """
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 6, bottom - top + 4
    x = min(max(xy[0], 0), bounds[0] - w)
    y = min(max(xy[1] - h, 0), bounds[1] - h)
    while any(x < tx2 and tx1 < x + w and y < ty2 and ty1 < y + h for tx1, ty1, tx2, ty2 in taken):
        y += h + 1
    taken.append((x, y, x + w, y + h))
    draw.rectangle((x, y, x + w, y + h), fill=colour, outline=(255, 255, 255))
    draw.text((x + 3 - left, y + 2 - top), text, fill=(255, 255, 255), font=font)


def _draw_markers(
    image: Image.Image,
    points: Sequence[Point],
    answer: Point | None,
    boxes: Sequence[Box],
    scale: float,
    on_target: Sequence[bool] | None = None,
) -> None:
    """Boxes, then step markers (filled disc + number tag, ringed green or red by ``on_target`` when given), then
    the answer ring, all scaled by ``scale``."""
    draw = ImageDraw.Draw(image)
    radius = max(6, round(max(image.size) / 90))
    font = _font(max(12, round(radius * 1.8)))
    taken: list[tuple[float, float, float, float]] = []
    for box in boxes:
        draw.rectangle([v * scale for v in box.to_list()], outline=BOX_COLOUR, width=2)
    for i, point in enumerate(points):
        x, y = point.x * scale, point.y * scale
        colour = PALETTE[i % len(PALETTE)]
        if on_target is not None:
            ring = radius + max(3, radius // 2)
            draw.ellipse((x - ring, y - ring, x + ring, y + ring),
                         fill=ON_TARGET_COLOUR if on_target[i] else OFF_TARGET_COLOUR)
        draw.ellipse(
            (x - radius, y - radius, x + radius, y + radius), fill=colour, outline=(255, 255, 255), width=2
        )
        _label(draw, (x + radius, y - radius), str(i + 1), colour, font, image.size, taken)
    if answer is not None:
        x, y = answer.x * scale, answer.y * scale
        r = radius * 2
        draw.ellipse((x - r, y - r, x + r, y + r), outline=(0, 0, 0), width=5)
        draw.ellipse((x - r, y - r, x + r, y + r), outline=ANSWER_COLOUR, width=3)
        _label(draw, (x + r, y - r), "answer", (120, 100, 0), font, image.size, taken)


def _panel(
    steps: Sequence[Step],
    answer: str,
    title: str | None,
    question: str | None,
    note: str | None,
    height: int,
    on_target: Sequence[bool] | None = None,
) -> Image.Image:
    """The text column: title, question, numbered step texts (number in the step's colour, then "on target" in
    green or "off target" in red when ``on_target`` is given), the answer, and a note on it (why there is none, or
    that it was forced)."""
    font, big = _font(_FONT_SIZE), _font(_FONT_SIZE + 4)
    line_h, big_h = round(_FONT_SIZE * 1.35), round((_FONT_SIZE + 4) * 1.35)
    width = PANEL_WIDTH - 2 * MARGIN
    indent = round(font.getlength("00. "))
    ops: list[tuple[int, int, str, Any, tuple[int, int, int]]] = []  # (x, y, text, font, colour)
    y = MARGIN
    if title:
        for line in _wrap(title, big, width):
            ops.append((0, y, line, big, _INK))
            y += big_h
        y += line_h // 2
    if question:
        for line in _wrap(question, font, width):
            ops.append((0, y, line, font, _QUESTION_INK))
            y += line_h
        y += line_h // 2
    for i, step in enumerate(steps):
        ops.append((0, y, f"{i + 1}.", font, PALETTE[i % len(PALETTE)]))
        if on_target is not None:
            ops.append((indent, y, "on target" if on_target[i] else "off target", font,
                        ON_TARGET_COLOUR if on_target[i] else OFF_TARGET_COLOUR))
            y += line_h
        for line in _wrap(step.text, font, width - indent):
            ops.append((indent, y, line, font, _INK))
            y += line_h
        y += line_h // 4
    y += line_h // 2
    for line in _wrap(f"Answer: {answer}" if answer.strip() else "Answer: (none)", big, width):
        ops.append((0, y, line, big, _INK))
        y += big_h
    for line in _wrap(note or "", font, width) if note else ():
        ops.append((0, y, line, font, _QUESTION_INK))
        y += line_h
    panel = Image.new("RGB", (PANEL_WIDTH, max(height, y + MARGIN)), _BG)
    draw = ImageDraw.Draw(panel)
    for x, y_, text, f, colour in ops:
        draw.text((MARGIN + x, y_), text, fill=colour, font=f)
    return panel


def _crop_strip(crops: Sequence[Image.Image], width: int) -> Image.Image:
    """Crops in rows that fit ``width``, each under a tag with its zoom number in the step's colour."""
    font = _font(_FONT_SIZE)
    tag_h = round(_FONT_SIZE * 1.6)
    cell = CROP_SIDE + MARGIN
    per_row = max(1, (width - MARGIN) // cell)
    n_rows = -(-len(crops) // per_row)
    strip = Image.new("RGB", (width, n_rows * (CROP_SIDE + tag_h + MARGIN) + MARGIN), _BG)
    draw = ImageDraw.Draw(strip)
    for i, crop in enumerate(crops):
        x = MARGIN + (i % per_row) * cell
        y = MARGIN + (i // per_row) * (CROP_SIDE + tag_h + MARGIN)
        thumb = crop.convert("RGB")
        thumb.thumbnail((CROP_SIDE, CROP_SIDE), Image.Resampling.LANCZOS)
        colour = PALETTE[i % len(PALETTE)]
        draw.rectangle((x, y, x + thumb.width - 1, y + tag_h - 2), fill=colour)
        draw.text((x + 4, y + 2), f"zoom {i + 1}", fill=(255, 255, 255), font=font)
        strip.paste(thumb, (x, y + tag_h))
    return strip


def render_trace(
    image: Image.Image,
    steps: Sequence[Step],
    answer: str,
    crops: Sequence[Image.Image] | None = None,
    title: str | None = None,
    *,
    question: str | None = None,
    note: str | None = None,
    answer_point: Point | None = None,
    target_boxes: Sequence[Box] = (),
    on_target: Sequence[bool] | None = None,
    max_side: int = 1024,
) -> Image.Image:
    """Draw one trace: the image with a numbered marker per step, the step texts beside it, the crops below.

    Args:
        image: the sample canvas the points refer to.
        steps: grounded steps with points in the ``pixel`` frame of ``image``, in order; step ``i`` is drawn
        as a
            disc with the number ``i + 1`` in ``PALETTE[i % 10]``, the same colour as its number in the panel.
        answer: the final answer text.
        crops: zoom crops of a multi-turn chain, in order; crop ``i`` is tagged ``zoom i+1`` in step ``i``'s
        colour.
        title: a heading for the text panel (task, question id, kind, correctness).
        question: the question, under the title.
        note: a line under the answer: why there is no answer, or how it came about (forced at a limit).
        answer_point: a point answer in the pixel frame, drawn as a gold ring.
        target_boxes: ground-truth boxes (pixel frame) drawn as green rectangles.
        on_target: per step, whether its point is on target: a green ring and "on target" in the panel, or a red
            ring and "off target"; None (no target boxes) draws neither.
        max_side: the image is scaled down (never up) so its longer side is at most this.

    Returns:
        An RGB image: the scaled image and a ``PANEL_WIDTH``-wide text panel side by side, and the crop strip
        below them when there are crops.

    Raises:
        ValueError: if a step point is not in the pixel frame (convert it first with ``Step.to``), or
            ``on_target`` does not have one flag per step.
    """
    if on_target is not None and len(on_target) != len(steps):
        raise ValueError(f"{len(on_target)} on-target flags for {len(steps)} steps")
    for step in steps:
        if step.point.frame is not Frame.PIXEL:
            raise ValueError(
                f"render_trace draws pixel-frame points; got {step.point.frame} in {step.text!r}"
            )
    base = image.convert("RGB")
    scale = min(1.0, max_side / max(base.size))
    if scale < 1.0:
        base = base.resize(
            (max(1, round(base.width * scale)), max(1, round(base.height * scale))), Image.Resampling.LANCZOS
        )
    _draw_markers(base, [s.point for s in steps], answer_point, target_boxes, scale, on_target)
    panel = _panel(steps, answer, title, question, note, base.height, on_target)
    top_h = max(base.height, panel.height)
    width = base.width + panel.width
    strip = _crop_strip(crops, width) if crops else None
    out = Image.new("RGB", (width, top_h + (strip.height if strip else 0)), _BG)
    out.paste(base, (0, 0))
    out.paste(panel, (base.width, 0))
    if strip:
        out.paste(strip, (0, top_h))
    return out


# ------------------------------------------------------------------------------------------------------------
# What to draw
# ------------------------------------------------------------------------------------------------------------


@dataclass
class TraceView:
    """Everything :func:`render_trace` needs for one trace, as read from disk."""

    image: Image.Image
    steps: list[Step]
    answer: str
    crops: list[Image.Image] = field(default_factory=list)
    title: str = ""
    target_boxes: list[Box] = field(default_factory=list)
    answer_point: Point | None = None
    on_target: list[bool] | None = None
    question: str = ""
    note: str = ""

    def render(self, max_side: int = 1024) -> Image.Image:
        return render_trace(
            self.image,
            self.steps,
            self.answer,
            self.crops,
            self.title,
            question=self.question,
            note=self.note,
            answer_point=self.answer_point,
            target_boxes=self.target_boxes,
            on_target=self.on_target,
            max_side=max_side,
        )


@dataclass(frozen=True)
class TreeTrajectory:
    """A trajectory of a search tree: the path to ``node``, then rollout ``rollout``'s steps (None: ``node``
    is a terminal answer), then the answer."""

    node: int
    rollout: int | None
    steps: list[Step]
    answer: str
    reward: float
    answer_point: Point | None = None
    note: str = ""

    @property
    def correct(self) -> bool:
        return self.reward >= 1


def _rollout_note(rollout: Any) -> str:
    if not rollout.answered:
        return "The teacher gave no <answer> before the rollout ended; its last text was judged."
    if rollout.forced:
        return "Answer forced: the depth or rollout-step limit was reached."
    return ""


def tree_trajectories(tree: Tree) -> list[TreeTrajectory]:
    """Every trajectory of ``tree``: each rollout of each node, and each terminal node, in node order."""
    out: list[TreeTrajectory] = []
    for node in tree.nodes:
        prefix = tree.steps_to(node)
        if node.terminal:
            out.append(TreeTrajectory(node.id, None, prefix, node.answer or "", node.reward or 0.0,
                                      node.answer_point))
        for k, rollout in enumerate(node.rollouts):
            out.append(TreeTrajectory(node.id, k, prefix + rollout.steps, rollout.answer, rollout.reward,
                                      rollout.answer_point, _rollout_note(rollout)))
    return out


def best_trajectory(tree: Tree) -> TreeTrajectory | None:
    """The trajectory to show for a question, the most informative one: correct first, then the most distinct
    grounded points, then the highest tree value.

    A zero-step answer that happens to be right shows nothing of the method; the trajectory that looks at the
    most places does. Among those, the tree value of the node it leaves the tree at (the search's own estimate
    of how often that path reaches a right answer) prefers the reliable ones.
    """
    trajectories = tree_trajectories(tree)
    if not trajectories:
        return None

    def informative(t: TreeTrajectory) -> tuple[bool, int, float, int]:
        points = {(round(s.point.x), round(s.point.y)) for s in t.steps}
        return t.correct, len(points), tree.nodes[t.node].value, -t.node

    return max(trajectories, key=informative)


def asked(sample: Sample) -> str:
    """The question as drawn on a picture: its text, then its lettered options."""
    return "  ".join([sample.question.strip(), *lettered(list(sample.options))])


def step_flags(steps: Sequence[Step], boxes: Sequence[Box], margin: float = 0.0) -> list[bool] | None:
    """Per step (pixel frame), whether it is on target; None without target boxes."""
    return [on_target(s.point, boxes, margin) for s in steps] if boxes else None


def _grounding_title(flags: list[bool] | None) -> str:
    return "" if flags is None else f" · on target {sum(flags)}/{len(flags)}"


def dataset_views(path: str | Path, index: int = 0, split: str = "train", grounding_margin: float = 0.0
                  ) -> list[TraceView]:
    """Row ``index`` of split ``split`` of a linearized dataset (a folder written by ``linearize``).

    The first image of the row is the canvas; the others are its zoom crops in order (multi-turn rows). Points
    are drawn in pixels of the canvas, whatever frame the dataset was written in.

    Raises:
        DataError: ``path`` holds no trace dataset.
        ConfigError: no such row.
    """
    from trace_forge.dataset import TraceRow, load_traces

    ds = load_traces(path, split)
    if not 0 <= index < len(ds):
        raise ConfigError(f"--index {index} out of range: split {split!r} of {path} has {len(ds)} rows")
    row = TraceRow.from_row(ds[index], where=path)
    chain = row.chain.map_points(lambda p: p.to(Frame.PIXEL, row.geometry))
    verdict = "correct" if chain.correct else "wrong"
    flags = step_flags(chain.steps, row.sample.target_boxes, grounding_margin)
    title = f"{row.sample.task} · {row.sample.id} · {chain.kind}/{row.mode} · {verdict}{_grounding_title(flags)}"
    return [TraceView(row.images[0], list(chain.steps), chain.answer, list(row.images[1:]), title,
                      row.sample.target_boxes, chain.answer_point, flags, question=asked(row.sample))]


def run_views(
    run_dir: str | Path,
    index: int = 0,
    *,
    all_correct: bool = False,
    zoom_crops: bool = True,
    data_dir: str | Path | None = None,
    grounding_margin: float = 0.0,
) -> list[TraceView]:
    """Trajectories of question ``index`` (``trees.jsonl`` order) of a search run.

    Args:
        run_dir: the run directory (``run.json`` + ``trees.jsonl``).
        index: which question.
        all_correct: every correct trajectory instead of the most informative one (:func:`best_trajectory`).
        zoom_crops: also show the crop each step would zoom to, with the task's zoom spec (multi-turn view).
        data_dir: the task data, when not where ``run.json`` says (the run was made on another machine).
        grounding_margin: pixels a point may lie outside a target box and still be on target.

    Raises:
        DataError: not a run directory, or the question's sample cannot be found.
        ConfigError: no such question, or ``all_correct`` and none is correct.
    """
    run_dir = Path(run_dir)
    run = RunStore(run_dir).read_run() if run_dir.is_dir() else None
    if run is None:
        raise DataError("not a run directory (no run.json)", path=run_dir)
    records = [record for _, record in read_questions(run_dir / TREES)]
    if not 0 <= index < len(records):
        raise ConfigError(f"--index {index} out of range: {run_dir / TREES} has {len(records)} questions")
    record = records[index]
    tree = record.tree
    if all_correct:
        chosen = [t for t in tree_trajectories(tree) if t.correct]
        if not chosen:
            raise ConfigError(f"question {record.id!r} has no correct trajectory")
    else:
        best = best_trajectory(tree)
        if best is None:
            raise ConfigError(f"question {record.id!r} has no trajectory (empty tree)")
        chosen = [best]
    sample = record.question.sample(run_dir, data_dir if data_dir is not None else run.data_dir)
    canvas = sample.canvas()
    record.question.check_canvas(canvas)
    spec = record.question.task.build().zoom
    views = []
    for t in chosen:
        where = f"node {t.node}" + (f" rollout {t.rollout}" if t.rollout is not None else " (terminal)")
        verdict = "correct" if t.correct else "wrong"
        crops = [zoom(canvas, s.point.x, s.point.y, spec).image for s in t.steps] if zoom_crops else []
        flags = step_flags(t.steps, record.question.target_boxes, grounding_margin)
        title = f"{record.question.task.name} · {record.id} · {where} · {verdict}{_grounding_title(flags)}"
        views.append(TraceView(canvas, t.steps, t.answer, crops, title, record.question.target_boxes,
                               t.answer_point, flags, question=asked(sample), note=t.note))
    return views


def load_views(
    path: str | Path,
    index: int = 0,
    *,
    split: str = "train",
    all_correct: bool = False,
    zoom_crops: bool = True,
    data_dir: str | Path | None = None,
    grounding_margin: float = 0.0,
) -> list[TraceView]:
    """:func:`run_views` when ``path`` holds a ``trees.jsonl``, else :func:`dataset_views`."""
    if (Path(path) / TREES).exists():
        return run_views(path, index, all_correct=all_correct, zoom_crops=zoom_crops, data_dir=data_dir,
                         grounding_margin=grounding_margin)
    return dataset_views(path, index, split, grounding_margin)


def save_views(views: Sequence[TraceView], out: str | Path, max_side: int = 1024) -> list[Path]:
    """Render and save each view: ``out`` itself for one view, ``out`` with ``-1``, ``-2``, ... for
    several."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(views) == 1 else [out.with_stem(f"{out.stem}-{i + 1}") for i in range(len(views))]
    for view, path in zip(views, paths, strict=True):
        view.render(max_side).save(path)
        log.info("wrote %s", path)
    return paths
