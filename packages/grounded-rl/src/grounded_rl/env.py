"""The zoom environment: what happens when a model calls ``zoom`` on a point.

:class:`ZoomSession` holds one sample's image and answers zoom calls with a crop, using trace-forge's zoom geometry.
GRPO (through TRL's environment hook) and evaluation both drive the same class, so the crop sizes, the turn limit
and the observation wording are identical in training and evaluation.

Points arrive in the frame of the model's :class:`~trace_forge.grounding.View` (``model`` pixels for Qwen2.5-VL,
``norm1000`` for Qwen3-VL) and are converted to the pixel frame of the original image before cropping
(:func:`~trace_forge.grounding.zoom_on`, where trace-forge cuts the crops of its datasets too): crops come from the
full-resolution image, so a zoom reveals detail the resized view lost.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from PIL import Image

from trace_forge.grounding import Frame, ImageGeometry, Point, View, ZoomSpec, zoom_on
from trace_forge.tasks import AnswerKind, Task, TaskSpec
from trace_forge.tasks.prompts import PromptSet, prompts_for

__all__ = ["ZoomSession", "ZoomResult", "ZoomRefused", "ZoomEnvironment", "DEFAULT_MAX_IMAGES"]

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
        view: the frame the model writes points in, and the resize that defines its ``model`` frame.
        spec: crop side, output size and marker dot (per task).
        prompts: the task's prompt set (observation wording).
        max_images: images per dialog, the original included; a zoom past it is refused.
    """

    image: Image.Image
    view: View
    spec: ZoomSpec
    prompts: PromptSet
    max_images: int = DEFAULT_MAX_IMAGES
    zooms: list[Point] = field(default_factory=list)

    @property
    def geometry(self) -> ImageGeometry:
        return self.view.geometry(*self.image.size)

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
        frame = self.view.frame
        if not geometry.contains(x, y, frame):
            w, h = geometry.size(frame)
            raise ZoomRefused(f"point ({x}, {y}) is outside the image ({w}x{h} in the model's coordinates)")
        point = Point(x, y, frame)
        crop = zoom_on(self.image, point, geometry, self.spec)
        pixel = point.to(Frame.PIXEL, geometry)
        self.zooms.append(pixel)
        return ZoomResult(crop.image, self.prompts.zoom_observation((x, y), self.spec.dot), pixel)

    def zoom_at(self, point: object) -> ZoomResult:
        """Serve a zoom call's ``point`` argument, which must be ``[x, y]``; see :meth:`zoom`.

        Raises:
            ZoomRefused: ``point`` is not a pair, or :meth:`zoom` refuses it.
        """
        if not isinstance(point, list) or len(point) != 2:
            raise ZoomRefused(f"zoom needs 'point' as [x, y], got {point!r}")
        return self.zoom(*point)


@cache
def _task(name: str, options: str) -> Task:
    return TaskSpec(name, json.loads(options)).build()


class ZoomEnvironment:
    """The zoom tool as a TRL ``environment_factory`` environment (``GRPOTrainer(environment_factory=...)``).

    TRL builds one instance per rollout, calls :meth:`reset` with the rollout's dataset row, and exposes every
    other public method as a tool: here only :meth:`zoom`, whose schema matches ``ZOOM_TOOL_SPEC`` (arguments
    ``{"point": [x, y]}``). A refused zoom replies with the refusal's message as text, the words evaluation
    sends (``str(ZoomRefused)``). The image budget of GRPO is set with ``max_tool_calling_iterations``
    (``max_images - 1``), so the session's own limit is a backstop.

    Args:
        view: the frame the model writes points in, and its processor's resize.
        max_images: images per dialog, the original included.
        spec: crop geometry; the row's task's (``Task.zoom``) when ``None``.

    Example:
        >>> from functools import partial
        >>> from PIL import Image
        >>> from trace_forge.grounding import Resize
        >>> env = partial(ZoomEnvironment, View(Frame.MODEL, Resize(max_pixels=448 * 448)))()
        >>> env.reset(image=Image.new("RGB", (800, 600)), task="vstar")
        >>> parts = env.zoom([100, 80])
        >>> parts[0]["image"].size, parts[1]["text"]
        ((672, 672), 'Here is the zoomed crop of the image centred on (100, 80).')
    """

    def __init__(self, view: View, max_images: int = DEFAULT_MAX_IMAGES, spec: ZoomSpec | None = None) -> None:
        self._view = view
        self._max_images = max_images
        self._spec = spec
        self.session: ZoomSession | None = None

    def reset(
        self, image: Image.Image, task: str, task_options: str = "{}", answer_kind: str | None = None, **row: Any
    ) -> None:
        """Start a rollout on the row's image (its canvas at original resolution); the prompt is left as it is.

        ``task`` and ``task_options`` (a JSON object) are the row's task spec; its zoom crop geometry is used.
        """
        task_ = _task(task, task_options)
        self.session = ZoomSession(
            image=image.convert("RGB"),
            view=self._view,
            spec=self._spec or task_.zoom,
            prompts=prompts_for(AnswerKind(answer_kind) if answer_kind else task_.answer_kind),
            max_images=self._max_images,
        )

    def zoom(self, point: list[int]) -> list[dict[str, Any]]:
        """Zoom in on a point of the image and receive a close-up crop centred on it.

        Args:
            point: The point to zoom on, as [x, y] in the image coordinates used in the text.

        Returns:
            The crop as an image part, then the observation text; or, for a refused zoom, the reason as text.
        """
        if self.session is None:
            raise RuntimeError("zoom called before reset")
        try:
            result = self.session.zoom_at(point)
        except ZoomRefused as e:
            # A normal reply, not an exception: TRL would wrap it as "{'error': ...}", and evaluation sends the
            # bare message, so training and evaluation would show the model different words.
            return [{"type": "text", "text": str(e)}]
        return [{"type": "image", "image": result.image}, {"type": "text", "text": result.text}]
