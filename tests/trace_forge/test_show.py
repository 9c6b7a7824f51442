"""Drawing traces: marker colours at the scaled points, the text panel, crops; run dirs and dataset rows."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.trace_forge.fixtures_trees import (
    add_rollout,
    example_tree,
    make_record,
    rollout,
    vstar_samples,
    write_generic_run,
    write_run,
)
from trace_forge.cli import app
from trace_forge.dataset import linearize_run
from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import Box, Frame, Point, Step
from trace_forge.search.tree import Tree
from trace_forge.show import (
    ANSWER_COLOUR,
    BOX_COLOUR,
    PALETTE,
    PANEL_WIDTH,
    best_trajectory,
    dataset_views,
    render_trace,
    run_views,
    tree_trajectories,
)

runner = CliRunner()
GREY = (128, 128, 128)


def _steps(*xys):
    return [Step(f"Step at ({x}, {y}).", Point(x, y)) for x, y in xys]


def _has_colour(image, colour, region):
    pixels = np.asarray(image.crop(region).convert("RGB")).reshape(-1, 3)
    return bool((pixels == colour).all(axis=1).any())


def test_markers_sit_at_the_scaled_points_in_their_colours():
    image = Image.new("RGB", (1600, 1200), GREY)
    points = [(100, 100), (800, 600), (1500, 1100)]
    out = render_trace(image, _steps(*points), "red", max_side=800)
    assert out.width == 800 + PANEL_WIDTH and out.height >= 600
    for i, (x, y) in enumerate(points):
        assert out.getpixel((x // 2, y // 2)) == PALETTE[i]
    # The image half away from the markers keeps its pixels.
    assert out.getpixel((400, 100)) == GREY


def test_text_panel_lists_steps_and_grows_with_long_text():
    image = Image.new("RGB", (400, 300), GREY)
    short = render_trace(image, _steps((10, 10)), "red")
    long_text = [Step("word " * 400 + "(10, 10)", Point(10, 10))]
    long = render_trace(image, long_text, "red")
    panel = short.crop((400, 0, short.width, short.height))
    ink = int((np.asarray(panel).max(axis=2) < 100).sum())
    assert ink > 200  # text was drawn
    assert _has_colour(panel, PALETTE[0], (0, 0, panel.width, panel.height))  # the step number in its colour
    assert long.height > 300 and long.height > short.height  # wrapped, not cut off at the image height


def test_small_images_are_not_upscaled_and_large_ones_fit_max_side():
    small = render_trace(Image.new("RGB", (200, 100), GREY), _steps((5, 5)), "a")
    assert small.width == 200 + PANEL_WIDTH
    big = render_trace(Image.new("RGB", (4000, 1000), GREY), _steps((5, 5)), "a", max_side=1000)
    assert big.width == 1000 + PANEL_WIDTH


def test_point_answer_ring_target_boxes_and_crop_strip():
    image = Image.new("RGB", (600, 400), GREY)
    crop_colour = (12, 34, 56)
    crops = [Image.new("RGB", (672, 672), crop_colour), Image.new("RGB", (384, 384), crop_colour)]
    out = render_trace(
        image,
        _steps((50, 50), (60, 300)),
        "(400, 200)",
        crops,
        title="t",
        answer_point=Point(400, 200),
        target_boxes=[Box(380, 180, 420, 220)],
    )
    assert out.height > 400  # the crop strip is below
    assert _has_colour(out, ANSWER_COLOUR, (370, 170, 430, 230))
    assert _has_colour(out, BOX_COLOUR, (370, 170, 430, 230))
    strip = (0, 400, out.width, out.height)
    assert _has_colour(out, crop_colour, strip)
    assert _has_colour(out, PALETTE[0], strip) and _has_colour(
        out, PALETTE[1], strip
    )  # tags "zoom 1", "zoom 2"
    assert not _has_colour(out, crop_colour, (0, 0, out.width, 400))


def test_points_in_another_frame_are_refused():
    with pytest.raises(ValueError, match="pixel"):
        render_trace(Image.new("RGB", (10, 10)), [Step("x (1, 1)", Point(1, 1, Frame.NORM1000))], "a")


def test_tree_trajectories_and_best_is_the_most_informative_correct_one():
    tree = example_tree()
    trajectories = tree_trajectories(tree)
    assert len(trajectories) == 7  # 6 rollouts + 1 terminal
    assert sum(t.correct for t in trajectories) == 3
    best = best_trajectory(tree)
    # A.r0 and B.r0 both look at 3 places, the terminal T at 2: the tie goes to B (value 2/3 over A's 1/2).
    assert (best.node, best.rollout, best.answer) == (2, 0, "white")
    assert [s.point.rounded() for s in best.steps] == [(100, 100), (200, 200), (250, 260)]
    assert best_trajectory(Tree()) is None


def test_a_correct_zero_step_answer_is_not_what_is_shown():
    tree = Tree()
    tree.add_child(tree.root, answer="white", reward=1.0)  # right at once: shows nothing of the method
    a = tree.add_child(tree.root, step=Step("The ring (100, 100).", Point(100, 100)))
    tree.add_child(a, answer="white", reward=1.0)
    assert [s.point.rounded() for s in best_trajectory(tree).steps] == [(100, 100)]


def test_the_panel_shows_the_question_and_why_there_is_no_answer():
    image = Image.new("RGB", (300, 200), GREY)
    bare = render_trace(image, _steps((10, 10)), "")
    told = render_trace(image, _steps((10, 10)), "", question="What colour is the ring?  (A) red  (B) white",
                        note="The teacher gave no <answer> before the rollout ended; its last text was judged.")
    ink = lambda picture: int((np.asarray(picture.crop((300, 0, picture.width, picture.height))).max(axis=2) < 160).sum())  # noqa: E731
    assert ink(told) > ink(bare) + 500  # two more passages of text


def test_an_unanswered_rollout_carries_its_reason():
    tree = example_tree()
    add_rollout(tree, 1, rollout([(600, 600)], "I keep looking", 0.0, answered=False))
    (last,) = [t for t in tree_trajectories(tree) if t.answer == "I keep looking"]
    assert "no <answer>" in last.note


def _run(tmp_path, questions=1):
    samples = list(vstar_samples().values())[:questions]
    return write_run(tmp_path / "run", [make_record(example_tree(), s) for s in samples]), samples[0]


def _dataset(tmp_path, mode):
    """A linearized dataset of two questions: with val_fraction 0.5, one in train and one in validation."""
    run_dir, _ = _run(tmp_path, questions=2)
    linearize_run(run_dir, tmp_path / "ds", mode, val_fraction=0.5)
    return tmp_path / "ds"


def test_run_views_best_and_all_correct(tmp_path):
    run_dir, sample = _run(tmp_path)
    (best,) = run_views(run_dir, 0)
    assert best.image.size == sample.canvas().size
    assert "correct" in best.title and sample.id in best.title
    assert best.question.startswith(sample.question) and "(A) " in best.question
    assert len(best.crops) == len(best.steps) == 3  # crops by default
    views = run_views(run_dir, 0, all_correct=True, zoom_crops=True)
    assert len(views) == 3
    assert all(len(v.crops) == len(v.steps) for v in views)


def test_run_views_of_a_generic_run_use_its_task_options(tmp_path):
    run_dir, sample = write_generic_run(tmp_path / "run", tmp_path / "data")
    (best,) = run_views(run_dir, 0, zoom_crops=True)
    assert best.image.size == sample.canvas().size and "g1" in best.title and len(best.crops) == 3


def test_run_views_reject_a_canvas_of_another_size(tmp_path):
    sample = next(iter(vstar_samples().values()))
    run_dir = write_run(tmp_path / "run", [make_record(example_tree(), sample, image_size=(10, 10))])
    with pytest.raises(DataError, match="10x10"):
        run_views(run_dir, 0)


def test_cli_show_run_writes_pngs_with_markers(tmp_path):
    run_dir, sample = _run(tmp_path)
    out = tmp_path / "trace.png"
    result = runner.invoke(app, ["show", str(run_dir), "--index", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    image = Image.open(out)
    w, h = sample.canvas().size
    scale = 1024 / max(w, h)
    assert image.width == round(w * scale) + PANEL_WIDTH
    assert image.getpixel((round(100 * scale), round(100 * scale))) == PALETTE[0]
    assert image.getpixel((round(200 * scale), round(200 * scale))) == PALETTE[1]
    assert image.getpixel((round(250 * scale), round(260 * scale))) == PALETTE[2]
    assert image.height > round(h * scale)  # the zoom crops below, by default

    result = runner.invoke(app, ["show", str(run_dir), "--all-correct", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("trace-*.png")) == [
        "trace-1.png",
        "trace-2.png",
        "trace-3.png",
    ]


def test_cli_show_bad_index_is_a_usage_error(tmp_path):
    run_dir, _ = _run(tmp_path)
    result = runner.invoke(app, ["show", str(run_dir), "--index", "5", "--out", str(tmp_path / "x.png")])
    assert isinstance(result.exception, ConfigError) and "out of range" in str(result.exception)
    assert not (tmp_path / "x.png").exists()


def test_dataset_row_multi_turn_shows_its_crops(tmp_path):
    ds = _dataset(tmp_path, "multi")
    (view,) = dataset_views(ds, 0, "train")
    sample = vstar_samples()[view.title.split(" · ")[1]]
    assert view.image.size == sample.canvas().size
    assert view.crops and all(c.size == (672, 672) for c in view.crops)
    assert "multi" in view.title
    out = tmp_path / "row.png"
    result = runner.invoke(app, ["show", str(ds), "--index", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    image = Image.open(out)
    scale = 1024 / max(sample.canvas().size)
    assert image.height > round(sample.canvas().height * scale)  # crop strip below
    x, y = view.steps[0].point.x, view.steps[0].point.y
    assert image.getpixel((round(x * scale), round(y * scale))) == PALETTE[0]


def test_dataset_unknown_split_is_a_data_error(tmp_path):
    ds = _dataset(tmp_path, "single")
    assert dataset_views(ds, 0, "validation")[0].crops == []  # single-turn: no crops
    with pytest.raises(DataError, match="no split 'test'"):
        dataset_views(ds, 0, "test")
