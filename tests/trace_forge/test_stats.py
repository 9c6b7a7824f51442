"""Run statistics on hand-built records, with every number worked out by hand."""

import json

import pytest
from typer.testing import CliRunner

from tests.trace_forge.fixtures_trees import (
    add_rollout,
    example_tree,
    make_record,
    rollout,
    step,
    vstar_samples,
    write_run,
)
from trace_forge.cli import app
from trace_forge.errors import DataError
from trace_forge.search.store import RunStore
from trace_forge.search.tree import Tree
from trace_forge.stats import run_stats

runner = CliRunner()


def _unsolved_tree() -> Tree:
    """root -> C1 (expanded, no children: a dead end), C2 (not expanded); three wrong rollouts."""
    tree = Tree()
    c1 = tree.add_child(tree.root, step=step(10, 10))
    c2 = tree.add_child(tree.root, step=step(20, 20))
    tree.root.expanded = c1.expanded = True
    add_rollout(tree, c1.id, rollout([(30, 30)], "red", 0.0))
    add_rollout(tree, c2.id, rollout([], "red", 0.0))
    add_rollout(tree, c2.id, rollout([(40, 40)], "black", 0.0))
    return tree


@pytest.fixture
def run_dir(tmp_path):
    a, b = list(vstar_samples().values())[:2]
    solved = make_record(example_tree(), a)
    solved.question.category = "direct_attributes"
    solved.stats = {
        "requests": 10,
        "completions": 30,
        "cached": 2,
        "prompt_tokens": 1000,
        "completion_tokens": 200,
        "dead": 3,
        "dropped_repeats": 1,
        "simulations": 8,
        "stopped": "simulations",
        "seconds": 1.5,
        "correct": 3,
    }
    unsolved = make_record(_unsolved_tree(), b)
    unsolved.question.category = "relative_position"
    unsolved.stats = {
        "requests": 5,
        "completions": 12,
        "prompt_tokens": 500,
        "completion_tokens": 100,
        "dead": 2,
        "dropped_repeats": 0,
        "simulations": 4,
        "stopped": "budget",
        "seconds": 0.5,
        "correct": 0,
    }
    root = write_run(tmp_path / "run", [solved, unsolved])
    store = RunStore(root)
    run = store.read_run()
    run.usage = {"requests": 15, "prompt_tokens": 1500, "cost_usd": None, "errors": {"x": 1}}
    store.write_run(run)
    store.append_error({"question_id": "never-finished", "error": "TeacherError"})
    store.append_error({"question_id": a.id, "error": "TeacherError"})  # failed once, finished on resume
    return root


def test_counts_shape_and_yield(run_dir):
    s = run_stats(run_dir)
    assert (s.questions, s.solved, s.failed) == (2, 1, 1)
    assert s.solved_share == 0.5
    assert s.nodes == 5  # A, B, T + C1, C2
    assert s.depth_histogram == {1: 3, 2: 1, 3: 1}
    assert s.branching_histogram == {0: 1, 1: 3, 2: 1}
    assert (s.rollouts, s.rollouts_correct) == (9, 2)
    assert s.rollout_accuracy == pytest.approx(2 / 9)
    assert (s.terminals, s.terminals_correct, s.correct_trajectories) == (1, 1, 3)
    assert {name: (c.questions, c.solved, c.correct_trajectories) for name, c in s.categories.items()} == {
        "direct_attributes": (1, 1, 3),
        "relative_position": (1, 0, 0),
    }


def test_record_stats_and_run_usage(run_dir):
    s = run_stats(run_dir)
    assert (s.dead, s.dropped) == (5, 1)
    assert s.stop_reasons == {"budget": 1, "simulations": 1}
    assert s.usage == {
        "cached": 2,
        "completion_tokens": 300,
        "completions": 42,
        "prompt_tokens": 1500,
        "requests": 15,
        "seconds": 2.0,
        "simulations": 12,
    }
    assert s.run_usage == {"prompt_tokens": 1500, "requests": 15}  # unknown cost and nested counters left out
    assert s.teacher["model"] == "Qwen/Qwen2.5-VL-72B-Instruct"


def test_cli_json_is_the_stats_dict(run_dir):
    result = runner.invoke(app, ["stats", str(run_dir), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == json.loads(json.dumps(run_stats(run_dir).to_dict()))
    assert data["depth_histogram"] == {"1": 3, "2": 1, "3": 1}
    assert data["categories"]["direct_attributes"]["solved_share"] == 1.0


def test_cli_tables(run_dir):
    result = runner.invoke(app, ["stats", str(run_dir)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in ("1 (50.0%)", "9 (2, 22.2%)", "relative_position", "branching", "1,500"):
        assert text in result.stdout


def test_not_a_run_dir(tmp_path):
    with pytest.raises(DataError, match="not a run directory"):
        run_stats(tmp_path)
    assert isinstance(runner.invoke(app, ["stats", str(tmp_path)]).exception, DataError)
