"""Coordinate frames of an image point, and exact conversions between them.

A point always says which frame it is in:

- ``pixel``: pixels of the original image, as stored on disk.
- ``model``: pixels of the image as a Qwen2.5-VL-style processor resizes it (``smart_resize`` with factor 28
  and the model's ``min_pixels`` / ``max_pixels``). Qwen2.5-VL reads and writes points in this frame.
- ``norm1000``: the 0-1000 grid of Qwen2-VL / Qwen3-VL, independent of the image size.

Every frame is treated as a grid of cells whose *centres* are the integer coordinates, so a conversion maps the
centre of a cell to the centre of the matching region (the same convention PIL's resampling uses). Pixel ``i`` of
an image of width ``W`` sits at the normalised position ``u = (i + 0.5) / W``; in a frame of width ``w`` it is at
``u * w - 0.5``. Conversions are affine and exactly invertible; rounding happens only when a point is rendered as
text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "Frame",
    "Resize",
    "ImageGeometry",
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
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


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

    def geometry(self, width: int, height: int) -> ImageGeometry:
        """The :class:`ImageGeometry` of an image of this size under these bounds."""
        mw, mh = self.model_size(width, height)
        return ImageGeometry(width=width, height=height, model_width=mw, model_height=mh)


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

    def contains(self, x: float, y: float, frame: Frame | str) -> bool:
        """Whether ``(x, y)`` lies on the image in ``frame``.

        Pixel and model frames accept ``0 <= x <= width - 1`` (a point names a pixel); ``norm1000`` accepts the
        closed grid ``[0, 1000]`` that Qwen's normalised coordinates use.
        """
        w, h = self.size(frame)
        if Frame(frame) is Frame.NORM1000:
            return 0 <= x <= w and 0 <= y <= h
        return 0 <= x <= w - 1 and 0 <= y <= h - 1
