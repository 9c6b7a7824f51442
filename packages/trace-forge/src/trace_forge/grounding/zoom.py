"""Zoom geometry: a square crop around a point, resized, with the exact map back to image coordinates.

A zoom takes a ``spec.crop`` x ``spec.crop`` square of the image centred on a point and resizes it to
``spec.out`` x ``spec.out``. At the borders the square is shifted inward so it stays on the image (never padded);
only when the image is smaller than the square along an axis does the square reach past it, with the image
centred and the outside black. Crop coordinates follow the cell-centre convention of :mod:`frames`: crop pixel
``c`` sits at image coordinate ``left + (c + 0.5) * side / out - 0.5``, so the two maps are exact inverses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from trace_forge.grounding.frames import Frame, ImageGeometry
from trace_forge.grounding.steps import Point

__all__ = ["ZoomSpec", "VISUAL_SEARCH_ZOOM", "GUI_ZOOM", "CropBox", "Zoom", "zoom", "zoom_on"]

_DOT_FILL = (255, 0, 0)
_DOT_OUTLINE = (255, 255, 255)
_DOT_MIN_RADIUS = 3


@dataclass(frozen=True)
class ZoomSpec:
    """Crop side ``crop`` (pixels of the cropped image), output side ``out``, and whether to draw a marker dot."""

    crop: int = 364
    out: int = 672
    dot: bool = False

    def __post_init__(self) -> None:
        if self.crop <= 0 or self.out <= 0:
            raise ValueError(f"zoom sizes must be positive, got crop={self.crop}, out={self.out}")


VISUAL_SEARCH_ZOOM = ZoomSpec(crop=364, out=672, dot=False)  # ViGoRL V*: offset 182 -> 672, no dot
GUI_ZOOM = ZoomSpec(crop=100, out=384, dot=True)  # ViGoRL web grounding RL: offset 50 -> 384, red dot


@dataclass(frozen=True)
class CropBox:
    """A square region of an image: first pixel ``(left, top)`` and ``side`` pixels, in image pixel coordinates.

    ``left``/``top`` are negative (and the box reaches past the far edge) when the image is smaller than the box
    on that axis. As a PIL box it is ``(left, top, left + side, top + side)``.
    """

    left: float
    top: float
    side: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready form, read back by :meth:`from_dict`."""
        return {"left": self.left, "top": self.top, "side": self.side}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CropBox:
        """Inverse of :meth:`to_dict`."""
        return cls(float(d["left"]), float(d["top"]), float(d["side"]))


@dataclass(frozen=True)
class Zoom:
    """A zoomed view: the ``out`` x ``out`` RGB ``image`` of the region ``box`` of the source image.

    ``center`` is the point the zoom was asked for after clamping onto the image, in source pixels.
    """

    image: Image.Image
    box: CropBox
    out: int
    center: tuple[float, float]

    def to_image(self, cx: float, cy: float) -> tuple[float, float]:
        """Map crop coordinates ``(cx, cy)`` to source image pixel coordinates (exact inverse of ``to_crop``)."""
        scale = self.box.side / self.out
        return self.box.left + (cx + 0.5) * scale - 0.5, self.box.top + (cy + 0.5) * scale - 0.5

    def to_crop(self, x: float, y: float) -> tuple[float, float]:
        """Map source image pixel coordinates ``(x, y)`` to crop coordinates (exact inverse of ``to_image``)."""
        scale = self.box.side / self.out
        return (x - self.box.left + 0.5) / scale - 0.5, (y - self.box.top + 0.5) / scale - 0.5


def _start(center: float, side: int, extent: int) -> int:
    """First pixel of a ``side``-long window on an axis of ``extent`` pixels, centred on ``center``."""
    if extent <= side:
        # Too small to hold the window: centre the image in it instead (the margins become black padding).
        return -((side - extent) // 2)
    # Pixels start..start+side-1 have their middle at start + (side - 1) / 2; for an even side no integer start
    # centres exactly, and ceil picks the window whose middle sits half a pixel before the point.
    start = math.ceil(center - side / 2)
    return min(max(start, 0), extent - side)


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB copy; transparent pixels go onto white, as ``qwen_vl_utils`` does when it feeds images to the model."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
        return rgb
    return image.convert("RGB")


def zoom(image: Image.Image, x: float, y: float, spec: ZoomSpec = VISUAL_SEARCH_ZOOM) -> Zoom:
    """Crop a ``spec.crop`` square of ``image`` centred on ``(x, y)`` and resize it to ``spec.out`` square.

    A point off the image is first clamped onto it (to ``[0, W - 1] x [0, H - 1]``), so a model that names a
    point just past the border still gets the nearest view. Near a border the square is shifted inward rather
    than padded; on an axis where the image is shorter than ``spec.crop``, the image is centred in the square
    and the rest is black. The crop is resized with bicubic resampling; with ``spec.dot`` a red dot with a white
    outline (radius 1% of ``spec.out``, at least 3 px) marks the point.

    Args:
        image: source image in any PIL mode (RGB, RGBA, L, P, ...); the result is always RGB.
        x: horizontal position of the point, in pixels of ``image``.
        y: vertical position of the point, in pixels of ``image``.
        spec: crop side, output side and dot flag.

    Returns:
        The :class:`Zoom`, whose ``to_image`` maps a point picked in the crop back to ``image`` pixels.

    Raises:
        ValueError: if ``x`` or ``y`` is not finite.

    Example:
        >>> from PIL import Image
        >>> z = zoom(Image.new("RGB", (1000, 800)), 990.0, 400.0, ZoomSpec(crop=200, out=400))
        >>> z.box
        CropBox(left=800.0, top=300.0, side=200.0)
        >>> z.to_image(*z.to_crop(990.0, 400.0))
        (990.0, 400.0)
    """
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"zoom point must be finite, got ({x}, {y})")
    width, height = image.size
    x = min(max(float(x), 0.0), width - 1.0)
    y = min(max(float(y), 0.0), height - 1.0)
    side = spec.crop
    left, top = _start(x, side, width), _start(y, side, height)

    # Crop only the part on the image and paste it into a black square, so padding is black whatever the mode.
    inner = (max(left, 0), max(top, 0), min(left + side, width), min(top + side, height))
    region = _to_rgb(image.crop(inner))
    if region.size == (side, side):
        crop = region
    else:
        crop = Image.new("RGB", (side, side), (0, 0, 0))
        crop.paste(region, (inner[0] - left, inner[1] - top))
    if side != spec.out:
        crop = crop.resize((spec.out, spec.out), Image.Resampling.BICUBIC)

    result = Zoom(image=crop, box=CropBox(float(left), float(top), float(side)), out=spec.out, center=(x, y))
    if spec.dot:
        _draw_dot(crop, *result.to_crop(x, y), spec.out)
    return result


def zoom_on(image: Image.Image, point: Point, geometry: ImageGeometry, spec: ZoomSpec = VISUAL_SEARCH_ZOOM) -> Zoom:
    """:func:`zoom` on a point written in any frame of ``image``'s ``geometry``: the point is converted to the pixel
    frame first. The zoom tool of GRPO and evaluation and the crops of a training dataset are all cut here, so a
    dialog shows the model the same crop wherever it comes from.

    Example:
        >>> from PIL import Image
        >>> g = ImageGeometry(1000, 800, 500, 400)
        >>> zoom_on(Image.new("RGB", (1000, 800)), Point(250, 200, "model"), g).center
        (500.5, 400.5)
    """
    pixel = point.to(Frame.PIXEL, geometry)
    return zoom(image, pixel.x, pixel.y, spec)


def _draw_dot(image: Image.Image, cx: float, cy: float, out: int) -> None:
    radius = max(_DOT_MIN_RADIUS, round(0.01 * out))
    ImageDraw.Draw(image).ellipse(
        (cx - radius, cy - radius, cx + radius, cy + radius),
        fill=_DOT_FILL,
        outline=_DOT_OUTLINE,
        width=max(1, radius // 3),
    )
