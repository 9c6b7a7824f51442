"""Grounding precision on hand-built trees with known boxes: the one on-target test, per-step flags of a record,
`stats` (tables and JSON), `show`'s markers, and `linearize --min-grounding`."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.trace_forge.fixtures_grounding import (
    RING,
    grounding_records,
    ring_tree,
    write_grounding_run,
)
from tests.trace_forge.fixtures_trees import write_run
from trace_forge.cli import app
from trace_forge.dataset import linearize_run, load_traces
from trace_forge.errors import ConfigError
from trace_forge.grounding import Box, Frame, Point, Step
from trace_forge.linearize import LinearizeConfig, linearize
from trace_forge.show import OFF_TARGET_COLOUR, ON_TARGET_COLOUR, render_trace, run_views
from trace_forge.stats import records_stats, run_stats
from trace_forge.tasks import on_target, on_target_share

runner = CliRunner()
RING_BOX = [Box(771, 613, 802, 644)]


# --- the one on-target test ----------------------------------------------------------------------------------------


def test_on_target_counts_the_border_and_grows_boxes_by_the_margin():
    boxes = [Box(10, 20, 30, 40), Box(100, 100, 110, 110)]
    assert on_target(Point(10, 20), boxes) and on_target(Point(30, 40), boxes) and on_target(Point(105, 105), boxes)
    assert not on_target(Point(30.5, 40), boxes)
    assert not on_target(Point(33, 17), boxes) and on_target(Point(33, 17), boxes, margin=3)
    assert not on_target(Point(33.01, 17), boxes, margin=3)
    assert on_target_share([Point(15, 25), Point(50, 50), Point(105, 100), Point(0, 0)], boxes) == 0.5
    assert on_target_share([], boxes) is None and on_target_share([Point(15, 25)], []) is None


def test_on_target_refuses_what_it_cannot_judge():
    with pytest.raises(ValueError, match="at least one target box"):
        on_target(Point(1, 1), [])
    with pytest.raises(ValueError, match="margin"):
        on_target(Point(1, 1), RING_BOX, margin=-1)
    with pytest.raises(ValueError, match="frame"):
        on_target(Point(1, 1, Frame.MODEL), RING_BOX)


# --- per-step flags of a record ------------------------------------------------------------------------------------


def test_every_step_of_the_tree_is_flagged_from_the_record():
    ring, star, unboxed = grounding_records()
    flags = ring.step_grounding()
    assert flags.nodes == {1: True, 2: False, 3: False}  # A, C (3 px out), B
    assert flags.rollouts == {(0, 0): (True,), (1, 0): (True, False), (1, 1): (False,), (3, 0): (), (2, 0): (False,),
                              (2, 1): (False,)}
    assert ring.step_grounding(margin=3).nodes[2] is True
    assert star.step_grounding().nodes == {1: True} and star.step_grounding().rollouts == {(1, 0): (True,)}
    assert unboxed.step_grounding() is None


# --- stats ---------------------------------------------------------------------------------------------------------


def test_stats_count_all_steps_and_the_steps_of_correct_trajectories():
    s = records_stats(grounding_records())
    g = s.grounding
    assert g.questions == 2  # the unboxed question counts nowhere
    assert (g.all_steps.on_target, g.all_steps.steps) == (5, 11)
    assert (g.correct_steps.on_target, g.correct_steps.steps) == (4, 6)
    assert g.correct_steps.precision == pytest.approx(4 / 6)
    assert {name: (c.questions, c.all_steps.on_target, c.all_steps.steps, c.correct_steps.on_target,
                   c.correct_steps.steps) for name, c in s.grounding_categories.items()} == {
        "direct_attributes": (1, 3, 9, 2, 4), "relative_position": (1, 2, 2, 2, 2)}
    wider = records_stats(grounding_records(), grounding_margin=3).grounding
    assert (wider.all_steps.on_target, wider.correct_steps.on_target) == (6, 4)  # C is on no correct trajectory


def test_stats_json_has_a_grounding_precision_object(tmp_path):
    run = write_grounding_run(tmp_path / "run")
    result = runner.invoke(app, ["stats", str(run), "--json", "--grounding-margin", "3"])
    assert result.exit_code == 0, result.output
    g = json.loads(result.output)["grounding_precision"]
    assert g["margin_px"] == 3 and g["questions"] == 2
    assert g["all_steps"] == {"on_target": 6, "steps": 11, "precision": 6 / 11}
    assert g["correct_steps"] == {"on_target": 4, "steps": 6, "precision": 4 / 6}
    assert g["categories"]["direct_attributes"]["all_steps"] == {"on_target": 4, "steps": 9, "precision": 4 / 9}
    assert "unboxed" not in g["categories"]
    assert json.loads(result.output)["questions"] == 3


def test_stats_table_reports_grounding_and_says_when_it_does_not_apply(tmp_path):
    run = write_grounding_run(tmp_path / "run")
    result = runner.invoke(app, ["stats", str(run)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "grounding precision" in result.output and "5/11 (45.5%)" in result.output
    assert "4/6 (66.7%)" in result.output and "3/9 (33.3%)" in result.output

    records = grounding_records(with_unboxed=False)
    for record in records:
        record.question.target_boxes = []
    boxless = write_run(tmp_path / "boxless", records)
    assert run_stats(boxless).grounding.questions == 0
    assert run_stats(boxless).to_dict()["grounding_precision"]["all_steps"]["precision"] is None
    result = runner.invoke(app, ["stats", str(boxless)], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "not applicable (no question has target boxes)" in result.output


# --- show ----------------------------------------------------------------------------------------------------------


def _colour_near(image, x, y, colour, reach=20):
    pixels = np.asarray(image.crop((x - reach, y - reach, x + reach, y + reach)).convert("RGB")).reshape(-1, 3)
    return bool((pixels == colour).all(axis=1).any())


def test_show_rings_on_and_off_target_points_differently():
    image = Image.new("RGB", (900, 600), (128, 128, 128))
    steps = [Step("On the box (100, 100).", Point(100, 100)), Step("Far away (600, 400).", Point(600, 400))]
    out = render_trace(image, steps, "red", target_boxes=[Box(90, 90, 110, 110)], on_target=[True, False])
    assert _colour_near(out, 100, 100, ON_TARGET_COLOUR) and not _colour_near(out, 100, 100, OFF_TARGET_COLOUR)
    assert _colour_near(out, 600, 400, OFF_TARGET_COLOUR) and not _colour_near(out, 600, 400, ON_TARGET_COLOUR)
    plain = render_trace(image, steps, "red")
    assert not _colour_near(plain, 600, 400, OFF_TARGET_COLOUR) and not _colour_near(plain, 100, 100, ON_TARGET_COLOUR)
    with pytest.raises(ValueError, match="2 steps"):
        render_trace(image, steps, "red", on_target=[True])


def test_run_views_flag_each_step_and_title_the_share(tmp_path):
    run = write_grounding_run(tmp_path / "run")
    views = run_views(run, 0, all_correct=True)
    assert [v.on_target for v in views] == [[True, True, False], [True, False]]  # A.r0, then T
    assert views[0].title.endswith("on target 2/3")
    assert run_views(run, 2, all_correct=True)[0].on_target is None  # the unboxed question
    result = runner.invoke(app, ["show", str(run), "--index", "0", "--all-correct", "--out", str(tmp_path / "t.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "t-1.png").exists() and (tmp_path / "t-2.png").exists()


# --- linearize --min-grounding -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("min_grounding", "kinds"), [
    (None, ["direct", "direct", "backtracking"]),
    (0.5, ["direct", "direct", "backtracking"]),
    (0.6, ["direct"]),
    (0.7, []),
])
def test_min_grounding_keeps_chains_whose_share_of_on_target_steps_reaches_it(min_grounding, kinds):
    chains = linearize(ring_tree(), RING, LinearizeConfig(min_grounding=min_grounding), RING_BOX)
    assert [c.kind for c in chains] == kinds
    if min_grounding == 0.6:
        assert [s.point.rounded() for s in chains[0].steps] == [(780, 620), (790, 630), (10, 10)]
    assert linearize(ring_tree(), RING, LinearizeConfig(min_grounding=min_grounding), []) == (
        [] if min_grounding is not None else chains)  # without boxes no chain has a share


def test_linearize_run_filters_by_grounding_and_records_the_setting(tmp_path):
    run = write_grounding_run(tmp_path / "run")
    all_rows = linearize_run(run, tmp_path / "all", "single", val_fraction=0)
    assert all_rows.total_rows == 7  # ring 3, star 1, unboxed 3
    counts = linearize_run(run, tmp_path / "strict", "single", LinearizeConfig(min_grounding=0.6), val_fraction=0)
    assert counts.total_rows == 2 and counts.questions == {"train": 2}  # A.r0 and the star's chain
    rows = load_traces(tmp_path / "strict")
    assert sorted(rows["question_id"]) == sorted([RING, "relative_position/sa_6612"])
    provenance = json.loads((tmp_path / "strict" / "provenance.json").read_text())
    assert provenance["linearize"]["min_grounding"] == 0.6 and provenance["linearize"]["mode"] == "single"
    assert '"min_grounding": 0.6' in (tmp_path / "strict" / "README.md").read_text()


def test_cli_min_grounding_and_its_refusals(tmp_path):
    run = write_grounding_run(tmp_path / "run")
    result = runner.invoke(app, ["linearize", str(run), "--mode", "single", "--min-grounding", "0.6",
                                 "--val-fraction", "0", "--out", str(tmp_path / "d")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert len(load_traces(tmp_path / "d")) == 2

    stepwise = runner.invoke(app, ["linearize", str(run), "--mode", "stepwise", "--min-grounding", "0.5",
                                   "--out", str(tmp_path / "s")])
    assert isinstance(stepwise.exception, ConfigError) and "does not apply to --mode stepwise" in str(
        stepwise.exception)

    records = grounding_records(with_unboxed=False)
    for record in records:
        record.question.target_boxes = []
    boxless = write_run(tmp_path / "boxless", records)
    refused = runner.invoke(app, ["linearize", str(boxless), "--mode", "single", "--min-grounding", "0.5"])
    assert isinstance(refused.exception, ConfigError) and "needs target boxes" in str(refused.exception)
    with pytest.raises(ConfigError, match="needs target boxes"):
        linearize_run(boxless, tmp_path / "x", "preference", LinearizeConfig(min_grounding=0.5))
    out_of_range = runner.invoke(app, ["linearize", str(run), "--mode", "single", "--min-grounding", "1.5"])
    assert out_of_range.exit_code == 2  # typer's own range check: usage and exit 2
