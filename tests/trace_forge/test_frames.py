import pytest
from hypothesis import given
from hypothesis import strategies as st

from trace_forge.grounding import Box, Frame, ImageGeometry, Point, Resize, smart_resize


def test_smart_resize_matches_known_sizes():
    # Worked example from the benchmark notes: a 4K screen under the processor's class-default max_pixels.
    assert smart_resize(2160, 3840, max_pixels=1_003_520) == (728, 1316)
    assert smart_resize(2160, 3840) == (2156, 3836)
    # Below min_pixels the image is scaled up to the grid.
    h, w = smart_resize(20, 30)
    assert h % 28 == 0 and w % 28 == 0 and h * w >= 56 * 56


def test_smart_resize_rejects_bad_sizes():
    with pytest.raises(ValueError):
        smart_resize(0, 10)
    with pytest.raises(ValueError):
        smart_resize(1, 500)


def test_smart_resize_agrees_with_transformers():
    tf = pytest.importorskip("transformers.models.qwen2_vl.image_processing_qwen2_vl")
    for h, w in [(48, 64), (1500, 1690), (2160, 3840), (777, 1333), (30, 4000)]:
        for mx in (1_003_520, 12_845_056, 2_850_000):
            assert smart_resize(h, w, max_pixels=mx) == tf.smart_resize(h, w, 28, 3136, mx)


sizes = st.integers(min_value=16, max_value=5000)


@given(sizes, sizes, st.floats(0, 1), st.floats(0, 1))
def test_round_trip_pixel_model_pixel_within_one_pixel(w, h, fx, fy):
    if max(w, h) / min(w, h) > 200:
        return
    g = Resize().geometry(w, h)
    p = Point(fx * (w - 1), fy * (h - 1), Frame.PIXEL)
    q = p.to(Frame.MODEL, g).to(Frame.PIXEL, g)
    assert abs(q.x - p.x) < 1e-6 and abs(q.y - p.y) < 1e-6
    # Even after rounding to the integers written in text, the model frame is at least as fine as the original
    # whenever the image was not shrunk, so the round trip stays within one pixel.
    if g.model_width >= w and g.model_height >= h:
        mx, my = p.to(Frame.MODEL, g).rounded()
        back = Point(mx, my, Frame.MODEL).to(Frame.PIXEL, g)
        assert abs(back.x - p.x) <= 1 and abs(back.y - p.y) <= 1


def test_norm1000_maps_corners_and_centre():
    g = ImageGeometry(width=2000, height=1000, model_width=1988, model_height=1008)
    c = Point(999.5, 499.5).to("norm1000", g)
    assert c.x == pytest.approx(499.5) and c.y == pytest.approx(499.5)
    assert g.contains(1000, 1000, "norm1000") and not g.contains(1000.5, 0, "norm1000")
    assert g.contains(1999, 999, "pixel") and not g.contains(2000, 0, "pixel")


def test_box_border_is_inside_and_frames_must_match():
    b = Box.from_xywh(10, 20, 30, 40)
    assert b.contains(Point(10, 20)) and b.contains(Point(40, 60)) and not b.contains(Point(40.01, 60))
    with pytest.raises(ValueError):
        b.contains(Point(10, 20, Frame.MODEL))
