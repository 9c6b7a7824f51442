"""Preference pairs and step paths from hand-built trees (counts, parting nodes, prefixes, labels, cap, dedup, the
grounding filter), and their rows: TRL's formats, loaded by `datasets.load_dataset`, decoded and converted between
frames, split by question, described by the card."""

import json
from collections import Counter

import pytest
from datasets import load_dataset
from typer.testing import CliRunner

from tests.trace_forge.fixtures_grounding import RING, STAR, ring_tree, star_tree, write_grounding_run
from tests.trace_forge.fixtures_trees import add_rollout, rollout, step
from trace_forge.cli import app
from trace_forge.dataset import (
    PREFERENCE_COLUMNS,
    PREFERENCE_ROWS,
    STEPWISE_COLUMNS,
    STEPWISE_ROWS,
    PreferenceRow,
    StepwiseRow,
    linearize_run,
    load_traces,
)
from trace_forge.errors import DataError
from trace_forge.grounding import Box, Frame, Resize, View, parse_response
from trace_forge.linearize import LinearizeConfig, preference_pairs, step_paths
from trace_forge.tasks.prompts import prompts_for

runner = CliRunner()
RING_BOX = [Box(771, 613, 802, 644)]
A, C, B = 1, 2, 3  # node ids of ring_tree


# --- pairs ---------------------------------------------------------------------------------------------------------


def test_every_correct_chain_is_paired_with_every_answered_wrong_trajectory_where_they_part():
    tree = ring_tree()
    pairs = preference_pairs(tree, RING)
    assert len(pairs) == 8
    assert Counter((p.node, p.prefix_length) for p in pairs) == {(0, 0): 4, (A, 1): 3, (B, 2): 1}
    for p in pairs:
        assert p.chosen.correct and p.chosen.reward == 1 and not p.rejected.correct
        shared = tree.steps_to(tree.nodes[p.node])
        assert p.chosen.steps[: p.prefix_length] == p.rejected.steps[: p.prefix_length] == tuple(shared)
        assert p.node_value == tree.nodes[p.node].value
    assert {p.rejected.answer for p in pairs} == {"yellow", "red", "black"}  # C's unanswered rollout never pairs
    at_b = next(p for p in pairs if p.node == B)
    assert (at_b.chosen.source.rollouts, at_b.rejected.source.rollouts) == ((), (0,))  # T against B.r0
    assert preference_pairs(star_tree(), STAR) == []  # no wrong trajectory


def test_pairs_are_deduplicated_capped_and_filtered_on_the_chosen_side():
    tree = ring_tree()
    add_rollout(tree, A, rollout([(500, 500)], "red", 0.0))  # the same text as A.r1: no new pair
    assert len(preference_pairs(tree, RING)) == 8
    capped = preference_pairs(tree, RING, LinearizeConfig(max_per_question=3, seed=1))
    assert len(capped) == 3 and capped == preference_pairs(tree, RING, LinearizeConfig(max_per_question=3, seed=1))
    full = preference_pairs(tree, RING)
    assert [full.index(p) for p in capped] == sorted(full.index(p) for p in capped)  # original order kept
    strict = preference_pairs(tree, RING, LinearizeConfig(min_grounding=0.6), RING_BOX)
    assert len(strict) == 4 and {p.chosen.source.rollouts for p in strict} == {(0,)}  # only A.r0 (2/3 on target)
    assert preference_pairs(tree, RING, LinearizeConfig(min_grounding=0.7), RING_BOX) == []


# --- step paths ----------------------------------------------------------------------------------------------------


def test_step_paths_run_from_the_root_to_each_valued_leaf_with_the_node_values():
    tree = ring_tree()
    tree.add_child(tree.nodes[C], step=step(40, 40))  # never evaluated: no value, C stays a leaf
    paths = step_paths(tree, RING)
    # in leaf order: C (node 2) before B (node 3)
    assert [(p.nodes, p.values, p.visits) for p in paths] == [((C,), (0.0,), (2,)), ((A, B), (0.5, 0.5), (4, 2))]
    assert [p.labels(0.5) for p in paths] == [(False,), (True, True)]
    assert [p.labels(0.6) for p in paths] == [(False,), (False, False)]
    assert [p.steps[-1].point.rounded() for p in paths] == [(805, 640), (100, 100)]
    assert len(step_paths(tree, RING, LinearizeConfig(max_per_question=1))) == 1


# --- rows ----------------------------------------------------------------------------------------------------------


@pytest.fixture
def run(tmp_path):
    return write_grounding_run(tmp_path / "run")


def test_preference_rows_are_trls_format_and_load_with_load_dataset(run, tmp_path):
    counts = linearize_run(run, tmp_path / "pref", "preference", val_fraction=0)
    assert counts.rows == {"train": {"pairs": 16}} and counts.questions == {"train": 2}  # ring 8 + its copy 8
    rows = load_dataset(str(tmp_path / "pref"), split="train", cache_dir=str(tmp_path / "cache"))
    assert rows.column_names == list(PREFERENCE_COLUMNS)
    row = next(r for r in rows if r["question_id"] == RING and r["prefix_length"] == 1)
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert [p["type"] for p in row["prompt"][1]["content"]] == ["image", "text"] and len(row["images"]) == 1
    assert row["images"][0].size == (1960, 1470)
    chosen, rejected = (row[side][0]["content"][0]["text"] for side in ("chosen", "rejected"))
    assert [row[side][0]["role"] for side in ("chosen", "rejected")] == ["assistant", "assistant"]
    prefix = "The ring sits on the table (780, 620)."
    assert chosen.startswith(f"<think>\n{prefix}") and rejected.startswith(f"<think>\n{prefix}")
    assert parse_response(chosen, expect="single").answer == row["chosen_answer"] == "white"
    assert parse_response(rejected, expect="single").answer == row["rejected_answer"] != "white"
    assert row["chosen_steps"][0] == row["rejected_steps"][0] == {"text": prefix, "x": 780.0, "y": 620.0}
    assert row["chosen_reward"] == 1.0 and row["rejected_reward"] == 0.0 and row["frame"] == "pixel"
    assert json.loads(row["source"])["node"] == row["node"] == A

    decoded = PreferenceRow.from_row(row)
    again = decoded.to_row()
    assert {k: v for k, v in again.items() if k != "images"} == {k: v for k, v in row.items() if k != "images"}


def test_preference_rows_for_a_model_frame_are_the_pixel_rows_converted(run, tmp_path):
    view = View(Frame.MODEL, Resize(max_pixels=200_704))
    linearize_run(run, tmp_path / "pixel", "preference", val_fraction=0)
    linearize_run(run, tmp_path / "model", "preference", view=view, val_fraction=0)
    pixel, model = load_traces(tmp_path / "pixel", rows=PREFERENCE_ROWS), load_traces(tmp_path / "model",
                                                                                       rows=PREFERENCE_ROWS)
    assert set(model["frame"]) == {"model"} and model[0]["resize"]["max_pixels"] == 200_704
    for p, m in zip(pixel, model, strict=True):
        assert PreferenceRow.from_row(p).in_view(view).to_row()["chosen"] == m["chosen"]
        assert PreferenceRow.from_row(m).in_view(View(Frame.PIXEL)).to_row()["rejected"] == p["rejected"]
    assert "(780, 620)" not in model[0]["chosen"][0]["content"][0]["text"]


def test_stepwise_rows_are_trls_format_with_labels_from_the_values(run, tmp_path):
    counts = linearize_run(run, tmp_path / "steps", "stepwise", LinearizeConfig(label_threshold=0.5),
                           val_fraction=0)
    assert counts.rows == {"train": {"sequences": 5}}  # ring 2, star 1, ring copy 2
    rows = load_dataset(str(tmp_path / "steps"), split="train", cache_dir=str(tmp_path / "cache"))
    assert rows.column_names == list(STEPWISE_COLUMNS)
    ring = [r for r in rows if r["question_id"] == RING]
    assert [r["labels"] for r in ring] == [[False], [True, True]]
    assert [r["values"] for r in ring] == [[0.0], [0.5, 0.5]] and [r["visits"] for r in ring] == [[2], [4, 2]]
    assert ring[1]["completions"] == ["The ring sits on the table (780, 620).", "The corner is dark (100, 100)."]
    assert ring[0]["prompt"].startswith("What is the color of")
    assert ring[0]["prompt"] == prompts_for("option").question_text(StepwiseRow.from_row(ring[0]).sample)
    assert all(r["label_threshold"] == 0.5 for r in rows)
    assert json.loads(ring[1]["source"])["nodes"] == [A, B]
    assert StepwiseRow.from_row(ring[0]).to_row()["completions"] == ring[0]["completions"]
    strict = linearize_run(run, tmp_path / "strict", "stepwise", LinearizeConfig(label_threshold=0.6),
                           val_fraction=0)
    assert strict.total_rows == 5
    assert [r["labels"] for r in load_traces(tmp_path / "strict", rows=STEPWISE_ROWS)
            if r["question_id"] == STAR] == [[True]]  # D's value is 1


def test_rows_are_split_by_question_like_the_other_modes(run, tmp_path):
    linearize_run(run, tmp_path / "single", "single", val_fraction=0.4)
    linearize_run(run, tmp_path / "pref", "preference", val_fraction=0.4)
    linearize_run(run, tmp_path / "steps", "stepwise", val_fraction=0.4)
    sides = {}
    for name, rows in (("single", None), ("pref", PREFERENCE_ROWS), ("steps", STEPWISE_ROWS)):
        kwargs = {} if rows is None else {"rows": rows}
        sides[name] = {split: set(load_traces(tmp_path / name, split, **kwargs)["question_id"])
                       for split in ("train", "validation")}
    validation = sides["single"]["validation"]
    assert len(validation) == 1
    assert sides["steps"]["validation"] == validation
    assert sides["pref"]["validation"] <= validation and not sides["pref"]["train"] & validation


def test_cards_describe_the_row_kind_its_columns_and_frame(run, tmp_path):
    result = runner.invoke(app, ["linearize", str(run), "--mode", "preference", "--frame", "model",
                                 "--max-pixels", "200704", "--val-fraction", "0"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "pairs" in result.output and "16" in result.output
    card = (run / "dataset-preference" / "README.md").read_text()
    assert "preference pairs" in card and "`trl.DPOTrainer`" in card and "Coordinate frame: `model`" in card
    assert all(f"`{name}`" in card for name in PREFERENCE_COLUMNS)
    assert "| split | questions | pairs |" in card and "16 pairs in all." in card

    linearize_run(run, tmp_path / "steps", "stepwise", val_fraction=0)
    card = (tmp_path / "steps" / "README.md").read_text()
    assert "stepwise-supervision" in card and "`label_threshold`" in card
    assert all(f"`{name}`" in card for name in STEPWISE_COLUMNS)
    assert '"label_threshold": 0.5' in card  # the linearization settings


def test_a_dataset_of_another_row_kind_is_named(run, tmp_path):
    linearize_run(run, tmp_path / "pref", "preference", val_fraction=0)
    with pytest.raises(DataError, match="it holds preference rows, not trace rows"):
        load_traces(tmp_path / "pref")
    linearize_run(run, tmp_path / "single", "single", val_fraction=0)
    with pytest.raises(DataError, match="it holds trace rows, not stepwise rows"):
        load_traces(tmp_path / "single", rows=STEPWISE_ROWS)
    with pytest.raises(DataError, match="it holds trace rows, not preference rows"):
        PreferenceRow.from_row(load_traces(tmp_path / "single")[0])
    with pytest.raises(DataError, match="not stepwise rows .*missing columns"):
        StepwiseRow.from_row({"schema_version": 1, "prompt": "?"})
