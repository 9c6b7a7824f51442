"""OS-Atlas GUI grounding data, for training only: an instruction, a screenshot and the box of the element meant.

Two layouts, told apart by ``data_dir``:

- A folder: ViGoRL's RL files, ``web_grounding/vigorl_osatlas_{train,val}_RL.jsonl`` of ``gsarch/vigorl_datasets``
  (``web_grounding.tar``), as EasyR1's ``RLHFDataset`` reads them: ``problem`` (the prompt text, ``<image>`` marking the
  screenshot), ``answer`` (the element box ``"(x1, y1, x2, y2)"`` in integer pixels of the screenshot, read with
  ``ast.literal_eval`` by ViGoRL's ``point_in_bbox`` judge) and ``images`` (paths relative to the folder holding
  ``web_grounding/``). Pass that folder or ``web_grounding/`` itself; splits ``train`` and ``val``. The question is the
  problem without its ``<image>`` markers (its wording is ViGoRL's and was not seen here: inferred to carry the
  instruction). An image path missing under that folder is tried next to the JSONL file (inferred).
- A ``.json`` file: OS-Atlas's own release (``OS-Copilot/OS-Atlas-data``, its dataset card): a list of
  ``img_filename``, ``instruction``, ``bbox`` (``[left, top, right, bottom]`` as fractions of the width and height)
  and sometimes ``data_type``; a record may instead group one screenshot's elements as ``{"img_filename",
  "elements": [{"instruction", "bbox", ...}, ...]}`` (inferred from datasets derived from it). Screenshots are looked
  up next to the file, or under ``-o images=DIR`` (relative to the file's folder); ``split`` does not apply.

Scoring: ViGoRL's grounding reward, a point inside the box, border included (the default :meth:`Task.score`).
Aggregation: micro accuracy, and per ``data_type`` where the data has one.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Sequence
from operator import attrgetter
from pathlib import Path

from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import GUI_ZOOM
from trace_forge.tasks import metrics
from trace_forge.tasks.base import Task, register
from trace_forge.tasks.io import (
    Record,
    SkipPolicy,
    image_size,
    json_list_records,
    jsonl_records,
    resolve_root,
)
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = ["OSAtlas"]

_IMAGE_TOKEN = re.compile(r"\s*<image>\s*")
_GROUNDING = "web_grounding"


@register
class OSAtlas(Task):
    """OS-Atlas grounding (training data): point answers judged inside the element box.

    Args:
        images: for OS-Atlas's own JSON files, the screenshot folder relative to the file's folder.
    """

    name = "osatlas"
    answer_kind = AnswerKind.POINT
    hub_id = "gsarch/vigorl_datasets"
    default_split = "train"
    splits = ("train", "val")
    zoom = GUI_ZOOM
    license_note = "OS-Atlas grounding data (OS-Copilot/OS-Atlas-data, Apache-2.0), as packaged by ViGoRL"

    def __init__(self, *, images: str | None = None) -> None:
        super().__init__(images=images)
        self.images = images

    def read(self, data_dir: str | Path | None, split: str | None, policy: SkipPolicy) -> Iterator[Sample]:
        """Read ViGoRL's ``vigorl_osatlas_<split>_RL.jsonl`` (a folder) or an OS-Atlas JSON file (a ``.json``)."""
        split = self.resolve_split(split)
        if data_dir is None:
            raise ConfigError(
                f"untar web_grounding.tar of {self.hub_id} (or download OS-Copilot/OS-Atlas-data) and pass --data-dir"
            )
        path = resolve_root(data_dir, self.hub_id)
        if path.is_file():
            records = self._elements(json_list_records(path, policy))
            images = path.parent / (self.images or "")
            samples = policy.convert(records, lambda rec: self._atlas_sample(rec, images))
        else:
            file, data_root = self._vigorl_file(path, split)
            samples = policy.convert(jsonl_records(file, policy), lambda rec: self._vigorl_sample(rec, data_root))
        return samples

    @staticmethod
    def _vigorl_file(root: Path, split: str) -> tuple[Path, Path]:
        """The split's JSONL file and the folder its image paths start from (the one holding ``web_grounding/``)."""
        name = f"vigorl_osatlas_{split}_RL.jsonl"
        for file, data_root in ((root / _GROUNDING / name, root), (root / name, root.parent)):
            if file.is_file():
                return file, data_root
        raise DataError(f"no {_GROUNDING}/{name} (pass the folder holding {_GROUNDING}/, or an OS-Atlas .json file)",
                        path=root)

    def _vigorl_sample(self, rec: Record, data_root: Path) -> Sample:
        paths = rec.strings("images")
        if len(paths) != 1:
            raise rec.error(f"field 'images' must hold one screenshot, got {len(paths)}", "bad field 'images'")
        base = data_root if (data_root / paths[0]).exists() else rec.path.parent
        question = _IMAGE_TOKEN.sub(" ", rec.text("problem")).strip()
        if not question:
            raise rec.error("field 'problem' holds no instruction besides <image>", "bad field 'problem'")
        answer = rec.text("answer")
        try:
            box = ast.literal_eval(answer.strip())
        except (ValueError, SyntaxError):
            raise rec.error(f"answer {answer!r} is not a box (x1, y1, x2, y2)", "bad field 'answer'") from None
        return Sample(
            id=f"{rec.path.stem}_{rec.index}",
            task=self.name,
            images=[rec.image(paths[0], base)],
            question=question,
            answer_kind=self.answer_kind,
            target_boxes=[rec.box(box, "xyxy", field="answer")],
            source=rec.source,
        )

    @staticmethod
    def _elements(records: Iterator[Record]) -> Iterator[Record]:
        """One record per element: a grouped record's ``elements`` each become one, with the screenshot's name."""
        for rec in records:
            elements = rec.data.get("elements")
            if not isinstance(elements, list):
                yield rec
                continue
            for k, element in enumerate(elements):
                data = {"img_filename": rec.data.get("img_filename"), "element": k}
                yield Record(rec.path, rec.index, {**data, **element} if isinstance(element, dict) else data, rec.unit)

    def _atlas_sample(self, rec: Record, images: Path) -> Sample:
        image = rec.image(rec.text("img_filename"), images)
        value = rec.require("bbox")
        if not (isinstance(value, list | tuple) and all(isinstance(v, int | float) and 0 <= v <= 1 for v in value)):
            raise rec.error(f"field 'bbox' must be [left, top, right, bottom] fractions in [0, 1], got {value!r}",
                            "bad field 'bbox'")
        width, height = image_size(image)
        element = rec.data.get("element")
        return Sample(
            id=f"{rec.path.stem}_{rec.index}" + (f"_{element}" if element is not None else ""),
            task=self.name,
            images=[image],
            question=rec.text("instruction").strip(),
            answer_kind=self.answer_kind,
            target_boxes=[rec.box(value, "xyxy", scale=(width, height))],
            category=str(rec.data.get("data_type") or ""),
            source=rec.source,
        )

    def aggregate(self, results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
        """``overall``: micro accuracy; one entry per ``data_type`` when the data has them."""
        overall = {"overall": metrics.mean(score for _, score in results)}
        if not any(sample.category for sample, _ in results):
            return overall
        return {**overall, **metrics.group_means(results, attrgetter("category"))}
