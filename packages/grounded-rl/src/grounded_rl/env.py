"""The zoom environment: what happens when a model calls ``zoom`` on a point.

:class:`ZoomSession` holds one sample's image and answers zoom calls with a crop, using trace-forge's zoom geometry.
GRPO (through TRL's environment hook) and evaluation both drive the same class, so the crop sizes, the turn limit
and the observation wording are identical in training and evaluation.

Points arrive in the model family's frame (``model`` pixels for Qwen2.5-VL, ``norm1000`` for Qwen3-VL) and are
converted to the pixel frame of the original image before cropping: crops come from the full-resolution image,
so a zoom reveals detail the resized view lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from trace_forge.grounding import Frame, ImageGeometry, Point, Resize, ZoomSpec, zoom
from trace_forge.tasks.prompts import PromptSet

__all__ = ["ZoomSession", "ZoomResult", "ZoomRefused", "DEFAULT_MAX_IMAGES"]

DEFAULT_MAX_IMAGES = 5  # the original image plus at most 4 crops (ViGoRL's limit_images)


class ZoomRefused(ValueError):
    """A zoom call the environment will not serve; the message is shown to the model as the tool's reply."""


@dataclass(frozen=True)
class ZoomResult:
    """A served zoom: the crop, the observation text, and the point in the pixel frame of the original image."""

    image: Image.Image
    text: str
    point: Point


@dataclass
class ZoomSession:
    """One sample's zoom tool.

    Args:
        image: the sample's canvas at original resolution.
        frame: the frame the model writes points in.
        resize: the processor's resize bounds (defines the ``model`` frame).
        spec: crop side, output size and marker dot (per task).
        prompts: the task's prompt set (observation wording).
        max_images: images per dialog, the original included; a zoom past it is refused.
    """

    image: Image.Image
    frame: Frame
    resize: Resize
    spec: ZoomSpec
    prompts: PromptSet
    max_images: int = DEFAULT_MAX_IMAGES
    zooms: list[Point] = field(default_factory=list)

    @property
    def geometry(self) -> ImageGeometry:
        return self.resize.geometry(*self.image.size)

    @property
    def images_used(self) -> int:
        return 1 + len(self.zooms)

    @property
    def exhausted(self) -> bool:
        """Whether the image budget is spent: the next turn must answer."""
        return self.images_used >= self.max_images

    def zoom(self, x: object, y: object) -> ZoomResult:
        """Serve a zoom on ``(x, y)`` written in the model's frame.

        Raises:
            ZoomRefused: non-integer or off-image coordinates, or the image budget is spent.
        """
        if self.exhausted:
            raise ZoomRefused(f"no more zooms: the limit of {self.max_images} images is reached; answer now")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (x, y)):
            raise ZoomRefused(f"zoom needs integer coordinates, got ({x!r}, {y!r})")
        geometry = self.geometry
        if not geometry.contains(x, y, self.frame):
            w, h = geometry.size(self.frame)
            raise ZoomRefused(f"point ({x}, {y}) is outside the image ({w}x{h} in the model's coordinates)")
        pixel = Point(x, y, self.frame).to(Frame.PIXEL, geometry)
        crop = zoom(self.image, pixel.x, pixel.y, self.spec)
        self.zooms.append(pixel)
        return ZoomResult(crop.image, self.prompts.zoom_observation((x, y), self.spec.dot), pixel)
