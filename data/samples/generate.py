"""Write the bundled sample data: small procedural stand-ins for V*Bench, ScreenSpot-v2, ScreenSpot-Pro, SAT-2,
BLINK, HR-Bench, MME-RealWorld (and lite), TreeBench, VisualProbe, RoboSpatial-Home and OS-Atlas grounding data, each
in its benchmark's on-disk layout.

    uv run python data/samples/generate.py            # rewrites everything under data/samples/
    uv run python data/samples/generate.py /tmp/out   # or somewhere else

Every picture is drawn here with PIL from fixed seeds (no photos, nothing downloaded), and every file is written
without timestamps, so two runs give byte-identical output; tests/trace_forge/test_samples_data.py checks that
the committed files equal a fresh run.
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import json
import math
import random
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from datasets import Dataset, Features, Image, List, Value, disable_progress_bars
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

SEED = 20250529
JPEG_QUALITY = 85
HERE = Path(__file__).resolve().parent

RGB = tuple[int, int, int]
XYWH = list[int]

# Named colours for the V* targets: the answer options are these names, so they must read unambiguously.
COLOURS: dict[str, RGB] = {
    "red": (220, 30, 30),
    "blue": (30, 70, 220),
    "green": (30, 160, 50),
    "yellow": (245, 215, 30),
    "orange": (245, 130, 20),
    "purple": (130, 40, 170),
    "pink": (245, 120, 190),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}


# ---------------------------------------------------------------------------------------------------------------
# Shared drawing helpers
# ---------------------------------------------------------------------------------------------------------------


@functools.cache
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's built-in default font (no font files needed), at ``size`` px where FreeType is available."""
    return ImageFont.load_default(size=size)


def _jpeg(image: PILImage.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="JPEG", quality=JPEG_QUALITY)


def _png(image: PILImage.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")


def _png_bytes(image: PILImage.Image) -> dict[str, bytes | None]:
    """An ``Image()`` feature value holding PNG bytes, so the parquet files do not depend on datasets' encoder."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def _json(obj: object, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _regular(cx: float, cy: float, radius: float, n: int, phase: float = -math.pi / 2) -> list[tuple[float, float]]:
    return [(cx + radius * math.cos(phase + 2 * math.pi * i / n), cy + radius * math.sin(phase + 2 * math.pi * i / n))
            for i in range(n)]


def _star(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    outer = _regular(cx, cy, radius, 5)
    inner = _regular(cx, cy, radius * 0.42, 5, phase=-math.pi / 2 + math.pi / 5)
    return [p for pair in zip(outer, inner, strict=True) for p in pair]


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(max(0, min(255, round(c * factor))) for c in colour)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------------------
# V*Bench: large cluttered canvases with one or two small, uniquely shaped targets
# ---------------------------------------------------------------------------------------------------------------

# Target shapes never occur among the distractors, so "the star" names exactly one thing in the picture.
TARGET_SHAPES = ("star", "ring", "triangle", "diamond", "cross", "hexagon", "arrow")


def _draw_target(draw: ImageDraw.ImageDraw, shape: str, cx: int, cy: int, r: int, colour: RGB) -> XYWH:
    """Draw a target with a dark outline; return its bounding box ``[x, y, w, h]``."""
    edge = (20, 20, 20) if colour != COLOURS["black"] else (235, 235, 235)
    if shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=edge, width=max(3, r // 3) + 2)
        draw.ellipse((cx - r + 1, cy - r + 1, cx + r - 1, cy + r - 1), outline=colour, width=max(3, r // 3))
        return [cx - r, cy - r, 2 * r + 1, 2 * r + 1]
    if shape == "star":
        pts = _star(cx, cy, r)
    elif shape == "triangle":
        pts = _regular(cx, cy, r, 3)
    elif shape == "diamond":
        pts = [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    elif shape == "hexagon":
        pts = _regular(cx, cy, r, 6, phase=0.0)
    elif shape == "cross":
        t = r / 3
        pts = [(cx - t, cy - r), (cx + t, cy - r), (cx + t, cy - t), (cx + r, cy - t), (cx + r, cy + t),
               (cx + t, cy + t), (cx + t, cy + r), (cx - t, cy + r), (cx - t, cy + t), (cx - r, cy + t),
               (cx - r, cy - t), (cx - t, cy - t)]
    elif shape == "arrow":
        t = r / 3
        pts = [(cx - r, cy - t), (cx, cy - t), (cx, cy - r), (cx + r, cy), (cx, cy + r), (cx, cy + t), (cx - r, cy + t)]
    else:
        raise ValueError(f"unknown target shape {shape!r}")
    draw.polygon(pts, fill=colour, outline=edge, width=2)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, y0 = math.floor(min(xs)) - 1, math.floor(min(ys)) - 1
    return [x0, y0, math.ceil(max(xs)) + 2 - x0, math.ceil(max(ys)) + 2 - y0]


def _clutter(rng: random.Random, width: int, height: int, blocks: int = 40, distractors: int = 320,
             sizes: tuple[int, ...] = (6, 10, 16, 24, 40, 70, 110)) -> PILImage.Image:
    """A smooth textured background under large blocks and many distractors of many colours, sizes and (non-target)
    forms. Small canvases take fewer and smaller ones, so their JPEGs stay small."""
    nrng = np.random.default_rng(rng.randrange(2**32))
    coarse = nrng.integers(40, 215, size=(9, 12, 3), dtype=np.uint8)
    image = PILImage.fromarray(coarse).resize((width, height), PILImage.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(blocks):  # large "buildings" and "fields"
        x, y = rng.randrange(width), rng.randrange(height)
        w, h = rng.randrange(80, 420), rng.randrange(60, 360)
        draw.rectangle((x, y, x + w, y + h), fill=tuple(rng.randrange(256) for _ in range(3)))
    for _ in range(distractors):
        x, y = rng.randrange(width), rng.randrange(height)
        s = rng.choice(sizes)
        colour = tuple(rng.randrange(256) for _ in range(3))
        kind = rng.randrange(5)
        if kind == 0:
            draw.ellipse((x, y, x + s, y + s), fill=colour)
        elif kind == 1:  # never square, so no rectangle reads as a diamond or square target
            draw.rectangle((x, y, x + s, y + s // 2 + 3), fill=colour)
        elif kind == 2:
            draw.ellipse((x, y, x + 2 * s, y + s // 2 + 2), fill=colour)
        elif kind == 3:
            draw.line((x, y, x + rng.randrange(-3 * s, 3 * s), y + rng.randrange(-s, s)), fill=colour,
                      width=rng.randrange(2, 7))
        else:
            start = rng.randrange(0, 360)  # at most half a circle, so no arc passes for a ring target
            draw.arc((x, y, x + s, y + s), start, start + rng.randrange(60, 180), fill=colour, width=3)
    return image


def _place(rng: random.Random, width: int, height: int, taken: list[tuple[int, int]], gap: int,
           margin: int = 120) -> tuple[int, int]:
    while True:
        cx, cy = rng.randrange(margin, width - margin), rng.randrange(margin, height - margin)
        if all(abs(cx - x) > gap for x, _ in taken):
            return cx, cy


def _draw_targets(rng: random.Random, image: PILImage.Image, targets: list[tuple[str, str]],
                  radius: tuple[int, int], margin: int = 120) -> tuple[list[XYWH], list[tuple[int, int]]]:
    """Draw ``(shape, colour name)`` targets at well-separated places; their boxes ``[x, y, w, h]`` and centres."""
    draw = ImageDraw.Draw(image)
    boxes: list[XYWH] = []
    centres: list[tuple[int, int]] = []
    for shape, colour in targets:
        centres.append(_place(rng, image.width, image.height, centres, gap=image.width // 6, margin=margin))
        boxes.append(_draw_target(draw, shape, *centres[-1], rng.randrange(*radius), COLOURS[colour]))
    return boxes, centres


def _vstar(out: Path, rng: random.Random) -> None:
    root = out / "vstar"
    rows: list[dict[str, object]] = []
    ids = rng.sample(range(1000, 99999), 10)
    for i, sa in enumerate(ids):
        category = "direct_attributes" if i < 6 else "relative_position"
        width = rng.randrange(1600, 2401, 8)
        height = rng.choice((round(width * 0.56), round(width * 0.66), round(width * 0.75)))
        image = _clutter(rng, width, height)
        n_targets = 1 if category == "direct_attributes" else 2
        shapes = rng.sample(TARGET_SHAPES, n_targets)
        colours = rng.sample(sorted(COLOURS), n_targets)
        boxes, centres = _draw_targets(rng, image, list(zip(shapes, colours, strict=True)), radius=(14, 30))
        if category == "direct_attributes":
            question = f"What is the color of the {shapes[0]}?"
            options = [colours[0], *rng.sample([c for c in sorted(COLOURS) if c != colours[0]], 3)]
        else:
            a, b = shapes
            question = f"Is the {a} on the left or right side of the {b}?"
            sides = ["left", "right"] if centres[0][0] < centres[1][0] else ["right", "left"]
            options = [f"The {a} is on the {side} side of the {b}." for side in sides]
        name = f"{category}/sa_{sa}"
        _jpeg(image, root / f"{name}.jpg")
        _json({"target_object": shapes, "bbox": boxes, "question": question, "options": options},
              root / f"{name}.json")
        # The JSON keeps the correct option first (as V* does); the question file shuffles them.
        order = rng.sample(range(len(options)), len(options))
        letters = "ABCD"[: len(options)]
        text = question + "".join(f"\n({letters[k]}) {options[j]}" for k, j in enumerate(order))
        text += "\nAnswer with the option's letter from the given choices directly."
        rows.append({"image": f"{name}.jpg", "text": text, "category": category, "question_id": i,
                     "label": letters[order.index(0)]})
    (root / "test_questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# GUI screenshots (ScreenSpot-v2 and ScreenSpot-Pro)
# ---------------------------------------------------------------------------------------------------------------

GLYPHS = ("search", "settings", "home", "close", "menu", "add", "back", "bell", "heart", "trash")


def _glyph(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], colour: RGB) -> None:
    """A simple pictogram filling ``box`` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    cx, cy, s = (x0 + x1) / 2, (y0 + y1) / 2, min(x1 - x0, y1 - y0)
    w = max(1, s // 10)
    if kind == "search":
        r = s * 0.3
        draw.ellipse((cx - r - s * 0.08, cy - r - s * 0.08, cx + r - s * 0.08, cy + r - s * 0.08), outline=colour,
                     width=w)
        draw.line((cx + r * 0.55, cy + r * 0.55, x1 - s * 0.1, y1 - s * 0.1), fill=colour, width=w + 1)
    elif kind == "settings":
        teeth = zip(_regular(cx, cy, s * 0.45, 8), _regular(cx, cy, s * 0.32, 8, phase=-math.pi / 2 + math.pi / 8),
                    strict=True)
        draw.polygon([p for pair in teeth for p in pair], fill=colour)
        draw.ellipse((cx - s * 0.14, cy - s * 0.14, cx + s * 0.14, cy + s * 0.14), fill=(255, 255, 255))
    elif kind == "home":
        draw.polygon([(cx, y0 + s * 0.1), (x1 - s * 0.1, cy), (x0 + s * 0.1, cy)], fill=colour)
        draw.rectangle((cx - s * 0.28, cy, cx + s * 0.28, y1 - s * 0.12), fill=colour)
    elif kind == "close":
        draw.line((x0 + s * 0.2, y0 + s * 0.2, x1 - s * 0.2, y1 - s * 0.2), fill=colour, width=w + 1)
        draw.line((x0 + s * 0.2, y1 - s * 0.2, x1 - s * 0.2, y0 + s * 0.2), fill=colour, width=w + 1)
    elif kind == "menu":
        for k in (-1, 0, 1):
            y = cy + k * s * 0.25
            draw.line((x0 + s * 0.15, y, x1 - s * 0.15, y), fill=colour, width=w + 1)
    elif kind == "add":
        draw.line((cx, y0 + s * 0.15, cx, y1 - s * 0.15), fill=colour, width=w + 1)
        draw.line((x0 + s * 0.15, cy, x1 - s * 0.15, cy), fill=colour, width=w + 1)
    elif kind == "back":
        draw.line((cx + s * 0.15, y0 + s * 0.2, cx - s * 0.15, cy, cx + s * 0.15, y1 - s * 0.2), fill=colour,
                  width=w + 1)
    elif kind == "bell":
        draw.pieslice((cx - s * 0.32, y0 + s * 0.12, cx + s * 0.32, y1 - s * 0.05), 180, 360, fill=colour)
        draw.rectangle((cx - s * 0.32, cy - s * 0.02, cx + s * 0.32, cy + s * 0.22), fill=colour)
        draw.ellipse((cx - s * 0.08, y1 - s * 0.2, cx + s * 0.08, y1 - s * 0.05), fill=colour)
    elif kind == "heart":
        r = s * 0.2
        draw.ellipse((cx - 2 * r, cy - 1.6 * r, cx, cy + 0.4 * r), fill=colour)
        draw.ellipse((cx, cy - 1.6 * r, cx + 2 * r, cy + 0.4 * r), fill=colour)
        draw.polygon([(cx - 1.95 * r, cy - 0.3 * r), (cx + 1.95 * r, cy - 0.3 * r), (cx, cy + 2 * r)], fill=colour)
    elif kind == "trash":
        draw.rectangle((cx - s * 0.25, cy - s * 0.15, cx + s * 0.25, y1 - s * 0.1), outline=colour, width=w)
        draw.line((x0 + s * 0.15, cy - s * 0.25, x1 - s * 0.15, cy - s * 0.25), fill=colour, width=w)
    else:
        raise ValueError(f"unknown glyph {kind!r}")


ICON_INSTRUCTIONS = {
    "search": "search", "settings": "open settings", "home": "go to the home page", "close": "close this window",
    "menu": "open the main menu", "add": "create a new item", "back": "go back", "bell": "show notifications",
    "heart": "add to favorites", "trash": "delete the selection",
}


@dataclass
class Screen:
    """A canvas plus the annotated elements drawn on it (bbox as ``[x1, y1, x2, y2]``)."""

    image: PILImage.Image
    items: list[dict[str, object]]

    @classmethod
    def new(cls, width: int, height: int, colour: RGB) -> Screen:
        return cls(PILImage.new("RGB", (width, height), colour), [])

    @property
    def draw(self) -> ImageDraw.ImageDraw:
        return ImageDraw.Draw(self.image)

    def rect(self, box: tuple[int, int, int, int], colour: RGB) -> None:
        self.draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=colour)

    def text(self, x: int, y: int, label: str, size: int, colour: RGB = (30, 30, 30),
             instruction: str | None = None) -> tuple[int, int, int, int]:
        """Draw ``label``; with an ``instruction`` it becomes an annotated text element."""
        self.draw.text((x, y), label, font=_font(size), fill=colour)
        x0, y0, x1, y1 = self.draw.textbbox((x, y), label, font=_font(size))
        box = (x0 - 2, y0 - 2, x1 + 2, y1 + 2)
        if instruction is not None:
            self.items.append({"box": box, "instruction": instruction, "type": "text"})
        return box

    def button(self, x: int, y: int, label: str, size: int, fill: RGB, ink: RGB = (255, 255, 255),
               instruction: str | None = None) -> tuple[int, int, int, int]:
        x0, y0, x1, y1 = self.draw.textbbox((0, 0), label, font=_font(size))
        pad = size // 2 + 4
        box = (x, y, x + x1 - x0 + 2 * pad, y + y1 - y0 + 2 * pad)
        self.draw.rounded_rectangle((box[0], box[1], box[2] - 1, box[3] - 1), radius=pad // 2, fill=fill)
        self.draw.text((x + pad - x0, y + pad - y0), label, font=_font(size), fill=ink)
        if instruction is not None:
            self.items.append({"box": box, "instruction": instruction, "type": "text"})
        return box

    def icon(self, x: int, y: int, kind: str, size: int, colour: RGB = (60, 60, 60),
             annotate: bool = False, instruction: str | None = None) -> tuple[int, int, int, int]:
        box = (x, y, x + size, y + size)
        _glyph(self.draw, kind, box, colour)
        if annotate or instruction is not None:
            self.items.append({"box": box, "instruction": instruction or ICON_INSTRUCTIONS[kind], "type": "icon"})
        return box


def _mobile_settings() -> Screen:
    s = Screen.new(390, 844, (246, 246, 248))
    s.text(24, 14, "9:41", 15)
    s.rect((0, 48, 390, 104), (255, 255, 255))
    s.icon(0, 56, "back", 40, (0, 122, 255), annotate=True)  # touches the left edge
    s.text(150, 64, "Settings", 20)
    for k, label in enumerate(["Wi-Fi", "Bluetooth", "Notifications", "Display", "Privacy", "Battery"]):
        y = 130 + 64 * k
        s.rect((16, y, 374, y + 56), (255, 255, 255))
        s.text(60, y + 18, label, 17, instruction=f"open {label} settings" if label == "Privacy" else None)
        s.icon(22, y + 16, GLYPHS[k % len(GLYPHS)], 24, (120, 120, 130))
    s.button(120, 560, "Sign out", 18, (220, 50, 50), instruction="sign out of the account")
    s.rect((0, 772, 390, 844), (255, 255, 255))
    for k, kind in enumerate(["home", "search", "bell", "settings"]):
        s.icon(24 + 92 * k, 790, kind, 36, (0, 122, 255) if kind == "settings" else (140, 140, 150))
    # The whole tab cell is the target, so its box reaches the bottom edge.
    s.items.append({"box": (277, 772, 390, 844), "instruction": "open the settings tab", "type": "icon"})
    return s


def _mobile_shop() -> Screen:
    s = Screen.new(390, 844, (255, 255, 255))
    s.rect((0, 0, 390, 96), (250, 120, 40))
    s.icon(12, 44, "menu", 40, (255, 255, 255))
    s.text(150, 52, "Shoply", 24, (255, 255, 255))
    s.icon(338, 44, "search", 40, (255, 255, 255), annotate=True)
    for k in range(4):
        x, y = 16 + 184 * (k % 2), 120 + 300 * (k // 2)
        s.rect((x, y, x + 174, y + 280), (240, 240, 240))
        s.rect((x + 12, y + 12, x + 162, y + 162), ((70, 130, 180), (200, 90, 90), (90, 170, 110), (200, 180, 60))[k])
        s.text(x + 12, y + 176, ("Blue lamp", "Red mug", "Green plant", "Gold watch")[k], 16)
        s.text(x + 12, y + 200, f"${12 + 9 * k}.99", 16, (200, 60, 20))
        favourite = "add the red mug to favorites" if k == 1 else None
        s.icon(x + 130, y + 230, "heart", 32, (230, 60, 90), instruction=favourite)
    s.button(96, 740, "Add to cart", 20, (250, 120, 40), instruction="add the item to the cart")
    return s


def _desktop_files(windows: bool) -> Screen:
    s = Screen.new(1280, 800, (236, 238, 242))
    s.rect((0, 0, 1280, 36), (250, 250, 252) if windows else (225, 225, 230))
    if windows:
        s.text(16, 10, "File Explorer", 14)
        s.icon(1180, 6, "add", 24)
        s.rect((1234, 0, 1280, 36), (232, 17, 35))
        s.icon(1245, 6, "close", 24, (255, 255, 255))
        s.items.append({"box": (1234, 0, 1280, 36), "instruction": "close this window", "type": "icon"})  # corner
    else:
        for k, colour in enumerate([(255, 95, 87), (254, 188, 46), (40, 200, 64)]):
            s.draw.ellipse((14 + 22 * k, 11, 28 + 22 * k, 25), fill=colour)
        s.items.append({"box": (13, 10, 29, 26), "instruction": "close this window", "type": "icon"})
        s.text(580, 10, "Documents", 14)
    s.rect((0, 36, 220, 800), (228, 230, 236))
    for k, label in enumerate(["Desktop", "Documents", "Downloads", "Pictures", "Music"]):
        s.text(40, 60 + 36 * k, label, 15, instruction="open the Downloads folder" if label == "Downloads" else None)
        s.icon(12, 58 + 36 * k, "home" if k == 0 else "menu", 20, (90, 110, 160))
    s.icon(240, 48, "back", 28, annotate=True)
    s.icon(1230, 48, "trash", 28, (200, 60, 60))
    for k in range(12):
        x, y = 250 + 170 * (k % 6), 110 + 150 * (k // 6)
        s.rect((x + 30, y, x + 110, y + 80), (110, 150, 210) if k % 3 else (230, 190, 90))
        s.text(x + 20, y + 90, f"report_{k + 1:02d}.pdf" if k % 3 else f"folder {k + 1}", 13)
    s.button(1040, 740, "Cancel", 16, (200, 200, 205), (30, 30, 30))
    s.button(1140, 740, "Save", 16, (40, 110, 220), instruction="save the file")
    return s


def _web_page(kind: str) -> Screen:
    s = Screen.new(1280, 800, (255, 255, 255))
    s.rect((0, 0, 1280, 64), (35, 47, 62))
    s.text(24, 18, "MegaMart" if kind == "shop" else "TalkHub", 24, (255, 255, 255))
    s.rect((360, 16, 860, 48), (255, 255, 255))
    s.text(372, 24, "Search products" if kind == "shop" else "Search topics", 14, (150, 150, 150))
    s.icon(864, 16, "search", 32, (255, 200, 60), annotate=True)
    if kind == "shop":
        for k, label in enumerate(["Deals", "Orders", "Cart"]):
            s.text(960 + 90 * k, 22, label, 17, (255, 255, 255), instruction="view my orders" if k == 1 else None)
        for k in range(8):
            x, y = 40 + 305 * (k % 4), 100 + 330 * (k // 4)
            s.rect((x, y, x + 280, y + 300), (245, 245, 245))
            s.rect((x + 20, y + 20, x + 260, y + 190), (80 + 20 * k, 120, 200 - 15 * k))
            s.text(x + 20, y + 204, f"Item {k + 1}", 16)
            s.button(x + 20, y + 240, "Buy now", 15, (255, 160, 20), (20, 20, 20),
                     instruction="buy item 6" if k == 5 else None)
        # A cookie banner across the bottom: its close button sits on the right edge.
        s.rect((0, 760, 1280, 800), (20, 20, 20))
        s.text(24, 772, "We use cookies to improve your experience.", 14, (230, 230, 230))
        s.icon(1240, 760, "close", 40, (230, 230, 230), instruction="dismiss the cookie banner")
    else:
        s.icon(1220, 16, "bell", 32, (255, 255, 255), annotate=True)
        s.button(1040, 80, "New topic", 16, (30, 140, 90), instruction="start a new topic")
        for k, title in enumerate(["Best budget laptop?", "Weekend hiking trip", "Help with my sourdough",
                                   "Favorite sci-fi novels", "Fixing a squeaky door"]):
            y = 140 + 110 * k
            s.rect((40, y, 1240, y + 96), (246, 247, 250))
            s.text(60, y + 18, title, 18, (30, 60, 140),
                   instruction="open the thread about hiking" if k == 1 else None)
            s.text(60, y + 54, f"{3 + 7 * k} replies", 13, (120, 120, 120))
            s.button(1130, y + 30, "Reply", 14, (60, 90, 200))
    return s


def _screenspot_v2(out: Path, rng: random.Random) -> None:
    root = out / "screenspot_v2"
    platforms: dict[str, list[tuple[str, Callable[[], Screen]]]] = {
        "mobile": [("ios", _mobile_settings), ("android", _mobile_shop)],
        "desktop": [("windows", lambda: _desktop_files(True)), ("macos", lambda: _desktop_files(False))],
        "web": [("shop", lambda: _web_page("shop")), ("forum", lambda: _web_page("forum"))],
    }
    for platform, screens in platforms.items():
        rows = []
        for source, make in screens:
            screen = make()
            name = f"{platform}_{rng.getrandbits(64):016x}.png"
            _png(screen.image, root / "screenspotv2_image" / name)
            for item in screen.items:
                x1, y1, x2, y2 = item["box"]  # type: ignore[misc]
                rows.append({"img_filename": name, "bbox": [x1, y1, x2 - x1, y2 - y1],
                             "instruction": item["instruction"], "data_type": item["type"], "data_source": source})
        _json(rows, root / f"screenspot_{platform}_v2.json")


def _vscode(width: int, height: int, variant: int) -> Screen:
    s = Screen.new(width, height, (30, 30, 30))
    s.rect((0, 0, width, 44), (50, 50, 52))
    s.text(width // 2 - 80, 12, "main.py - project", 18, (200, 200, 200))
    s.rect((0, 44, 72, height), (44, 44, 46))
    asked = ("search", "open the search view") if variant == 0 else ("settings", "open the settings")
    for k, kind in enumerate(["menu", "search", "add", "bell", "settings"]):
        s.icon(22, 64 + 70 * k, kind, 28, (150, 150, 150), instruction=asked[1] if kind == asked[0] else None)
    s.rect((72, 44, 500, height - 30), (37, 37, 38))
    for k, fname in enumerate(["README.md", "main.py", "utils.py", "config.yaml", "tests", "setup.cfg"]):
        s.text(110, 80 + 32 * k, fname, 16, (200, 200, 200),
               instruction=f"open {fname}" if k == 2 + variant else None)
    for k in range(48):  # code lines as coloured runs of "tokens"
        y = 70 + 26 * k
        x = 560 + 24 * (k % 5)
        for t in range(1 + (k * 7) % 6):
            w = 30 + (k * 13 + t * 29) % 110
            s.rect((x, y, x + w, y + 12), ((86, 156, 214), (206, 145, 120), (220, 220, 170), (156, 220, 254))[t % 4])
            x += w + 14
    s.icon(width - 120, 54, "menu", 22, (180, 180, 180), instruction="split the editor" if variant == 0 else None)
    s.icon(width - 80, 54, "close", 22, (180, 180, 180), instruction="close the editor tab" if variant else None)
    s.rect((0, height - 30, width, height), (0, 122, 204))
    s.text(90, height - 26, "main", 16, (255, 255, 255), instruction="switch git branch")
    s.text(width - 320, height - 26, f"Ln {12 + variant}, Col 4   UTF-8   Python", 16, (255, 255, 255))
    return s


def _autocad(width: int, height: int) -> Screen:
    s = Screen.new(width, height, (33, 40, 48))
    s.rect((0, 0, width, 150), (240, 240, 240))
    for k, tab in enumerate(["Home", "Insert", "Annotate", "Parametric", "View", "Manage", "Output"]):
        s.text(20 + 90 * k, 8, tab, 14, instruction="open the Annotate tab" if tab == "Annotate" else None)
    for k, kind in enumerate(["add", "close", "search", "trash", "home", "settings", "menu"]):
        s.icon(24 + 44 * k, 50, kind, 20, (40, 80, 150), instruction="erase objects" if kind == "trash" else None)
    for k in range(30):  # drawing: lines and circles of a "floor plan"
        x, y = 300 + (k * 97) % (width - 600), 220 + (k * 61) % (height - 420)
        s.draw.line((x, y, x + 40 + (k * 37) % 300, y), fill=(200, 200, 200), width=1)
        s.draw.ellipse((x, y + 20, x + 30, y + 50), outline=(90, 200, 240))
    s.rect((0, height - 40, width, height), (50, 58, 68))
    s.text(12, height - 30, "Command:", 14, (220, 220, 220))
    s.icon(width - 36, height - 34, "settings", 24, (200, 200, 200), instruction="open the workspace settings")
    return s


def _excel(width: int, height: int) -> Screen:
    s = Screen.new(width, height, (255, 255, 255))
    s.rect((0, 0, width, 60), (33, 115, 70))
    s.text(width // 2 - 60, 20, "Budget.xlsx", 18, (255, 255, 255))
    s.rect((0, 60, width, 200), (243, 243, 243))
    for k, tab in enumerate(["Home", "Insert", "Draw", "Page Layout", "Formulas", "Data", "Review"]):
        s.text(24 + 110 * k, 72, tab, 15, instruction="open the Formulas tab" if tab == "Formulas" else None)
    s.icon(40, 120, "add", 22, (33, 115, 70), instruction="insert a new row")
    s.icon(90, 120, "trash", 22, (60, 60, 60))
    for c in range(0, width, 120):
        s.draw.line((c, 230, c, height - 40), fill=(218, 218, 218))
    for r in range(230, height - 40, 30):
        s.draw.line((0, r, width, r), fill=(218, 218, 218))
    for k in range(20):
        s.text(130 + 120 * (k % 5), 236 + 30 * (k // 5), f"{(k * 37) % 900 + 100}", 14)
    s.rect((0, height - 40, width, height), (243, 243, 243))
    s.text(20, height - 30, "Sheet1", 14, instruction="switch to Sheet1")
    s.icon(110, height - 34, "add", 22, (60, 60, 60), instruction="add a new sheet")
    return s


def _screenspot_pro(out: Path) -> None:
    root = out / "screenspot_pro"
    apps = [
        ("vscode", "macos", "Dev", [lambda: _vscode(2560, 1440, 0), lambda: _vscode(2560, 1440, 1)]),
        ("autocad", "windows", "CAD", [lambda: _autocad(1920, 1080)]),
        ("excel", "macos", "Office", [lambda: _excel(2880, 1800)]),
    ]
    for app, os_name, group, screens in apps:
        rows = []
        for n, make in enumerate(screens, start=1):
            screen = make()
            rel = f"{app}_{os_name}/screenshot_{n}.png"
            _png(screen.image, root / "images" / rel)
            for item in screen.items:
                rows.append({
                    "img_filename": rel,
                    "bbox": list(item["box"]),  # type: ignore[call-overload]
                    "img_size": list(screen.image.size),
                    "instruction": item["instruction"],
                    "instruction_cn": f"点击：{item['instruction']}",
                    "id": f"{app}_{os_name}_{len(rows)}",
                    "application": app,
                    "platform": os_name,
                    "ui_type": item["type"],
                    "group": group,
                })
        _json(rows, root / "annotations" / f"{app}_{os_name}.json")


# ---------------------------------------------------------------------------------------------------------------
# 3D-ish room scenes (SAT-2 and BLINK): a pinhole camera over a floor with boxes and balls
# ---------------------------------------------------------------------------------------------------------------

SCENE_W, SCENE_H = 512, 384
FOCAL, CAM_HEIGHT, HORIZON = 420.0, 1.4, 150


@dataclass(frozen=True)
class Thing:
    """An object on the floor at world ``(x, z)`` (metres; z points away from the start camera)."""

    kind: str  # "box" | "ball"
    colour: str
    x: float
    z: float
    size: float = 0.6


@dataclass(frozen=True)
class Camera:
    x: float = 0.0
    z: float = 0.0
    yaw: float = 0.0  # radians, positive turns right

    def project(self, x: float, z: float) -> tuple[float, float, float]:
        """Screen ``(u, v_floor, depth)`` of the floor point ``(x, z)``."""
        dx, dz = x - self.x, z - self.z
        cx = dx * math.cos(self.yaw) - dz * math.sin(self.yaw)
        cz = dx * math.sin(self.yaw) + dz * math.cos(self.yaw)
        return SCENE_W / 2 + FOCAL * cx / cz, HORIZON + FOCAL * CAM_HEIGHT / cz, cz


def _render(things: list[Thing], camera: Camera, marks: dict[str, Thing] | None = None) -> PILImage.Image:
    image = PILImage.new("RGB", (SCENE_W, SCENE_H), (205, 212, 222))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, HORIZON, SCENE_W, SCENE_H), fill=(168, 142, 110))
    for z in (1.5, 2, 3, 4.5, 7, 11):  # floor seams, denser towards the horizon
        v = HORIZON + FOCAL * CAM_HEIGHT / z
        draw.line((0, v, SCENE_W, v), fill=(150, 124, 94), width=2)
    drawn: dict[Thing, tuple[float, float, float]] = {}
    for thing in sorted(things, key=lambda t: -camera.project(t.x, t.z)[2]):
        u, v, depth = camera.project(thing.x, thing.z)
        if depth <= 0.3:
            continue
        px = FOCAL * thing.size / depth
        colour = COLOURS[thing.colour]
        draw.ellipse((u - px * 0.6, v - px * 0.12, u + px * 0.6, v + px * 0.12), fill=(120, 98, 74))  # shadow
        if thing.kind == "box":
            lip = px * 0.25
            draw.polygon([(u - px / 2, v - px), (u - px / 2 + lip, v - px - lip), (u + px / 2 + lip, v - px - lip),
                          (u + px / 2, v - px)], fill=_shade(colour, 1.25))
            draw.polygon([(u + px / 2, v), (u + px / 2, v - px), (u + px / 2 + lip, v - px - lip),
                          (u + px / 2 + lip, v - lip)], fill=_shade(colour, 0.65))
            draw.rectangle((u - px / 2, v - px, u + px / 2, v), fill=colour)
        else:
            draw.ellipse((u - px / 2, v - px, u + px / 2, v), fill=colour)
            draw.ellipse((u - px * 0.25, v - px * 0.85, u - px * 0.05, v - px * 0.65), fill=_shade(colour, 1.4))
        drawn[thing] = (u, v - px / 2, px)
    for label, thing in (marks or {}).items():
        u, v, _ = drawn[thing]
        draw.ellipse((u - 11, v - 11, u + 11, v + 11), fill=(255, 255, 255), outline=(220, 0, 0), width=3)
        draw.text((u, v), label, font=_font(14), fill=(220, 0, 0), anchor="mm")
    return image


def _sat2(out: Path) -> None:
    red_box, blue_ball = Thing("box", "red", -1.2, 4.0), Thing("ball", "blue", 1.0, 3.2)
    green_box, yellow_ball = Thing("box", "green", 0.3, 6.0, 0.8), Thing("ball", "yellow", -0.4, 2.6, 0.4)
    room = [red_box, blue_ball, green_box, yellow_ball]
    moved = Thing("box", "green", 0.3, 3.5, 0.8)
    rows = [
        ("relative_position", [_render(room, Camera())],
         "Is the red box to the left or to the right of the blue ball?", ["left", "right"], "left"),
        ("relative_position", [_render(room, Camera(yaw=0.2))],
         "Which is closer to the camera, the green box or the yellow ball?", ["the green box", "the yellow ball"],
         "the yellow ball"),
        ("ego_movement", [_render(room, Camera()), _render(room, Camera(yaw=-0.35))],
         "Between the first and the second image, did the camera turn left or right?", ["right", "left"], "left"),
        ("obj_movement", [_render(room, Camera()), _render([red_box, blue_ball, moved, yellow_ball], Camera())],
         "Did the green box move toward the camera or away from it?", ["toward the camera", "away from the camera"],
         "toward the camera"),
        ("goal_aim", [_render(room, Camera(yaw=-0.3))],
         "I want to face the blue ball. Should I turn left or right?", ["left", "right"], "right"),
        ("action_consequence", [_render(room, Camera(x=0.4))],
         "If I walk forward three meters, will the yellow ball be in front of me or behind me?",
         ["in front of me", "behind me"], "behind me"),
    ]
    features = Features({"images": List(Image()), "question": Value("string"), "answers": List(Value("string")),
                         "correct_answer": Value("string"), "question_type": Value("string")})
    (out / "sat2").mkdir(parents=True, exist_ok=True)
    # val: every question type; test (the default split, like SAT-v2's real-image test set): the dynamic ones.
    dynamic = [row for row in rows if row[0] in ("ego_movement", "obj_movement")]
    for split, split_rows in (("val", rows), ("test", dynamic)):
        data: dict[str, list[object]] = {"images": [], "question": [], "answers": [], "correct_answer": [],
                                         "question_type": []}
        for question_type, images, question, answers, correct in split_rows:
            assert correct in answers
            data["images"].append([_png_bytes(im) for im in images])
            data["question"].append(question)
            data["answers"].append(answers)
            data["correct_answer"].append(correct)
            data["question_type"].append(question_type)
        Dataset.from_dict(data, features=features).to_parquet(str(out / "sat2" / f"{split}.parquet"))


def _blink_rows(sub_task: str) -> list[tuple[list[PILImage.Image], str, list[str], int]]:
    """``(images, question, choices, index of the answer)`` for one BLINK-like subtask."""
    if sub_task == "Relative_Depth":
        rows = []
        for k, (za, zb) in enumerate([(2.4, 5.5), (6.0, 3.0), (3.2, 7.5)]):
            a, b = Thing("box", "orange", -0.9 + 0.2 * k, za), Thing("ball", "purple", 0.9, zb)
            image = _render([a, b, Thing("box", "white", 2.2, 8.0)], Camera(), marks={"A": a, "B": b})
            rows.append(([image], "Which point is closer to the camera?", ["A is closer", "B is closer"],
                         0 if za < zb else 1))
        return rows
    if sub_task == "Spatial_Relation":
        rows = []
        for k, (xa, xb) in enumerate([(-1.0, 1.0), (1.2, -0.8), (0.9, -1.1)]):
            image = _render([Thing("ball", "green", xa, 3.5), Thing("box", "blue", xb, 4.0 + k)], Camera())
            question = "Is the green ball to the left of the blue box?"
            rows.append(([image], question, ["yes", "no"], 0 if xa < xb else 1))
        return rows
    if sub_task == "Multi-view_Reasoning":
        scene = [Thing("box", "red", -0.6, 4.0), Thing("ball", "yellow", 0.5, 4.4), Thing("box", "blue", 0.1, 5.2)]
        rows = []
        for side in (-1, 1, 1):
            # The camera slides sideways while turning to keep the scene centre in view: an orbit.
            end = Camera(x=1.6 * side, z=0.4, yaw=-0.38 * side)
            question = ("The two images show a still scene from the start and the end of a camera orbit around it. "
                        "Did the camera move to the left or to the right?")
            rows.append(([_render(scene, Camera()), _render(scene, end)], question, ["left", "right"],
                         0 if side < 0 else 1))
        return rows
    raise ValueError(f"unknown subtask {sub_task!r}")


def _blink(out: Path) -> None:
    features = Features({"idx": Value("string"), "question": Value("string"), "prompt": Value("string"),
                         "choices": List(Value("string")), "answer": Value("string"), "sub_task": Value("string"),
                         **{f"image_{k}": Image() for k in range(1, 5)}})
    for sub_task in ("Relative_Depth", "Spatial_Relation", "Multi-view_Reasoning"):
        rows = _blink_rows(sub_task)
        splits = {"val": rows} if sub_task != "Relative_Depth" else {"val": rows, "test": rows[:1]}
        for split, split_rows in splits.items():
            data: dict[str, list[object]] = {name: [] for name in features}
            for n, (images, question, choices, answer) in enumerate(split_rows, start=1):
                letters = [f"({chr(ord('A') + k)})" for k in range(len(choices))]
                data["idx"].append(f"{split}_{sub_task}_{n}")
                data["question"].append(question)
                data["prompt"].append(question + "\nSelect from the following choices.\n"
                                      + "\n".join(f"{lt} {c}" for lt, c in zip(letters, choices, strict=True)))
                data["choices"].append(choices)
                data["answer"].append(letters[answer] if split == "val" else "hidden")
                data["sub_task"].append(sub_task)
                for k in range(1, 5):
                    data[f"image_{k}"].append(_png_bytes(images[k - 1]) if k <= len(images) else None)
            (out / "blink" / sub_task).mkdir(parents=True, exist_ok=True)
            Dataset.from_dict(data, features=features).to_parquet(str(out / "blink" / sub_task / f"{split}.parquet"))


# ---------------------------------------------------------------------------------------------------------------
# Thinking-with-images benchmarks (HR-Bench, MME-RealWorld, TreeBench, VisualProbe) on small search scenes,
# RoboSpatial on room renders, and OS-Atlas grounding data on small screens
# ---------------------------------------------------------------------------------------------------------------


def _search_scene(rng: random.Random, width: int, height: int, targets: list[tuple[str, str]],
                  radius: tuple[int, int] = (9, 15)) -> tuple[PILImage.Image, list[list[int]]]:
    """A small, lightly cluttered canvas with the targets drawn on it; their boxes as ``[x1, y1, x2, y2]``."""
    image = _clutter(rng, width, height, blocks=6, distractors=50, sizes=(6, 10, 16, 24))
    boxes, _ = _draw_targets(rng, image, targets, radius, margin=40)
    return image, [[x, y, x + w, y + h] for x, y, w, h in boxes]


def _two_targets(rng: random.Random) -> list[tuple[str, str]]:
    return list(zip(rng.sample(TARGET_SHAPES, 2), rng.sample(sorted(COLOURS), 2), strict=True))


def _other_colours(rng: random.Random, colour: str, n: int) -> list[str]:
    return rng.sample([c for c in sorted(COLOURS) if c != colour], n)


def _base64_jpeg(image: PILImage.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _tsv(rows: list[dict[str, object]], columns: tuple[str, ...], path: Path) -> None:
    """A TSV as VLMEvalKit dumps one: every field quoted, empty where a row has no value."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([[row.get(c, "") for c in columns] for row in rows])


HRBENCH_COLUMNS = ("index", "question", "A", "B", "C", "D", "answer", "category", "cycle_category", "image")


def _hrbench_rows(rng: random.Random, width: int, height: int) -> list[dict[str, object]]:
    """One picture, one FSP ("single") and one FCP ("cross") question, each in two cycles with rotated options."""
    targets = _two_targets(rng)
    (shape, colour), (other, _) = targets
    image, boxes = _search_scene(rng, width, height, targets)
    side, far = ("left", "right") if boxes[0][0] < boxes[1][0] else ("right", "left")
    questions = [  # the correct option first
        ("single", f"What is the color of the {shape}?", [colour, *_other_colours(rng, colour, 3)]),
        ("cross", f"Is the {shape} to the left or to the right of the {other}?",
         [side, far, "directly above it", "directly below it"]),
    ]
    cell = _base64_jpeg(image)
    rows: list[dict[str, object]] = []
    for cycle in range(2):
        for category, question, options in questions:
            shown = options[cycle:] + options[:cycle]
            rows.append({"index": len(rows), "question": question, **dict(zip("ABCD", shown, strict=True)),
                         "answer": "ABCD"[shown.index(options[0])], "category": category,
                         "cycle_category": cycle, "image": cell})
    return rows


def _hrbench(out: Path, rng: random.Random) -> None:
    root = out / "hrbench"
    rows = _hrbench_rows(rng, 450, 262)
    features = Features({c: Value("int64") if c in ("index", "cycle_category") else Value("string")
                         for c in HRBENCH_COLUMNS})
    columns = {c: [row[c] for row in rows] for c in HRBENCH_COLUMNS}
    root.mkdir(parents=True, exist_ok=True)
    Dataset.from_dict(columns, features=features).to_parquet(str(root / "hr_bench_4k.parquet"))
    rows = _hrbench_rows(rng, 522, 306)
    for row in rows[2:]:  # the second cycle stores its picture as a reference to the first (VLMEvalKit's layout)
        row["image"] = str(rows[0]["index"])
    _tsv(rows, HRBENCH_COLUMNS, root / "hr_bench_8k.tsv")


TREEBENCH_COLUMNS = ("index", "image", "question", "multi-choice options", "A", "B", "C", "D", "answer", "category",
                     "target_instances")


def _treebench_row(index: int, image: str, question: str, options: list[str], correct: int, category: str,
                   boxes: list[list[int]]) -> dict[str, object]:
    letters = "ABCD"[: len(options)]
    return {"index": index, "image": image, "question": question,
            "multi-choice options": "\n".join(f"{lt}. {o}" for lt, o in zip(letters, options, strict=True)),
            **dict(zip(letters, options, strict=True)), "answer": letters[correct], "category": category,
            "target_instances": str(boxes)}


def _sign_scene(rng: random.Random, width: int, height: int, text: str) -> tuple[PILImage.Image, list[int]]:
    """A cluttered canvas with one small white sign bearing ``text``; the sign's box ``[x1, y1, x2, y2]``."""
    image = _clutter(rng, width, height, blocks=6, distractors=50, sizes=(6, 10, 16, 24))
    draw = ImageDraw.Draw(image)
    x, y = rng.randrange(40, width - 120), rng.randrange(40, height - 60)
    x0, y0, x1, y1 = draw.textbbox((x + 6, y + 4), text, font=_font(13))
    draw.rectangle((x, y, x1 + 6, y1 + 4), fill=(250, 250, 250), outline=(20, 20, 20))
    draw.text((x + 6, y + 4), text, font=_font(13), fill=(20, 20, 20))
    return image, [x, y, x1 + 7, y1 + 5]


def _treebench(out: Path, rng: random.Random) -> None:
    rows: list[dict[str, object]] = []
    targets = _two_targets(rng)
    (shape, colour), (other, _) = targets
    image, boxes = _search_scene(rng, 480, 352, targets)
    options = [colour, *_other_colours(rng, colour, 3)]
    rng.shuffle(options)
    rows.append(_treebench_row(0, _base64_jpeg(image), f"What is the color of the {shape}?", options,
                               options.index(colour), "Perception/Attributes", boxes[:1]))
    # Seen from the other target, facing the camera, image-left is on the right. This row shares the first picture.
    facing = "right" if boxes[0][0] < boxes[1][0] else "left"
    rows.append(_treebench_row(1, "0", f"Standing at the {other} and facing the camera, is the {shape} on your left "
                               "or on your right?", ["left", "right"], ["left", "right"].index(facing),
                               "Reasoning/Perspective Transform", boxes))
    number = rng.randrange(10, 99)
    image, sign = _sign_scene(rng, 400, 300, f"EXIT {number}")
    options = [str(number), str(number + 7), str(number % 10 * 10 + number // 10 + 1), str(number + 30)]
    rows.append(_treebench_row(2, _base64_jpeg(image), "What number is written on the small white sign?", options,
                               0, "Perception/OCR", [sign]))
    targets = _two_targets(rng)
    image, boxes = _search_scene(rng, 420, 320, targets, radius=(8, 22))
    areas = [(x2 - x1) * (y2 - y1) for x1, y1, x2, y2 in boxes]
    options = [targets[0][0], targets[1][0], "they are the same size"]
    correct = 2 if areas[0] == areas[1] else int(areas[1] > areas[0])
    rows.append(_treebench_row(3, _base64_jpeg(image), f"Which is larger, the {targets[0][0]} or the "
                               f"{targets[1][0]}?", options, correct, "Reasoning/Comparison", boxes))
    _tsv(rows, TREEBENCH_COLUMNS, out / "treebench" / "TreeBench.tsv")


def _bar_chart(values: dict[str, int]) -> PILImage.Image:
    image = PILImage.new("RGB", (362, 258), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((120, 6), "Monthly orders", font=_font(14), fill=(20, 20, 20))
    draw.line((30, 228, 350, 228), fill=(40, 40, 40), width=2)
    for k, (month, value) in enumerate(values.items()):  # values below 90: the bars stay under the title
        x = 40 + 52 * k
        draw.rectangle((x, 228 - 2 * value, x + 34, 228), fill=(60, 110, 190))
        draw.text((x + 17, 222 - 2 * value), str(value), font=_font(11), fill=(20, 20, 20), anchor="mb")
        draw.text((x + 17, 232), month, font=_font(11), fill=(20, 20, 20), anchor="mt")
    return image


def _aerial(rng: random.Random, cars: dict[str, int]) -> PILImage.Image:
    """A top-down field with a road and small parked cars, ``cars[colour]`` of each colour."""
    nrng = np.random.default_rng(rng.randrange(2**32))
    field = nrng.integers(70, 130, size=(6, 8, 3), dtype=np.uint8) * np.array([0.6, 1.0, 0.5])
    image = PILImage.fromarray(field.astype(np.uint8)).resize((418, 298), PILImage.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 130, 418, 170), fill=(110, 110, 115))
    slots = rng.sample(range(14), sum(cars.values()))
    colours = [c for c, n in cars.items() for _ in range(n)]
    for slot, colour in zip(slots, colours, strict=True):
        x = 14 + 28 * slot
        draw.rectangle((x, 138, x + 16, 162), fill=COLOURS[colour], outline=(30, 30, 30))
    return image


MME_CHOICE_NONE = "The image does not feature the {}."


def _mme_record(qid: str, image: str, text: str, options: list[str], correct: int, task: str, subtask: str,
                category: str, feature: str) -> dict[str, object]:
    choices = [*options, MME_CHOICE_NONE.format(feature)]
    return {"Question_id": qid, "Image": image, "Text": text, "Question Type": "Multiple Choice",
            "Answer choices": [f"({'ABCDE'[k]}) {c}" for k, c in enumerate(choices)],
            "Ground truth": "ABCDE"[correct], "Task": task, "Subtask": subtask, "Category": category}


def _mme_realworld(out: Path, rng: random.Random) -> None:
    values = dict(zip(("Jan", "Feb", "Mar", "Apr", "May", "Jun"), rng.sample(range(20, 90), 6), strict=True))
    cars = {"red": 3, "white": 4, "blue": 2}
    room = [Thing("box", "orange", -1.0, 5.0), Thing("ball", "green", 0.8, 2.8), Thing("box", "purple", 0.2, 7.5)]
    pictures = {
        "diagram_and_table/orders_2024.png": _bar_chart(values),
        "remote_sensing/parking_017.jpg": _aerial(rng, cars),
        "autonomous_driving/front_0032.jpg": _render(room, Camera()),
    }
    mar = values["Mar"]
    value_options = rng.sample([mar, mar + 5, mar - 3, mar + 11], 4)
    months = sorted(values, key=values.get, reverse=True)[:4]
    month_options = rng.sample(months, 4)
    count_options = [1, 2, 3, 5]
    objects = ["the orange box", "the green ball", "the purple box", "a pedestrian"]
    records = [
        _mme_record("Perception/Diagram_and_Table/diagram/0001", "diagram_and_table/orders_2024.png",
                    "What is the number of orders in Mar according to the chart?", [str(v) for v in value_options],
                    value_options.index(mar), "Perception", "Diagram and Table", "diagram", "number"),
        _mme_record("Reasoning/Diagram_and_Table/diagram/0002", "diagram_and_table/orders_2024.png",
                    "Which month had the most orders?", month_options, month_options.index(months[0]),
                    "Reasoning", "Diagram and Table", "diagram", "months"),
        _mme_record("Perception/Remote_Sensing/count/0003", "remote_sensing/parking_017.jpg",
                    "How many red cars are parked along the road?", [str(n) for n in count_options],
                    count_options.index(cars["red"]), "Perception", "Remote Sensing", "count", "cars"),
        # No bus in the picture: the answer is E, "the image does not feature" (attribute categories merge).
        _mme_record("Perception/Monitoring/Vehicle/attribute/color/0004", "remote_sensing/parking_017.jpg",
                    "What is the color of the bus?", ["red", "white", "blue", "black"], 4, "Perception",
                    "Monitoring", "Vehicle/attribute/color", "bus"),
        _mme_record("Perception/Autonomous_Driving/Objects_Identify/0005", "autonomous_driving/front_0032.jpg",
                    "Which object is closest to the ego car?", objects, 1, "Perception", "Autonomous_Driving",
                    "Objects_Identify", "objects"),
    ]
    for rel, image in pictures.items():
        for folder in (out / "mme_realworld", out / "mme_realworld_lite" / "data" / "imgs"):
            (_png if rel.endswith(".png") else _jpeg)(image, folder / rel)
    _json(records, out / "mme_realworld" / "MME_RealWorld.json")
    _json([records[0], records[2], records[4]], out / "mme_realworld_lite" / "data" / "MME-RealWorld-Lite.json")


def _visualprobe(out: Path, rng: random.Random) -> None:
    levels = {"Easy": ((420, 300), (14, 20)), "Medium": ((520, 362), (9, 13)), "Hard": ((610, 410), (6, 9))}
    for level, (size, radius) in levels.items():
        folder = out / "visualprobe" / f"VisualProbe_{level}"
        rows = []
        for k in range(2):
            targets = _two_targets(rng)
            (shape, colour), (other, other_colour) = targets
            image, boxes = _search_scene(rng, *size, targets, radius)
            name = f"data/{level.lower()}_{k}.jpg"
            _jpeg(image, folder / name)
            problem, solution = f"<image>\nWhat is the color of the {shape}?", colour
            if level == "Medium" and k == 1:
                side = "left" if boxes[0][0] < boxes[1][0] else "right"
                problem, solution = f"<image>\nIs the {shape} to the left or to the right of the {other}?", side
            if level == "Hard" and k == 1:  # multiple choice inside the problem: Mini-o3's letter rule applies
                options = [other_colour, *_other_colours(rng, other_colour, 2)]
                rng.shuffle(options)
                listed = "\n".join(f"({'ABC'[i]}) {o}" for i, o in enumerate(options))
                problem = f"<image>\nWhat is the color of the {other}?\n{listed}\nAnswer with the option's letter."
                solution = "ABC"[options.index(other_colour)]
            # Image paths start at the folder above the levels, as Mini-o3's BASE_IMAGE_DIR; one is relative to
            # its level's folder instead, which the loader also accepts.
            path = name if (level, k) == ("Easy", 1) else f"VisualProbe_{level}/{name}"
            rows.append({"images": [path], "doc_id": str(k), "problem": problem, "solution": solution,
                         "data_source": f"visual_probe_{level.lower()}"})
        _json(rows, folder / "val.json")


def _robospatial(out: Path) -> None:
    root = out / "robospatial"
    red_box, blue_ball = Thing("box", "red", -1.2, 4.2), Thing("ball", "blue", 1.0, 3.4)
    big_box, small_ball = Thing("box", "green", 0.2, 5.6, 0.9), Thing("ball", "yellow", -0.5, 2.8, 0.35)
    pictures = {"images/img_configuration_0.png": _render([red_box, blue_ball, big_box], Camera()),
                "images/img_compatibility_0.png": _render([big_box, small_ball], Camera(yaw=0.1))}
    for rel, image in pictures.items():
        _png(image, root / rel)
    config, compat = pictures
    records = [
        ("configuration", config, "Is the red box to the left of the blue ball? Answer yes or no.", "Yes"),
        ("configuration", config, "Is the green box in front of the blue ball? Answer yes or no.", "no"),
        ("compatibility", compat, "Can the yellow ball fit inside the green box? Answer yes or no.", "yes"),
        ("compatibility", compat, "Can the green box be placed on top of the yellow ball and stay there? "
         "Answer yes or no.", "no"),
        ("context", config, "In the image, there is a blue ball. Pinpoint several points within the vacant space "
         "situated to the left of the blue ball.", "[(0.383, 0.873), (0.390, 0.990), (0.310, 0.940)]"),
    ]
    _json([{"category": c, "question": q, "answer": a, "img": img, "depth_image": None, "mask": None}
           for c, img, q, a in records], root / "annotations.json")


def _mini_phone(variant: int) -> Screen:
    s = Screen.new(360, 640, (248, 248, 250))
    s.rect((0, 0, 360, 56), (0, 122, 255))
    s.text(130, 16, ("Inbox", "Profile")[variant], 18, (255, 255, 255))
    s.icon(0, 8, "menu", 40, (255, 255, 255), instruction="open the navigation menu")  # touches the left edge
    for k, label in enumerate((("Alice", "Build status", "Lunch?"), ("Name", "Email", "Password"))[variant]):
        y = 80 + 72 * k
        s.rect((12, y, 348, y + 60), (255, 255, 255))
        s.text(28, y + 20, label, 16, instruction=f"open {label}" if k == 1 else None)
    s.button(110, 560, ("Compose", "Save changes")[variant], 16, (0, 122, 255),
             instruction=("write a new message", "save the profile")[variant])
    s.icon(320, 600, "settings", 40, (120, 120, 130), instruction="open the settings")  # touches the bottom edge
    return s


def _mini_web() -> Screen:
    s = Screen.new(800, 480, (255, 255, 255))
    s.rect((0, 0, 800, 48), (35, 47, 62))
    s.text(16, 14, "NewsNow", 18, (255, 255, 255))
    for k, label in enumerate(["World", "Sport", "Science"]):
        s.text(520 + 86 * k, 16, label, 15, (255, 255, 255), instruction=f"open the {label} section" if k else None)
    s.icon(470, 10, "search", 28, (255, 200, 60), annotate=True)
    for k in range(3):
        y = 80 + 120 * k
        s.rect((24, y, 776, y + 100), (244, 245, 248))
        s.text(40, y + 16, f"Headline number {k + 1}", 17, (30, 60, 140),
               instruction="read the second headline" if k == 1 else None)
    s.button(660, 430, "Subscribe", 15, (200, 40, 40), instruction="subscribe to the newsletter")
    return s


def _osatlas(out: Path) -> None:
    root = out / "osatlas"
    grounding = root / "web_grounding"
    rows = []
    for name, screen in (("web_0.png", _mini_web()), ("phone_0.png", _mini_phone(0))):
        _png(screen.image, grounding / "images" / name)
        for item in screen.items:
            x1, y1, x2, y2 = item["box"]  # type: ignore[misc]
            rows.append({"problem": f"<image>\nInstruction: {item['instruction']}",
                         "answer": f"({x1}, {y1}, {x2}, {y2})", "images": [f"web_grounding/images/{name}"]})
    (grounding / "vigorl_osatlas_train_RL.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-2]),
                                                            encoding="utf-8")
    (grounding / "vigorl_osatlas_val_RL.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[-2:]),
                                                          encoding="utf-8")
    # OS-Atlas's own release: boxes as fractions of the screenshot; the second screenshot groups its elements.
    raw = root / "mobile_domain"
    records: list[dict[str, object]] = []
    for n, screen in enumerate((_mini_phone(0), _mini_phone(1))):
        name = f"uibert_{n}.png"
        _png(screen.image, raw / name)
        width, height = screen.image.size
        elements = [{"instruction": item["instruction"], "data_type": item["type"],
                     "bbox": [round(v / (width, height)[i % 2], 4) for i, v in enumerate(item["box"])]}  # type: ignore
                    for item in screen.items]
        if n == 0:
            records += [{"img_filename": name, **element} for element in elements]
        else:
            records.append({"img_filename": name, "elements": elements})
    _json(records, raw / "uibert_raw.json")


# ---------------------------------------------------------------------------------------------------------------


SETS = ("vstar", "screenspot_v2", "screenspot_pro", "sat2", "blink", "hrbench", "mme_realworld", "mme_realworld_lite",
        "treebench", "visualprobe", "robospatial", "osatlas")


def main(out_dir: Path | str = HERE) -> None:
    """Write every sample set under ``out_dir`` (default: this folder). Same seed, same bytes.

    The set folders are removed first, so files from an older version of this script do not linger.
    """
    out = Path(out_dir)
    for name in SETS:
        shutil.rmtree(out / name, ignore_errors=True)
    disable_progress_bars()
    rng = random.Random(SEED)
    _vstar(out, random.Random(rng.getrandbits(64)))
    _screenspot_v2(out, random.Random(rng.getrandbits(64)))
    _screenspot_pro(out)
    _sat2(out)
    _blink(out)
    _hrbench(out, random.Random(rng.getrandbits(64)))
    _mme_realworld(out, random.Random(rng.getrandbits(64)))
    _treebench(out, random.Random(rng.getrandbits(64)))
    _visualprobe(out, random.Random(rng.getrandbits(64)))
    _robospatial(out)
    _osatlas(out)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else HERE)
