"""Zoom geometry: a square crop around a point, resized, with the exact map back to image coordinates.

(Implementation to be completed; ZoomSpec is the contract other modules use.)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ZoomSpec", "VISUAL_SEARCH_ZOOM", "GUI_ZOOM"]


@dataclass(frozen=True)
class ZoomSpec:
    """Crop side ``crop`` (pixels of the cropped image), output side ``out``, and whether to draw a marker dot."""

    crop: int = 364
    out: int = 672
    dot: bool = False


VISUAL_SEARCH_ZOOM = ZoomSpec(crop=364, out=672, dot=False)  # ViGoRL V*: offset 182 -> 672, no dot
GUI_ZOOM = ZoomSpec(crop=100, out=384, dot=True)  # ViGoRL web grounding RL: offset 50 -> 384, red dot
