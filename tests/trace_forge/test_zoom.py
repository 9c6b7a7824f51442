import dataclasses
import importlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from trace_forge.grounding import GUI_ZOOM, VISUAL_SEARCH_ZOOM, CropBox, ZoomSpec, zoom

# The package re-exports the function ``zoom``, which shadows the submodule of the same name.
zoom_module = importlib.import_module("trace_forge.grounding.zoom")
MARKER = (255, 0, 0)


def _textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """A non-black image with no red, so a red marker is the only red thing in it."""
    rng = np.random.default_rng(seed)
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[..., 1] = rng.integers(60, 200, size=(height, width))
    arr[..., 2] = rng.integers(60, 200, size=(height, width))
    return Image.fromarray(arr)


def _with_marker(width: int, height: int, mx: int, my: int) -> Image.Image:
    image = _textured(width, height)
    image.putpixel((mx, my), MARKER)
    return image


def _find_marker(crop: Image.Image) -> tuple[float, float]:
    """Red-weighted centroid of the marker blob in a (resampled) crop."""
    red = np.asarray(crop, dtype=np.float64)[..., 0]
    weights = np.where(red > 0.5 * red.max(), red, 0.0)
    assert weights.sum() > 0, "marker not found in the crop"
    ys, xs = np.indices(red.shape)
    return float((xs * weights).sum() / weights.sum()), float((ys * weights).sum() / weights.sum())


@settings(max_examples=200)
@given(
    width=st.integers(1, 3000),
    height=st.integers(1, 3000),
    crop=st.integers(1, 800),
    out=st.integers(1, 800),
    u=st.floats(-0.2, 1.2),
    v=st.floats(-0.2, 1.2),
    cx=st.floats(-50, 900),
    cy=st.floats(-50, 900),
)
def test_maps_are_exact_inverses(width, height, crop, out, u, v, cx, cy):
    # A tiny stand-in image keeps this fast: only the geometry is under test, and it depends on the size alone.
    image = Image.new("L", (width, height), 128)
    z = zoom(image, u * width, v * height, ZoomSpec(crop=crop, out=max(out, 1)))
    x, y = z.to_image(cx, cy)
    assert z.to_crop(x, y) == pytest.approx((cx, cy), abs=1e-6)
    bx, by = z.to_crop(cx, cy)
    assert z.to_image(bx, by) == pytest.approx((cx, cy), abs=1e-6)
    # The clamped centre lies on the image and inside the crop box.
    assert 0 <= z.center[0] <= width - 1 and 0 <= z.center[1] <= height - 1
    assert z.box.left - 0.5 <= z.center[0] <= z.box.left + z.box.side - 0.5
    assert z.box.top - 0.5 <= z.center[1] <= z.box.top + z.box.side - 0.5


W, H = 900, 700


@pytest.mark.parametrize("spec", [VISUAL_SEARCH_ZOOM, GUI_ZOOM, ZoomSpec(crop=300, out=300), ZoomSpec(200, 128)])
@pytest.mark.parametrize(
    "marker",
    [
        (450, 350),  # interior
        (3, 350), (W - 2, 350), (450, 0), (450, H - 1),  # left, right, top, bottom borders
        (0, 0), (W - 1, 0), (0, H - 1), (W - 1, H - 1),  # corners
    ],
)
def test_point_picked_in_crop_maps_back(spec, marker):
    mx, my = marker
    image = _with_marker(W, H, mx, my)
    # Ask for a point off the marker by 30% of the crop, towards the interior, so the marker is not at the crop
    # centre; the dot is left out here because it is red like the marker.
    ask = (mx + (0.3 if mx < W / 2 else -0.3) * spec.crop, my + (0.3 if my < H / 2 else -0.3) * spec.crop)
    z = zoom(image, *ask, dataclasses.replace(spec, dot=False))
    assert z.image.mode == "RGB" and z.image.size == (spec.out, spec.out)
    x, y = z.to_image(*_find_marker(z.image))
    assert abs(x - mx) <= 1 and abs(y - my) <= 1


@pytest.mark.parametrize("spec", [VISUAL_SEARCH_ZOOM, ZoomSpec(crop=100, out=384), ZoomSpec(crop=100, out=400)])
@pytest.mark.parametrize("marker", [(450, 350), (437, 311), (460, 341)])
def test_interior_pick_is_subpixel_exact(spec, marker):
    # Upscaled, a one-pixel marker is a symmetric blob, so its centroid pins the map far below 1 px; an
    # off-by-half-pixel convention (e.g. left + cx * side / out) would be ~0.4 px off at these scales.
    image = _with_marker(W, H, *marker)
    z = zoom(image, marker[0] + 0.2 * spec.crop, marker[1] - 0.13 * spec.crop, spec)
    x, y = z.to_image(*_find_marker(z.image))
    assert abs(x - marker[0]) <= 0.15 and abs(y - marker[1]) <= 0.15


def test_point_past_the_border_gives_the_border_view():
    image = _with_marker(W, H, W - 1, 0)
    z = zoom(image, W + 500, -80, ZoomSpec(crop=100, out=384))
    x, y = z.to_image(*_find_marker(z.image))
    assert abs(x - (W - 1)) <= 1 and abs(y - 0) <= 1


@pytest.mark.parametrize("marker", [(30, 20), (0, 0), (59, 39), (59, 0), (0, 39)])
def test_image_smaller_than_crop_is_centred_on_black(marker):
    image = _with_marker(60, 40, *marker)
    z = zoom(image, 10, 35, ZoomSpec(crop=100, out=250))
    assert z.box == CropBox(-20.0, -30.0, 100.0)
    x, y = z.to_image(*_find_marker(z.image))
    assert abs(x - marker[0]) <= 1 and abs(y - marker[1]) <= 1
    pixels = np.asarray(z.image)
    assert pixels[:20, :20].max() == 0 and pixels[-20:, -20:].max() == 0  # padding is black
    assert pixels[125, 125].max() > 0  # the image itself is in the middle


def test_one_axis_padded_other_shifted():
    image = _textured(60, 500)
    z = zoom(image, 59, 499, ZoomSpec(crop=100, out=100))
    assert z.box == CropBox(-20.0, 400.0, 100.0)
    pixels = np.asarray(z.image)
    assert pixels[:, :20].max() == 0 and pixels[:, 80:].max() == 0
    assert np.array_equal(pixels[:, 20:80], np.asarray(image)[400:500])


@pytest.mark.parametrize("spec", [VISUAL_SEARCH_ZOOM, GUI_ZOOM])
@pytest.mark.parametrize("ask", [(0, 0), (-50, 40), (2000, 1e6), (1199, 0), (600, 399), (5, 799)])
def test_shifted_crop_never_padded_on_large_image(spec, ask):
    image = _textured(1200, 800)
    z = zoom(image, *ask, spec)
    assert 0 <= z.box.left and z.box.left + z.box.side <= 1200
    assert 0 <= z.box.top and z.box.top + z.box.side <= 800
    pixels = np.asarray(z.image)
    for corner in (pixels[0, 0], pixels[0, -1], pixels[-1, 0], pixels[-1, -1]):
        assert corner.max() > 0


def test_out_of_image_point_is_clamped():
    z = zoom(_textured(400, 300), -10, 1000, ZoomSpec(crop=100, out=100))
    assert z.center == (0.0, 299.0)
    assert z.box == CropBox(0.0, 200.0, 100.0)


def test_crop_is_the_exact_region_without_resize():
    image = _textured(400, 300)
    z = zoom(image, 200, 150, ZoomSpec(crop=64, out=64))
    left, top = int(z.box.left), int(z.box.top)
    assert np.array_equal(np.asarray(z.image), np.asarray(image)[top : top + 64, left : left + 64])
    assert z.to_image(0, 0) == (left, top)


def test_dot_drawn_only_when_asked():
    image = _textured(800, 600)
    plain = zoom(image, 300, 200, ZoomSpec(crop=100, out=384, dot=False))
    dotted = zoom(image, 300, 200, ZoomSpec(crop=100, out=384, dot=True))
    assert np.asarray(plain.image)[..., 0].max() < 255  # the textured image has no red at all
    cx, cy = (round(c) for c in dotted.to_crop(300, 200))
    d = np.asarray(dotted.image)
    assert tuple(d[cy, cx]) == (255, 0, 0)
    assert (d == 255).all(axis=2).any()  # white outline
    changed = np.argwhere((np.asarray(plain.image) != d).any(axis=2))
    radius = max(3, round(0.01 * 384))
    assert np.abs(changed - [cy, cx]).max() <= radius + 1


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_any_mode_gives_rgb(mode):
    image = _textured(300, 200).convert(mode)
    z = zoom(image, 150, 100, GUI_ZOOM)
    assert z.image.mode == "RGB" and z.image.size == (384, 384)


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (200, 200), (10, 20, 30, 0))
    z = zoom(image, 100, 100, ZoomSpec(crop=50, out=50))
    assert (np.asarray(z.image) == 255).all()


def test_presets_output_sizes():
    image = _textured(1000, 900)
    assert zoom(image, 500, 450).image.size == (672, 672)  # default spec is the V* preset
    assert zoom(image, 500, 450, VISUAL_SEARCH_ZOOM).box.side == 364
    assert zoom(image, 500, 450, GUI_ZOOM).image.size == (384, 384)
    assert zoom(image, 500, 450, GUI_ZOOM).box.side == 100


def test_crop_box_round_trip():
    box = CropBox(-20.0, 15.0, 364.0)
    assert CropBox.from_dict(box.to_dict()) == box
    assert CropBox.from_dict({"left": 1, "top": 2, "side": 3}) == CropBox(1.0, 2.0, 3.0)


def test_invalid_inputs():
    with pytest.raises(ValueError):
        ZoomSpec(crop=0)
    with pytest.raises(ValueError):
        ZoomSpec(out=-1)
    with pytest.raises(ValueError):
        zoom(_textured(10, 10), float("nan"), 3)
