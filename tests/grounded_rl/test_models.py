"""Families, resize bounds and the frame test: a converted point lands on the dot in the image the model sees."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from PIL import Image, ImageDraw

from grounded_rl.models import Family, family_of, geometry_for, to_model_frame
from trace_forge.grounding import Frame, ImageGeometry, Point, Resize, Step, Trajectory, format_point

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(scope="module")
def processors(tiny_model_dir):
    from transformers import AutoProcessor

    return {f: AutoProcessor.from_pretrained(tiny_model_dir(f)) for f in FAMILIES}


# ---------------------------------------------------------------------------------------------------------------
# Families
# ---------------------------------------------------------------------------------------------------------------


def test_family_frames():
    assert Family("qwen2_5_vl").frame is Frame.MODEL
    assert Family("qwen3_vl").frame is Frame.NORM1000


@pytest.mark.parametrize("family", FAMILIES)
def test_family_of_path_config_and_model(family, tiny_model_dir):
    from transformers import AutoConfig

    path = tiny_model_dir(family)
    assert family_of(path) is Family(family)
    assert family_of(str(path)) is Family(family)
    config = AutoConfig.from_pretrained(path)
    assert family_of(config) is Family(family)
    # Anything with a .config, like a model.
    assert family_of(SimpleNamespace(config=config)) is Family(family)


def test_family_of_rejects_unknown(tmp_path):
    with pytest.raises(ValueError, match="unsupported model_type 'llava'"):
        family_of(SimpleNamespace(model_type="llava"))
    with pytest.raises(FileNotFoundError):
        family_of(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Resize bounds read from processors
# ---------------------------------------------------------------------------------------------------------------


def test_resize_of_tiny_processors(processors):
    assert Resize.of_processor(processors["qwen2_5_vl"]) == Resize(
        min_pixels=4 * 28**2, max_pixels=256 * 28**2, factor=28
    )
    assert Resize.of_processor(processors["qwen3_vl"]) == Resize(
        min_pixels=4 * 32**2, max_pixels=256 * 32**2, factor=32
    )
    # The image processor alone works too.
    assert Resize.of_processor(processors["qwen3_vl"].image_processor) == Resize.of_processor(processors["qwen3_vl"])


def test_resize_of_legacy_attributes_and_errors():
    legacy = SimpleNamespace(size=None, min_pixels=3136, max_pixels=1_003_520, patch_size=14, merge_size=2)
    assert Resize.of_processor(legacy) == Resize(3136, 1_003_520, 28)
    with pytest.raises(ValueError, match="a Qwen-VL-style processor is needed"):
        Resize.of_processor(SimpleNamespace(size={"height": 224, "width": 224}, patch_size=14))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("size", [(517, 389), (1500, 1000), (40, 30), (28, 600), (2000, 41)])
def test_geometry_matches_processor_grid(family, size, processors):
    """Our model-frame size equals the processor's patch grid, for small, large and elongated images."""
    processor = processors[family]
    out = processor.image_processor(images=[Image.new("RGB", size, "white")], return_tensors="pt")
    _, grid_h, grid_w = out["image_grid_thw"][0].tolist()
    patch = processor.image_processor.patch_size
    g = geometry_for(processor, *size)
    assert (g.model_width, g.model_height) == (grid_w * patch, grid_h * patch)


# ---------------------------------------------------------------------------------------------------------------
# The frame test
# ---------------------------------------------------------------------------------------------------------------


def _resized_image(pixel_values, grid_thw, image_processor):
    """Rebuild the resized RGB image (3, H, W) in [0, 1] that the processor cut into ``pixel_values`` patches.

    Inverts the processor's patchify: rows of pixel_values are patches in merge-block order
    (block_row, block_col, row_in_block, col_in_block), each flattened as (C, T, patch, patch).
    """
    import torch

    _, gh, gw = grid_thw.tolist()
    p, m, t = image_processor.patch_size, image_processor.merge_size, image_processor.temporal_patch_size
    x = pixel_values.reshape(gh // m, gw // m, m, m, 3, t, p, p)[:, :, :, :, :, 0]  # one temporal copy
    x = x.permute(4, 0, 2, 5, 1, 3, 6).reshape(3, gh * p, gw * p)  # (C, bh, mh, ph, bw, mw, pw) -> (C, H, W)
    mean = torch.tensor(image_processor.image_mean).view(3, 1, 1)
    std = torch.tensor(image_processor.image_std).view(3, 1, 1)
    return x * std + mean


def _red_centroid(rgb):
    """Centroid (x, y) of red pixels, weighted by redness; pixel (i, j) has its centre at (i, j)."""
    import torch

    redness = (rgb[0] - (rgb[1] + rgb[2]) / 2).clamp(min=0)
    redness = torch.where(redness > 0.1, redness, torch.zeros_like(redness))  # drop faint resampling ringing
    ys, xs = torch.meshgrid(torch.arange(rgb.shape[1]), torch.arange(rgb.shape[2]), indexing="ij")
    total = redness.sum()
    return float((redness * xs).sum() / total), float((redness * ys).sum() / total)


def _dot_image(size, point, radius):
    image = Image.new("RGB", size, (255, 255, 255))
    x, y = point
    ImageDraw.Draw(image).ellipse([x - radius, y - radius, x + radius, y + radius], fill=(255, 0, 0))
    return image


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("size", "pixel", "radius"),
    [
        ((517, 389), (403, 97), 4),  # not a multiple of 28/32: resized slightly (to 504 x 392 for Qwen2.5-VL)
        ((517, 389), (460, 340), 4),
        ((1500, 1000), (1111, 222), 10),  # above max_pixels: shrunk about 2.7x
        ((1500, 1000), (301, 777), 10),
    ],
)
def test_model_frame_point_lands_on_the_dot(family, size, pixel, radius, processors):
    processor = processors[family]
    image = _dot_image(size, pixel, radius)
    point = to_model_frame(Point(*pixel), *size, processor, family)
    assert point.frame is Family(family).frame

    # Run the real processor (text + image, as in training) and rebuild the image it feeds the vision tower.
    out = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image], return_tensors="pt")
    rgb = _resized_image(out["pixel_values"], out["image_grid_thw"][0], processor.image_processor)
    height, width = rgb.shape[1:]
    assert (width, height) == geometry_for(processor, *size).size(Frame.MODEL)
    dot_x, dot_y = _red_centroid(rgb)

    # Where our point says the dot is, in pixels of the image the model saw (norm1000 is read against that image).
    if point.frame is Frame.NORM1000:
        seen = ImageGeometry(*size, width, height).convert(point.x, point.y, Frame.NORM1000, Frame.MODEL)
    else:
        seen = (point.x, point.y)
    # Measured error is under 0.07 px; 0.2 px also catches a half-pixel (corner vs centre) convention slip.
    assert abs(seen[0] - dot_x) < 0.2 and abs(seen[1] - dot_y) < 0.2, (seen, (dot_x, dot_y))
    # The check has teeth: the unconverted pixel coordinates miss the dot.
    assert max(abs(pixel[0] - dot_x), abs(pixel[1] - dot_y)) > 2


def test_to_model_frame_converts_a_trajectory(processors):
    traj = Trajectory((Step("the mug (403, 97)", Point(403, 97)),), answer=Point(460, 340))
    for family in FAMILIES:
        converted = to_model_frame(traj, 517, 389, processors[family], family)
        geometry = geometry_for(processors[family], 517, 389)
        assert converted.steps[0].point == Point(403, 97).to(Family(family).frame, geometry)
        assert converted.answer == Point(460, 340).to(Family(family).frame, geometry)
        # The step's text names the converted point, as the model must read and write it.
        assert converted.steps[0].text == f"the mug {format_point(converted.steps[0].point)}"
