"""ScreenSpot GUI grounding: v1 (SeeClick), v2 (OS-Copilot, corrected labels) and Pro (high-resolution apps).

The answer is a click point; it is correct when it lies in the target box, border included.

- v1 / v2: ``screenspot_{mobile,desktop,web}[_v2].json`` lists with ``img_filename``, ``instruction``, ``bbox``
  (``[x, y, w, h]`` pixels), ``data_type`` (text | icon) and ``data_source``; images in ``screenspot_imgs/`` (v1) or
  ``screenspotv2_image/`` (v2, extracted from ``screenspotv2_image.zip`` on first use). The reported average is
  the unweighted mean of the six platform x type cells.
- Pro: ``annotations/<app>_<os>.json`` lists with ``bbox`` as ``[x1, y1, x2, y2]`` pixels (not xywh) of an image
  of size ``img_size``; images under ``images/``. Reported: micro overall, text / icon and per group.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import chain
from operator import attrgetter
from pathlib import Path
from typing import ClassVar

from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import GUI_ZOOM
from trace_forge.tasks import metrics
from trace_forge.tasks.base import Task, register
from trace_forge.tasks.io import (
    Record,
    SkipPolicy,
    extract_zip_once,
    image_size,
    json_list_records,
    resolve_root,
)
from trace_forge.tasks.sample import AnswerKind, Sample

__all__ = ["ScreenSpot", "ScreenSpotV2", "ScreenSpotPro"]

PLATFORMS = ("mobile", "desktop", "web")
UI_TYPES = ("text", "icon")


def _ui_type(rec: Record, field: str) -> str:
    value = rec.text(field)
    if value not in UI_TYPES:
        raise rec.error(f"field {field!r} must be one of {UI_TYPES}, got {value!r}", f"bad field {field!r}")
    return value


class _GroundingTask(Task):
    """What every ScreenSpot variant shares: point answers, the GUI zoom crop, point-in-box scoring."""

    answer_kind = AnswerKind.POINT
    zoom = GUI_ZOOM
    splits = ("test",)



@register
class ScreenSpot(_GroundingTask):
    """ScreenSpot v1 (SeeClick release layout)."""

    name = "screenspot"
    hub_id = "rootsautomation/ScreenSpot"
    license_note = "ScreenSpot (SeeClick); see the benchmark's licence"
    file_suffix: ClassVar[str] = ""
    image_dir: ClassVar[str] = "screenspot_imgs"

    def read(self, data_dir: str | Path | None, split: str | None, policy: SkipPolicy) -> Iterator[Sample]:
        """Read the three platform files (``split`` is ignored: ScreenSpot is one test set)."""
        root = self._root(data_dir)
        images = self._image_folder(root)
        files = [root / f"screenspot_{platform}{self.file_suffix}.json" for platform in PLATFORMS]
        for path in files:
            if not path.is_file():
                raise DataError(f"annotation file missing (expected {', '.join(f.name for f in files)})", path=path)
        records = chain.from_iterable(json_list_records(path, policy) for path in files)
        return policy.convert(records, lambda rec: self._sample(rec, images))

    def _root(self, data_dir: str | Path | None) -> Path:
        if data_dir is None:
            # The Hub copy is a parquet re-packaging whose bbox convention differs from the release (lmms-eval
            # reads it as normalised xyxy); reading it as the official layout would score against wrong boxes.
            raise ConfigError(
                f"{self.hub_id} is not in the official ScreenSpot layout; download the SeeClick release "
                "(screenspot_{mobile,desktop,web}.json + screenspot_imgs/) and pass --data-dir"
            )
        return resolve_root(data_dir, self.hub_id)

    def _image_folder(self, root: Path) -> Path:
        return root / self.image_dir

    def _sample(self, rec: Record, images: Path) -> Sample:
        platform = rec.path.stem.removeprefix("screenspot_").removesuffix(self.file_suffix)
        return Sample(
            id=f"{platform}_{rec.index}",
            task=self.name,
            images=[rec.image(rec.text("img_filename"), images)],
            question=rec.text("instruction"),
            answer_kind=self.answer_kind,
            target_boxes=[rec.box(rec.require("bbox"), "xywh")],
            category=platform,
            source=rec.source,
            meta={
                "data_type": _ui_type(rec, "data_type"),
                "data_source": rec.data.get("data_source", ""),
                "img_filename": rec.data["img_filename"],
            },
        )

    def aggregate(self, results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
        """Each ``<platform>/<text|icon>`` cell, and ``overall`` = their unweighted mean (SeeClick's Average)."""
        cells = metrics.group_means(results, lambda s: f"{s.category}/{s.meta['data_type']}")
        return {"overall": metrics.macro(cells), **cells}


@register
class ScreenSpotV2(ScreenSpot):
    """ScreenSpot-v2: v1's schema with corrected annotations, ``_v2`` file names and a zipped image folder."""

    name = "screenspot-v2"
    hub_id = "OS-Copilot/ScreenSpot-v2"
    license_note = "ScreenSpot-v2 (OS-Copilot), derived from ScreenSpot; see the benchmark's licence"
    file_suffix = "_v2"
    image_dir = "screenspotv2_image"

    def _root(self, data_dir: str | Path | None) -> Path:
        return resolve_root(data_dir, self.hub_id)

    def _image_folder(self, root: Path) -> Path:
        folder = root / self.image_dir
        archive = folder.with_suffix(".zip")
        return extract_zip_once(archive, folder) if not folder.is_dir() and archive.is_file() else folder


@register
class ScreenSpotPro(_GroundingTask):
    """ScreenSpot-Pro: professional high-resolution screens, 26 application files."""

    name = "screenspot-pro"
    hub_id = "likaixin/ScreenSpot-Pro"
    license_note = "ScreenSpot-Pro; see the benchmark's licence"

    def read(self, data_dir: str | Path | None, split: str | None, policy: SkipPolicy) -> Iterator[Sample]:
        """Read ``annotations/*.json`` in name order (``split`` is ignored: one test set)."""
        root = resolve_root(data_dir, self.hub_id)
        files = sorted((root / "annotations").glob("*.json"))
        if not files:
            raise DataError("no annotations/*.json files", path=root)
        records = chain.from_iterable(json_list_records(path, policy) for path in files)
        return policy.convert(records, lambda rec: self._sample(rec, root / "images"))

    def _sample(self, rec: Record, images: Path) -> Sample:
        image = rec.image(rec.text("img_filename"), images)
        size = rec.require("img_size")
        if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) and v > 0 for v in size)):
            raise rec.error(f"field 'img_size' must be [width, height], got {size!r}", "bad field 'img_size'")
        # Boxes are annotated on an img_size screen and normalised by it officially; a re-saved or resized copy of
        # the screenshot still has the target at the same relative place. A copy of another shape is not that
        # screen: its boxes would land elsewhere (or off the image), and no answer could be right.
        width, height = image_size(image)
        if abs(width * size[1] - height * size[0]) > max(size):  # more than a pixel of rounding apart
            raise rec.error(f"img_size {size} disagrees with the image ({width} x {height}, another shape); fix "
                            "img_size or the image", "img_size disagrees with the image")
        box = rec.box(rec.require("bbox"), "xyxy", scale=(width / size[0], height / size[1]))
        return Sample(
            id=str(rec.require("id")),
            task=self.name,
            images=[image],
            question=rec.text("instruction"),
            answer_kind=self.answer_kind,
            target_boxes=[box],
            category=rec.text("group"),
            source=rec.source,
            meta={
                "ui_type": _ui_type(rec, "ui_type"),
                "group": rec.data["group"],
                "application": rec.data.get("application", ""),
                "platform": rec.data.get("platform", ""),
                "img_size": list(size),
                "instruction_cn": rec.data.get("instruction_cn", ""),
            },
        )

    def aggregate(self, results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
        """``overall`` micro accuracy (``action_acc``), ``text`` / ``icon`` accuracy, and one entry per group."""
        return {
            "overall": metrics.mean([score for _, score in results]),
            **metrics.group_means(results, lambda s: s.meta["ui_type"]),
            **metrics.group_means(results, attrgetter("category")),
        }
