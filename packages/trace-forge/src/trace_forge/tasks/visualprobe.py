"""VisualProbe (Mini-o3/Mini-o3; Hub ``Mini-o3/VisualProbe_Easy``, ``_Medium``, ``_Hard``): visual-search questions
with short free-text answers on high-resolution images, in three difficulty levels that are reported apart.

Layout: the three Hub datasets side by side in one folder, ``VisualProbe_Easy/``, ``VisualProbe_Medium/`` and
``VisualProbe_Hard/``, each with ``val.json`` (a JSON list of ``images``: image paths, ``problem``: the question with an
``<image>`` placeholder, ``solution``: the answer, ``doc_id``, ``data_source``) and its images under ``data/``.
Mini-o3's README points ``BASE_IMAGE_DIR`` at that folder and its loader (``verl/utils/dataset/multimodal_dataset.py``)
joins image paths to it; a path not found there is tried against the level's folder (inferred: the Hub files' paths
were not seen).

Scoring. Mini-o3 evaluates with a GPT-4o judge (``verl/utils/reward_score/general_qa_tool.py``, with
``use_hybrid_reward_manager``); we never call a judge. The judge-free rule is that of its rule-based reward
(``general_qa_tool_mc.py``): the answer is the solution, or starts ``(X)`` or ``X.`` with X the solution letter. The
comparison here ignores case, spacing and surrounding punctuation
(:func:`~trace_forge.tasks.scoring.score_text`), where the rule compares exactly.

Aggregation: accuracy per level, as Mini-o3 reports it (the mean score of each ``data_source``); ``overall``, over all
questions loaded, is ours (the authors report none).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from itertools import chain
from operator import attrgetter
from pathlib import Path

from trace_forge.errors import DataError
from trace_forge.grounding import Point
from trace_forge.tasks import metrics
from trace_forge.tasks.base import Task, register
from trace_forge.tasks.io import Record, SkipPolicy, json_list_records, resolve_root
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = ["VisualProbe"]

LEVELS = ("easy", "medium", "hard")
ALL = "all"
_IMAGE_TOKEN = re.compile(r"\s*<image>\s*")
_LETTER_ANSWER = re.compile(r"^(?:\(([A-Z])\)|([A-Z])\.)")  # general_qa_tool_mc: "(B) ..." or "B. ..."


def _folder(level: str) -> str:
    return f"VisualProbe_{level.capitalize()}"


@register
class VisualProbe(Task):
    """VisualProbe: free-text answers; accuracy per level and over all (``--split`` picks one level)."""

    name = "visualprobe"
    answer_kind = AnswerKind.TEXT
    hub_id = None  # three Hub datasets (Mini-o3/VisualProbe_Easy, _Medium, _Hard): download them side by side
    default_split = ALL
    splits = (ALL, *LEVELS)
    license_note = "VisualProbe (Mini-o3); see the Hub datasets for the licence and image sources"

    def read(self, data_dir: str | Path | None, split: str | None, policy: SkipPolicy) -> Iterator[Sample]:
        """Read ``<level folder>/val.json`` of each level in the split (``all``: easy, medium, hard)."""
        split = self.resolve_split(split)
        root = resolve_root(data_dir, self.hub_id)
        levels = LEVELS if split == ALL else (split,)
        files = [root / _folder(level) / "val.json" for level in levels]
        for path in files:
            if not path.is_file():
                raise DataError(f"missing {path.relative_to(root)} (expected {', '.join(_folder(lv) for lv in levels)}"
                                "/val.json)", path=root)
        records = chain.from_iterable(json_list_records(path, policy) for path in files)
        return policy.convert(records, lambda rec: self._sample(rec, root))

    def _sample(self, rec: Record, root: Path) -> Sample:
        level = rec.path.parent.name.removeprefix("VisualProbe_").lower()
        paths = rec.strings("images")
        images = [rec.image(p, root if (root / p).exists() else rec.path.parent) for p in paths]
        question = _IMAGE_TOKEN.sub(" ", rec.text("problem")).strip()
        if not question:
            raise rec.error("field 'problem' holds no question besides <image>", "bad field 'problem'")
        solution = rec.require("solution")
        if not isinstance(solution, str | int) or isinstance(solution, bool) or not str(solution).strip():
            raise rec.error(f"field 'solution' must be a non-empty answer, got {solution!r}", "bad field 'solution'")
        doc_id = rec.data.get("doc_id")
        return Sample(
            id=f"{level}/{doc_id if doc_id is not None else rec.index}",
            task=self.name,
            images=images,
            question=question,
            answer_kind=self.answer_kind,
            answer=str(solution).strip(),
            category=level,
            source=rec.source,
            meta={"data_source": rec.data.get("data_source", f"visual_probe_{level}")},
        )

    def score(self, sample: Sample, answer: str | Point | None) -> float:
        """Normalised exact match, or Mini-o3's letter rule: ``(B) ...`` / ``B. ...`` when the solution is ``B``.

        Example:
            >>> s = Sample("hard/1", "visualprobe", [], "Which sign?", AnswerKind.TEXT, answer="B")
            >>> VisualProbe().score(s, "(B) the red one"), VisualProbe().score(s, "b"), VisualProbe().score(s, "C.")
            (1.0, 1.0, 0.0)
        """
        if isinstance(answer, str):
            match = _LETTER_ANSWER.match(answer.strip())
            if match and (match.group(1) or match.group(2)) == sample.answer:
                return 1.0
        return super().score(sample, answer)

    def aggregate(self, results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
        """One accuracy per level, and ``overall`` (micro) over every question scored."""
        return {
            "overall": metrics.mean(score for _, score in results),
            **metrics.group_means(results, attrgetter("category")),
        }
