"""Coordinate frames of an image point, and exact conversions between them.

A point always says which frame it is in:

- ``pixel``: pixels of the original image, as stored on disk.
- ``model``: pixels of the image as a Qwen2.5-VL-style processor resizes it (``smart_resize`` with factor 28
  and the model's ``min_pixels`` / ``max_pixels``). Qwen2.5-VL reads and writes points in this frame.
- ``norm1000``: the 0-1000 grid of Qwen2-VL / Qwen3-VL, independent of the image size.

Two conversions exist, each exactly invertible, with rounding only when a point is written as text:

- :meth:`ImageGeometry.convert` treats a frame as a grid of cells whose *centres* are the integer coordinates and
  maps the centre of a cell to the centre of the matching region (PIL's resampling convention): pixel ``i`` of an
  image of width ``W`` sits at ``u = (i + 0.5) / W``, which is ``u * w - 0.5`` in a frame of width ``w``. Stored
  steps and drawings use it.
- :meth:`ImageGeometry.scale` maps positions as the benchmarks' official scripts do, ``x * W / w`` (``x / 1000 * W``
  from the 0-1000 grid). Scoring uses it, so a point near a box edge is judged as the official scripts judge it.

:class:`View` says how a model sees images: the frame it writes points in, and the resize that defines ``model``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = [
    "Frame",
    "Resize",
    "ImageGeometry",
    "View",
    "MODEL_TYPE_FRAMES",
    "smart_resize",
    "QWEN_FACTOR",
    "QWEN_MIN_PIXELS",
    "QWEN_MAX_PIXELS",
]

QWEN_FACTOR = 28  # patch 14 x spatial merge 2: one visual token per 28 x 28 pixels
QWEN_MIN_PIXELS = 56 * 56  # preprocessor_config.json of Qwen2-VL / Qwen2.5-VL checkpoints
QWEN_MAX_PIXELS = 16384 * 28 * 28  # 12,845,056, idem
_MAX_ASPECT = 200
NORM_GRID = 1000


class Frame(StrEnum):
    """The coordinate frame a point is expressed in."""

    PIXEL = "pixel"
    MODEL = "model"
    NORM1000 = "norm1000"


# config.json ``model_type`` -> the frame that model family reads and writes points in. Qwen2.5-VL uses absolute
# pixels of the image as its processor resized it; Qwen3-VL (and its MoE variant) a 0-1000 grid.
MODEL_TYPE_FRAMES: Mapping[str, Frame] = {
    "qwen2_5_vl": Frame.MODEL,
    "qwen3_vl": Frame.NORM1000,
    "qwen3_vl_moe": Frame.NORM1000,
}


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """Return ``(height, width)`` as the Qwen2-VL / Qwen2.5-VL image processor resizes an image.

    Both sides become multiples of ``factor``, the area lands in ``[min_pixels, max_pixels]`` and the aspect
    ratio is kept as closely as the grid allows. Same algorithm as ``transformers``' ``smart_resize``, written
    here so trace-forge does not import transformers.

    Raises:
        ValueError: on a non-positive side or an aspect ratio above 200 (the processor rejects those too).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > _MAX_ASPECT:
        raise ValueError(f"aspect ratio of {width}x{height} exceeds {_MAX_ASPECT}")
    h_bar, w_bar = _on_grid(height, factor), _on_grid(width, factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _on_grid(side: int, factor: int) -> int:
    """``side`` rounded to the nearest multiple of ``factor`` (Python's rounding, as the processor's)."""
    return max(factor, round(side / factor) * factor)


@dataclass(frozen=True)
class Resize:
    """How a model's processor resizes images: the bounds that decide the ``model`` frame."""

    min_pixels: int = QWEN_MIN_PIXELS
    max_pixels: int = QWEN_MAX_PIXELS
    factor: int = QWEN_FACTOR

    def __post_init__(self) -> None:
        if self.factor <= 0 or self.min_pixels <= 0 or self.max_pixels < self.min_pixels:
            raise ValueError(
                f"invalid resize bounds: min_pixels={self.min_pixels}, max_pixels={self.max_pixels}, "
                f"factor={self.factor} (need 0 < min_pixels <= max_pixels, factor > 0)"
            )

    def model_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of an image of the given size once the processor has resized it."""
        h, w = smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)
        return w, h

    def rounds_only(self, width: int, height: int) -> bool:
        """Whether the processor only rounds this size's sides to the grid, without scaling it into the bounds.

        Then every processor with this grid whose bounds hold these makes the same :meth:`model_size` of the
        original image, so a client may send the original and leave the rounding to the server.

        Example:
            >>> Resize().rounds_only(1960, 1470), Resize(max_pixels=1_003_520).rounds_only(1960, 1470)
            (True, False)
        """
        return self.model_size(width, height) == (_on_grid(width, self.factor), _on_grid(height, self.factor))

    def geometry(self, width: int, height: int) -> ImageGeometry:
        """The :class:`ImageGeometry` of an image of this size under these bounds."""
        mw, mh = self.model_size(width, height)
        return ImageGeometry(width=width, height=height, model_width=mw, model_height=mh)

    @classmethod
    def of_processor(cls, processor: Any) -> Resize:
        """The resize a Qwen-VL-style image processor applies, from the processor, its image processor, or the
        mapping of its ``preprocessor_config.json``.

        transformers 5 keeps the pixel bounds in ``size`` (``shortest_edge`` = min pixels, ``longest_edge`` = max
        pixels), older configs in ``min_pixels`` / ``max_pixels``; ``size`` wins, since the resize code reads it.
        The grid factor is ``patch_size * merge_size`` (one visual token per ``factor x factor`` pixels).

        Raises:
            ValueError: the bounds or the patch geometry are missing (not a Qwen-VL-style processor).

        Example:
            >>> Resize.of_processor({"size": {"shortest_edge": 3136, "longest_edge": 200704}, "patch_size": 14,
            ...                      "merge_size": 2})
            Resize(min_pixels=3136, max_pixels=200704, factor=28)
        """
        source = getattr(processor, "image_processor", processor)

        def read(container: Any, key: str) -> Any:
            if container is None:
                return None
            return container.get(key) if isinstance(container, Mapping) else getattr(container, key, None)

        size = read(source, "size")
        min_pixels = read(size, "shortest_edge") or read(source, "min_pixels")
        max_pixels = read(size, "longest_edge") or read(source, "max_pixels")
        patch, merge = read(source, "patch_size"), read(source, "merge_size")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (min_pixels, max_pixels, patch, merge)):
            raise ValueError(
                f"cannot read the image resize of {type(source).__name__} (min_pixels={min_pixels}, "
                f"max_pixels={max_pixels}, patch_size={patch}, merge_size={merge}); a Qwen-VL-style processor is "
                "needed"
            )
        return cls(min_pixels=min_pixels, max_pixels=max_pixels, factor=patch * merge)


@dataclass(frozen=True)
class ImageGeometry:
    """Sizes of one image in every frame; converts coordinates between frames.

    Example:
        >>> g = Resize(max_pixels=1_003_520).geometry(3840, 2160)
        >>> (g.model_width, g.model_height)
        (1316, 728)
        >>> x, y = g.convert(1920.0, 1080.0, "pixel", "model")
        >>> [round(v, 2) for v in g.convert(x, y, "model", "pixel")]
        [1920.0, 1080.0]
    """

    width: int
    height: int
    model_width: int
    model_height: int

    def size(self, frame: Frame | str) -> tuple[int, int]:
        """``(width, height)`` of the image in ``frame`` (1000 x 1000 for ``norm1000``)."""
        frame = Frame(frame)
        if frame is Frame.PIXEL:
            return self.width, self.height
        if frame is Frame.MODEL:
            return self.model_width, self.model_height
        return NORM_GRID, NORM_GRID

    def convert(
        self, x: float, y: float, src: Frame | str, dst: Frame | str
    ) -> tuple[float, float]:
        """Map ``(x, y)`` from frame ``src`` to frame ``dst`` (cell centre to cell centre, exact inverse)."""
        sw, sh = self.size(src)
        dw, dh = self.size(dst)
        return (x + 0.5) * dw / sw - 0.5, (y + 0.5) * dh / sh - 0.5

    def scale(self, x: float, y: float, src: Frame | str, dst: Frame | str) -> tuple[float, float]:
        """Map ``(x, y)`` from frame ``src`` to frame ``dst`` as positions, ``x * dst_width / src_width``: the
        mapping of the official ScreenSpot and ViGoRL scripts, used for scoring.

        Example:
            >>> ImageGeometry(3840, 2160, 1316, 728).scale(1000, 500, "norm1000", "pixel")
            (3840.0, 1080.0)
        """
        sw, sh = self.size(src)
        dw, dh = self.size(dst)
        return x * dw / sw, y * dh / sh

    def contains(self, x: float, y: float, frame: Frame | str) -> bool:
        """Whether ``(x, y)`` lies on the image in ``frame``.

        Pixel and model frames accept ``0 <= x <= width - 1`` (a point names a pixel); ``norm1000`` accepts the
        closed grid ``[0, 1000]`` that Qwen's normalised coordinates use.
        """
        w, h = self.size(frame)
        if Frame(frame) is Frame.NORM1000:
            return 0 <= x <= w and 0 <= y <= h
        return 0 <= x <= w - 1 and 0 <= y <= h - 1


@dataclass(frozen=True)
class View:
    """How a model sees images: the frame it writes points in, and the resize that defines its ``model`` frame.

    Attributes:
        frame: ``model`` (pixels of the image as the model sees it), ``norm1000``, or ``pixel`` (original pixels).
        resize: the bounds the model's processor resizes images with; None when images are seen as they are, so
            ``model`` pixels are original pixels.

    Example:
        >>> view = View(Frame.MODEL, Resize(max_pixels=200_704))
        >>> g = view.geometry(1000, 500)
        >>> (g.model_width, g.model_height)
        (616, 308)
    """

    frame: Frame
    resize: Resize | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "frame", Frame(self.frame))

    def geometry(self, width: int, height: int) -> ImageGeometry:
        """The frames of a ``width x height`` image as this model sees it."""
        if self.resize is None:
            return ImageGeometry(width, height, width, height)
        return self.resize.geometry(width, height)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, read back by :meth:`from_dict`."""
        resize = None if self.resize is None else {
            "min_pixels": self.resize.min_pixels, "max_pixels": self.resize.max_pixels, "factor": self.resize.factor}
        return {"frame": self.frame.value, "resize": resize}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> View:
        resize = d.get("resize")
        return cls(Frame(d["frame"]), Resize(**resize) if resize else None)

    @classmethod
    def of_checkpoint(cls, path: str | Path) -> View:
        """The view of a local checkpoint, from its ``config.json`` (``model_type``) and its image processor's
        settings (``preprocessor_config.json``, or the ``image_processor`` of the ``processor_config.json`` that
        transformers 5 writes), without loading transformers.

        Raises:
            ValueError: a file is missing or unreadable, or the model type is not a supported family.
        """
        root = Path(path)
        try:
            model_type = json.loads((root / "config.json").read_text(encoding="utf-8")).get("model_type")
            if (root / "preprocessor_config.json").is_file():
                processor = json.loads((root / "preprocessor_config.json").read_text(encoding="utf-8"))
            else:
                processor = json.loads((root / "processor_config.json").read_text(encoding="utf-8"))["image_processor"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{root}: not a checkpoint with config.json and an image processor config "
                             f"({type(e).__name__}: {e})") from e
        if model_type not in MODEL_TYPE_FRAMES:
            raise ValueError(
                f"{root}: model_type {model_type!r} is not a supported family ({', '.join(MODEL_TYPE_FRAMES)})"
            )
        return cls(MODEL_TYPE_FRAMES[model_type], Resize.of_processor(processor))
