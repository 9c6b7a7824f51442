"""RoboSpatial-Home (``chanhee-luke/RoboSpatial-Home``; Song et al., CVPR 2025): spatial questions on indoor photos.
ViGoRL reports its yes/no questions, ``configuration`` (is X left of / above / in front of Y?) and ``compatibility``
(can X fit / be placed there?): 228 together.

Layout: what the official ``download_benchmark.py`` (chanhee-luke/RoboSpatial-Eval) writes: ``annotations.json``, a
JSON list of ``category``, ``question``, ``answer``, ``img`` (a path under ``images/``), ``depth_image`` and ``mask``;
the evaluation reads every ``*.json`` of the folder, and so does this loader. The third category, ``context``, asks for
points in free space, scored by point-in-polygon: its rows are skipped and counted under ``"context (pointing)"``.

Scoring, as ``evaluate_answer`` of the official ``evaluation.py``: the answer, stripped and lower-cased, must start
with the ground truth, ``yes`` or ``no`` ("No, it is not." reads as no, and so does "not sure"). A configuration or
compatibility question whose answer is not yes or no is a bad record: there are no other choices in these categories.

Aggregation: ``overall``, micro accuracy over the questions loaded (the evaluation's ``overall_accuracy``, and the one
number ViGoRL reports over 228); per category; and ``vqa_avg``, the unweighted mean of the two categories (the
leaderboard's "VQA avg" in the RoboSpatial-Eval README).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from itertools import chain
from operator import attrgetter
from pathlib import Path

from trace_forge.errors import ConfigError, DataError
from trace_forge.tasks import metrics
from trace_forge.tasks.base import Task, register
from trace_forge.tasks.io import Record, SkipPolicy, json_list_records, resolve_root
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = ["RoboSpatial", "robospatial_choice"]

logger = logging.getLogger(__name__)

VQA = ("configuration", "compatibility")
POINTING = "context"
OPTIONS = ["yes", "no"]


def robospatial_choice(answer: str) -> int | None:
    """The option (0 = yes, 1 = no) an answer starts with, ignoring case and surrounding space, as the official
    ``evaluate_answer`` reads it; None when it starts with neither.

    Example:
        >>> [robospatial_choice(a) for a in ("Yes, the mug is left of the plate.", " NO", "maybe")]
        [0, 1, None]
    """
    text = answer.strip().lower()
    return next((i for i, option in enumerate(OPTIONS) if text.startswith(option)), None)


@register
class RoboSpatial(Task):
    """RoboSpatial-Home configuration and compatibility: yes/no; micro accuracy, per category and VQA average."""

    name = "robospatial"
    answer_kind = AnswerKind.OPTION
    hub_id = "chanhee-luke/RoboSpatial-Home"
    default_split = "vqa"
    splits = ("vqa", *VQA)  # vqa: both categories, the 228 questions ViGoRL evaluates
    license_note = "RoboSpatial-Home (chanhee-luke/RoboSpatial-Home, Apache-2.0); see the dataset card"

    def read(self, data_dir: str | Path | None, split: str | None, policy: SkipPolicy) -> Iterator[Sample]:
        """Read every ``*.json`` list in ``data_dir``, keeping the categories of ``split``."""
        split = self.resolve_split(split)
        if data_dir is None:
            raise ConfigError(
                f"{self.hub_id} must be exported first: run download_benchmark.py of chanhee-luke/RoboSpatial-Eval "
                "and pass its output folder as --data-dir"
            )
        root = resolve_root(data_dir, self.hub_id)
        files = sorted(root.glob("*.json"))
        if not files:
            raise DataError("no *.json annotation files (expected annotations.json and images/)", path=root)
        categories = VQA if split == "vqa" else (split,)
        records = chain.from_iterable(json_list_records(path, policy) for path in files)
        samples = policy.convert(records, lambda rec: self._sample(rec, root, categories))
        return (s for s in samples if s is not None)

    def _sample(self, rec: Record, root: Path, categories: Sequence[str]) -> Sample | None:
        category = rec.text("category").strip().lower()
        if category not in (*VQA, POINTING):
            raise rec.error(f"category {category!r} is none of {(*VQA, POINTING)}", "bad field 'category'")
        if category == POINTING:
            self.skipped["context (pointing)"] += 1
            logger.debug("skipping %s: a pointing question", rec.source)
            return None
        if category not in categories:
            return None
        answer = rec.text("answer").strip().lower()
        if answer not in OPTIONS:
            raise rec.error(f"answer {rec.data['answer']!r} is not yes or no", "bad answer")
        return Sample(
            id=f"{rec.path.stem}_{rec.index}",
            task=self.name,
            images=[rec.image(rec.text("img"), root)],
            question=rec.text("question").strip(),
            answer_kind=self.answer_kind,
            options=list(OPTIONS),
            answer=answer,
            category=category,
            source=rec.source,
        )

    def choose(self, sample: Sample, answer: str) -> int | None:
        """The official reading, :func:`robospatial_choice`: no judge is ever involved."""
        return robospatial_choice(answer)

    def aggregate(self, results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
        """``overall`` (micro), one accuracy per category, and ``vqa_avg``, the categories' unweighted mean."""
        categories = metrics.group_means(results, attrgetter("category"))
        return {"overall": metrics.mean(score for _, score in results), "vqa_avg": metrics.macro(categories),
                **categories}
