"""HR-Bench 4K and 8K (``DreamMr/HR-Bench``; Wang et al., AAAI 2025): multiple choice on 4K and 8K images.

Files (the Hub dataset): ``hr_bench_4k.parquet`` / ``hr_bench_8k.parquet``, or the ``.tsv`` twins, in VLMEvalKit's
layout (:mod:`~trace_forge.tasks.vlmeval`): ``index``, ``question``, options ``A``-``D``, ``answer`` (a letter),
``category`` (``single``: fine-grained single-instance perception, FSP; ``cross``: fine-grained cross-instance
perception, FCP), ``cycle_category`` and ``image`` (base64). Each of the 200 questions appears once per cycle, so
every cycle is a full copy of the benchmark (800 rows); how the copies differ is not documented (inferred: the
option order).

Answers. The authors' own script (DreamMr/HR-Bench ``hrbench/vlmeval/dataset/utils/hrbench.py``) asks an LLM whether
the answer is right; VLMEvalKit's ``HRBenchDataset`` (``vlmeval/dataset/image_mcq.py``) first tries exact matching,
``can_infer`` in ``vlmeval/utils/matching_util.py``. We never call a judge: an answer selects the option
:func:`~trace_forge.tasks.scoring.choose_option` reads (the option's text, as our prompts ask, or a clean letter), else
the one ``can_infer`` reads (:func:`vlmevalkit_choice`); otherwise none.

Aggregation (``report_acc_hrbench`` in VLMEvalKit's ``vlmeval/dataset/utils/hrbench.py``): accuracy on FSP and on FCP
within each cycle, each averaged over the cycles; ``overall`` is their mean, the paper's "Avg" (on the official data,
100 + 100 questions per cycle, the same as the cycle-averaged accuracy over all questions).
"""

from __future__ import annotations

import string
from collections.abc import Iterator, Sequence
from operator import attrgetter
from pathlib import Path
from typing import ClassVar

from trace_forge.errors import DataError
from trace_forge.tasks import metrics, scoring, vlmeval
from trace_forge.tasks.base import Task, register
from trace_forge.tasks.io import Record, SkipPolicy, resolve_root
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = ["HRBench4K", "HRBench8K", "vlmevalkit_choice"]

_REQUIRED = ("index", "question", "A", "B", "answer", "category", "cycle_category", "image")
_CATEGORIES = {"single": "FSP", "cross": "FCP"}
_STRIPPED = ".()[],:;!*#{}"  # can_infer_option turns these into spaces before splitting into words


def vlmevalkit_choice(answer: str, options: Sequence[str]) -> int | None:
    """VLMEvalKit's ``can_infer``: the option an answer names by letter, else by text, else None.

    The letter: punctuation ``.()[],:;!*#{}`` becomes spaces and exactly one option letter must stand as a word,
    unless ``A`` does in an answer of more than three words (it may be the article). Without a letter, a ``Z`` word
    means "none of these" and reads as no option. The text: exactly one option's text must occur in the answer,
    ignoring case.

    Example:
        >>> vlmevalkit_choice("I think (B).", ["red", "blue"])
        1
        >>> vlmevalkit_choice("It looks blue to me", ["red", "blue"])
        1
        >>> vlmevalkit_choice("A bird is on the blue sign", ["red", "blue"])  # "A" is an article here
        1
    """
    letters = string.ascii_uppercase[: len(options)]
    words = answer.translate(str.maketrans(_STRIPPED, " " * len(_STRIPPED))).split()
    named = [letter for letter in letters if letter in words]
    if len(named) == 1 and not ("A" in words and len(words) > 3):
        return letters.index(named[0])
    if not named and "Z" in words:
        return None
    lowered = answer.lower()
    hits = [i for i, option in enumerate(options) if option.lower() in lowered]
    return hits[0] if len(hits) == 1 else None


class _HRBench(Task):
    """HR-Bench at one resolution; FSP, FCP and their mean, each averaged over the cycles."""

    answer_kind = AnswerKind.OPTION
    hub_id = "DreamMr/HR-Bench"
    license_note = "HR-Bench (DreamMr/HR-Bench, licence 'other' on the Hub); see the dataset card for the image sources"
    file_stem: ClassVar[str]

    def read(self, data_dir: str | Path | None, split: str | None, policy: SkipPolicy) -> Iterator[Sample]:
        """Read ``<file_stem>.parquet`` (else ``.tsv``) in ``data_dir``, or the file ``data_dir`` names.

        The whole file is read before the first sample: a row's image may be stored in any other row.
        """
        self.resolve_split(split)
        root = resolve_root(data_dir, self.hub_id, allow_patterns=[f"{self.file_stem}.parquet"])
        rows = vlmeval.table_rows(self._file(root), _REQUIRED)
        images = vlmeval.image_cells(rows)
        return policy.convert(rows, lambda rec: self._sample(rec, images))

    def _file(self, root: Path) -> Path:
        if root.is_file():
            return root
        candidates = [root / f"{self.file_stem}{suffix}" for suffix in (".parquet", ".tsv")]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise DataError(f"no {' or '.join(p.name for p in candidates)}", path=root)
        return found

    def _sample(self, rec: Record, images: dict[str, str]) -> Sample:
        raw_category = rec.text("category")
        category = _CATEGORIES.get(raw_category.strip().lower())
        if category is None:
            raise rec.error(f"category {raw_category!r} is neither of {sorted(_CATEGORIES)}", "bad field 'category'")
        cycle = str(rec.require("cycle_category"))
        return vlmeval.option_sample(rec, images, self.name, category=category, meta={"cycle": cycle})

    def choose(self, sample: Sample, answer: str) -> int | None:
        """:func:`~trace_forge.tasks.scoring.choose_option`, else VLMEvalKit's exact matching.

        Example:
            >>> s = Sample("1", "hrbench-4k", [], "Colour?", AnswerKind.OPTION, ["red", "blue"], "blue")
            >>> HRBench4K().choose(s, "The sign is blue.")
            1
        """
        index = scoring.choose_option(answer, sample.options)
        return index if index is not None else vlmevalkit_choice(answer, sample.options)

    def aggregate(self, results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
        """``FSP`` and ``FCP``: accuracy within each cycle, averaged over the cycles; ``overall``: their mean."""
        cycles: dict[str, list[tuple[Sample, float]]] = {}
        for sample, score in results:
            cycles.setdefault(sample.meta["cycle"], []).append((sample, score))
        per_cycle = [metrics.group_means(rows, attrgetter("category")) for rows in cycles.values()]
        parts = {
            category: metrics.mean(accuracy[category] for accuracy in per_cycle if category in accuracy)
            for category in sorted({name for accuracy in per_cycle for name in accuracy})
        }
        return {"overall": metrics.macro(parts), **parts}


@register
class HRBench4K(_HRBench):
    """HR-Bench 4K: the 8K images cropped to 4K around the annotated objects."""

    name = "hrbench-4k"
    file_stem = "hr_bench_4k"


@register
class HRBench8K(_HRBench):
    """HR-Bench 8K: images of about 8K resolution."""

    name = "hrbench-8k"
    file_stem = "hr_bench_8k"
