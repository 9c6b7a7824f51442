"""The grounded reasoning step: a thought plus one image point, and the trajectory built from steps.

These are the records every stage passes along: the teacher writes steps, the search keeps them in trees,
linearization turns trajectories into chat text, and grounded-rl converts their points into the frame its model
uses. Points are stored as floats with their frame; text rendering rounds them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from trace_forge.grounding.frames import Frame, ImageGeometry

__all__ = ["Point", "Box", "Step", "Trajectory", "format_point", "point_xy", "anchor_text", "move_anchor"]

# Digits are capped so a literal never turns into a number too large to round (int/float overflow).
NUMBER = r"-?[0-9]{1,12}(?:\.[0-9]+)?"
# The inline literal "(x, y)" that anchors a step to its point; floats are matched so that parsers can report them.
LITERAL_RE = re.compile(rf"\(\s*({NUMBER})\s*,\s*({NUMBER})\s*\)", re.ASCII)


@dataclass(frozen=True)
class Point:
    """An image point with its coordinate frame."""

    x: float
    y: float
    frame: Frame = Frame.PIXEL

    def __post_init__(self) -> None:
        object.__setattr__(self, "frame", Frame(self.frame))

    def to(self, frame: Frame | str, geometry: ImageGeometry) -> Point:
        """This point in another frame of the same image."""
        frame = Frame(frame)
        if frame is self.frame:
            return self
        x, y = geometry.convert(self.x, self.y, self.frame, frame)
        return Point(x, y, frame)

    def rounded(self) -> tuple[int, int]:
        """Integer coordinates, as written in text (round half to even, like Python's ``round``)."""
        return round(self.x), round(self.y)

    def distance(self, other: Point) -> float:
        if other.frame is not self.frame:
            raise ValueError(f"cannot measure between frames {self.frame} and {other.frame}")
        return ((self.x - other.x) ** 2 + (self.y - other.y) ** 2) ** 0.5

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x, "y": self.y, "frame": self.frame.value}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Point:
        return cls(float(d["x"]), float(d["y"]), Frame(d.get("frame", Frame.PIXEL)))


@dataclass(frozen=True)
class Box:
    """An axis-aligned box ``[x1, x2] x [y1, y2]`` with its frame; the border counts as inside."""

    x1: float
    y1: float
    x2: float
    y2: float
    frame: Frame = Frame.PIXEL

    def __post_init__(self) -> None:
        object.__setattr__(self, "frame", Frame(self.frame))
        if self.x2 < self.x1 or self.y2 < self.y1:
            raise ValueError(f"box corners out of order: ({self.x1}, {self.y1}, {self.x2}, {self.y2})")

    @classmethod
    def from_xywh(cls, x: float, y: float, w: float, h: float, frame: Frame | str = Frame.PIXEL) -> Box:
        return cls(x, y, x + w, y + h, Frame(frame))

    def contains(self, point: Point) -> bool:
        if point.frame is not self.frame:
            raise ValueError(f"point in frame {point.frame} tested against a box in frame {self.frame}")
        return self.x1 <= point.x <= self.x2 and self.y1 <= point.y <= self.y2

    @property
    def center(self) -> Point:
        return Point((self.x1 + self.x2) / 2, (self.y1 + self.y2) / 2, self.frame)

    @property
    def area(self) -> float:
        return (self.x2 - self.x1) * (self.y2 - self.y1)

    def to(self, frame: Frame | str, geometry: ImageGeometry) -> Box:
        """The box in another frame, corners mapped as continuous positions (edges, not cell centres)."""
        frame = Frame(frame)
        if frame is self.frame:
            return self
        x1, y1 = geometry.scale(self.x1, self.y1, self.frame, frame)
        x2, y2 = geometry.scale(self.x2, self.y2, self.frame, frame)
        return Box(x1, y1, x2, y2, frame)

    def to_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


@dataclass(frozen=True)
class Step:
    """One grounded reasoning step: a thought and the single point it is anchored to."""

    text: str
    point: Point

    def render(self) -> str:
        """The thought as model text: ``text``, with the point's literal ``(x, y)`` appended if it lacks one."""
        return anchor_text(self.text, self.point)

    def to(self, frame: Frame | str, geometry: ImageGeometry) -> Step:
        """This step in another frame: the point converted and its literal in the text rewritten to match."""
        point = self.point.to(frame, geometry)
        if point is self.point:
            return self
        return Step(move_anchor(self.text, self.point, point), point)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, **self.point.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        return cls(d["text"], Point.from_dict(d))


@dataclass(frozen=True)
class Trajectory:
    """Grounded steps followed by a final answer: option/free text, or a point for grounding tasks."""

    steps: tuple[Step, ...]
    answer: str | Point | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def points(self) -> list[Point]:
        return [s.point for s in self.steps]

    def to(self, frame: Frame | str, geometry: ImageGeometry) -> Trajectory:
        """Every point (steps and a point answer) converted to ``frame``."""
        answer = self.answer.to(frame, geometry) if isinstance(self.answer, Point) else self.answer
        steps = tuple(s.to(frame, geometry) for s in self.steps)
        return Trajectory(steps, answer, dict(self.meta))


# ---------------------------------------------------------------------------------------------------------------
# Point literals: how a point is written inside a step's text
# ---------------------------------------------------------------------------------------------------------------


def point_xy(point: Point | tuple[float, float]) -> tuple[int, int]:
    """The integer coordinates a point is written with (round half to even, like Python's ``round``)."""
    return point.rounded() if isinstance(point, Point) else (round(point[0]), round(point[1]))


def format_point(point: Point | tuple[float, float]) -> str:
    """The text literal of a point: its rounded coordinates as ``"(x, y)"``.

    Example:
        >>> format_point(Point(411.6, 230.2))
        '(412, 230)'
    """
    x, y = point_xy(point)
    return f"({x}, {y})"


def _writes(match: re.Match[str], xy: tuple[int, int]) -> bool:
    """Whether a literal match is the integer literal of ``xy`` (a float literal never is)."""
    return "." not in match[1] and "." not in match[2] and (int(match[1]), int(match[2])) == xy


def anchor_text(text: str, point: Point) -> str:
    """``text`` with the literal of ``point`` appended (after a space) unless the text already writes it.

    Example:
        >>> anchor_text("The red mug", Point(412, 230))
        'The red mug (412, 230)'
    """
    xy = point.rounded()
    if any(_writes(m, xy) for m in LITERAL_RE.finditer(text)):
        return text
    return f"{text} {format_point(point)}" if text else format_point(point)


def move_anchor(text: str, old: Point, new: Point) -> str:
    """``text`` with every literal of ``old``'s rounded point rewritten as ``new``'s rounded point.

    Example:
        >>> move_anchor("The mug (412, 230).", Point(412, 230), Point(206, 115))
        'The mug (206, 115).'
    """
    xy, literal = old.rounded(), format_point(new)
    return LITERAL_RE.sub(lambda m: literal if _writes(m, xy) else m[0], text)
