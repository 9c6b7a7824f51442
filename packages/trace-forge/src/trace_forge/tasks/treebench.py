"""TreeBench (``HaochenWang/TreeBench``; Wang et al. 2025, arXiv 2507.07999): 405 multiple-choice questions on dense
SA-1B scenes, each with the boxes of the objects that justify its answer ("traceable evidence").

File: ``TreeBench.tsv``, VLMEvalKit's layout (:mod:`~trace_forge.tasks.vlmeval`), with ``category`` (ten, from
``Perception/Attributes`` to ``Reasoning/Comparison``) and ``target_instances``: the evidence boxes, a list literal
of ``[x1, y1, x2, y2]`` in pixels of the image. They become :attr:`Sample.target_boxes`.

Accuracy, as ``inference_treebench.py`` of Haochen-Wang409/TreeVGR scores it: the text in ``<answer>``, upper-cased,
must equal the correct letter. :func:`~trace_forge.tasks.scoring.choose_option` (the default reader) reads every such
answer, a bare letter in either case, alike; it also takes the option text our prompts ask for, and a letter written
with its own option's text ("B. right"), which the official match refuses. Reported: micro accuracy overall and per
category.

Evidence (the same script): the predicted boxes are those :func:`read_boxes` finds in the whole response; a question
scores :func:`evidence_iou`, and the benchmark's mIoU is the mean over all questions (:func:`metrics.mean
<trace_forge.tasks.metrics.mean>`). The script compares the model's boxes with the evidence as they are; Qwen2.5-VL
writes pixels of its resized input, which its processor bounds (1280 to 16384 patches of 28 px) leave within the
multiple-of-28 rounding of SA-1B's originals (inferred from the image sizes, not stated). Pass boxes in the image's
pixel frame.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterator, Sequence
from operator import attrgetter
from pathlib import Path

from trace_forge.grounding import Box
from trace_forge.tasks import metrics, vlmeval
from trace_forge.tasks.base import Task, register
from trace_forge.tasks.io import Record, SkipPolicy, resolve_root
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = ["TreeBench", "read_boxes", "box_iou", "evidence_iou"]

FILE = "TreeBench.tsv"
_REQUIRED = ("index", "question", "A", "B", "answer", "category", "target_instances", "image")
_BOX_TAG = re.compile(r"<box>(.*?)</box>", re.DOTALL)
_BOX = re.compile(r"\[(\d+),(\d+),(\d+),(\d+)\]")  # the official pattern: integers, no spaces, matched at the start


def read_boxes(response: str) -> list[Box]:
    """The boxes of a response as TreeVGR reads them: every ``<box>[x1,y1,x2,y2]</box>`` whose content starts with
    four comma-separated integers (no spaces) and has ``x1 < x2`` and ``y1 < y2``; any other box is ignored.

    Example:
        >>> read_boxes("<think>the cup <box>[10,20,50,60]</box>, the mug <box>[5, 5, 9, 9]</box></think>")
        [Box(x1=10, y1=20, x2=50, y2=60, frame=<Frame.PIXEL: 'pixel'>)]
    """
    boxes = []
    for content in _BOX_TAG.findall(response):
        match = _BOX.match(content.strip())
        if match:
            x1, y1, x2, y2 = (int(v) for v in match.groups())
            if x1 < x2 and y1 < y2:
                boxes.append(Box(x1, y1, x2, y2))
    return boxes


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes in one frame; 0.0 when the union is empty.

    Raises:
        ValueError: when the frames differ.

    Example:
        >>> box_iou(Box(0, 0, 10, 10), Box(5, 0, 15, 10))
        0.3333333333333333
    """
    if a.frame is not b.frame:
        raise ValueError(f"IoU of boxes in frames {a.frame} and {b.frame}")
    inter = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1)) * max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def evidence_iou(predicted: Sequence[Box], evidence: Sequence[Box]) -> float:
    """A question's box score in TreeBench: each evidence box's best IoU with any predicted box (0 without one),
    averaged over the evidence boxes; 0.0 for a question without evidence boxes, as the official script counts it.

    Example:
        >>> evidence_iou([Box(0, 0, 10, 10)], [Box(0, 0, 10, 10), Box(50, 50, 60, 60)])
        0.5
    """
    if not evidence:
        return 0.0
    return math.fsum(max((box_iou(target, box) for box in predicted), default=0.0) for target in evidence) / len(
        evidence
    )


@register
class TreeBench(Task):
    """TreeBench: micro accuracy overall and per category; evidence boxes in ``target_boxes`` for the mIoU."""

    name = "treebench"
    answer_kind = AnswerKind.OPTION
    hub_id = "HaochenWang/TreeBench"
    license_note = "TreeBench (HaochenWang/TreeBench, Apache-2.0); images from Meta's SA-1B, under its terms"

    def read(self, data_dir: str | Path | None, split: str | None, policy: SkipPolicy) -> Iterator[Sample]:
        """Read ``TreeBench.tsv`` in ``data_dir``, or the file ``data_dir`` names (``.tsv`` or ``.parquet``)."""
        self.resolve_split(split)
        root = resolve_root(data_dir, self.hub_id, allow_patterns=[FILE])
        rows = vlmeval.table_rows(root if root.is_file() else root / FILE, _REQUIRED)
        images = vlmeval.image_cells(rows)
        return policy.convert(rows, lambda rec: self._sample(rec, images))

    def _sample(self, rec: Record, images: dict[str, str]) -> Sample:
        return vlmeval.option_sample(rec, images, self.name, target_boxes=self._evidence(rec),
                                     category=rec.text("category").strip())

    @staticmethod
    def _evidence(rec: Record) -> list[Box]:
        value = rec.require("target_instances")
        if isinstance(value, str):
            try:
                value = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                raise rec.error(f"target_instances is not a list literal: {value[:80]!r}",
                                "bad field 'target_instances'") from None
        if not isinstance(value, list | tuple):
            raise rec.error(f"target_instances must be a list of [x1, y1, x2, y2], got {value!r}",
                            "bad field 'target_instances'")
        return [rec.box(box, "xyxy", field="target_instances") for box in value]

    def aggregate(self, results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
        """``overall``: micro accuracy over the questions; one entry per category."""
        return {
            "overall": metrics.mean(score for _, score in results),
            **metrics.group_means(results, attrgetter("category")),
        }
