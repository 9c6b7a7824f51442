"""The one definition of a grounded reasoning step, its coordinate frames, text forms and zoom geometry."""

from trace_forge.grounding.frames import (
    QWEN_FACTOR,
    QWEN_MAX_PIXELS,
    QWEN_MIN_PIXELS,
    Frame,
    ImageGeometry,
    Resize,
    smart_resize,
)
from trace_forge.grounding.steps import Box, Point, Step, Trajectory

__all__ = [
    "QWEN_FACTOR",
    "QWEN_MAX_PIXELS",
    "QWEN_MIN_PIXELS",
    "Box",
    "Frame",
    "ImageGeometry",
    "Point",
    "Resize",
    "Step",
    "Trajectory",
    "smart_resize",
]
