"""Linearization of hand-built trees: chain counts and texts, dedup, the seeded cap, and zoom dialogs."""

from collections import Counter

import pytest

from tests.trace_forge.fixtures_trees import add_rollout, example_tree, rollout, step
from trace_forge.grounding import DEFAULT_CONNECTOR, parse_response
from trace_forge.linearize import (
    Chain,
    ChainSource,
    LinearizeConfig,
    dialog_turns,
    linearize,
    plan_zooms,
)
from trace_forge.search.tree import Tree
from trace_forge.tasks.prompts import prompts_for

A_STEP = "The ring is near the table (100, 100)."
B_STEP = "The ring looks white here (200, 200)."


def _points(chain: Chain) -> list[tuple[int, int]]:
    return [s.point.rounded() for s in chain.steps]


def test_example_tree_yields_three_direct_and_two_backtracking_chains():
    chains = linearize(example_tree(), "q1")
    assert [(c.kind, c.source) for c in chains] == [
        ("direct", ChainSource(1, (0,))),
        ("direct", ChainSource(2, (0,))),
        ("direct", ChainSource(3)),
        ("backtracking", ChainSource(1, (1, 0))),
        ("backtracking", ChainSource(1, (2, 0))),
    ]
    assert [_points(c) for c in chains] == [
        [(100, 100), (110, 220), (120, 330)],
        [(100, 100), (200, 200), (250, 260)],
        [(100, 100), (200, 200)],
        [(100, 100), (300, 300), (110, 220), (120, 330)],
        [(100, 100), (400, 400), (410, 420), (110, 220), (120, 330)],
    ]
    assert all(c.question_id == "q1" and c.answer == "white" for c in chains)
    assert all(c.correct and c.reward == 1.0 for c in chains)
    assert [c.connector_index for c in chains] == [None, None, None, 2, 3]
    # Mean values backed up by the fixture: root 3/7, A 3/6, B 2/3, T 1.
    assert chains[0].node_values == pytest.approx((3 / 7, 0.5))
    assert chains[2].node_values == pytest.approx((3 / 7, 0.5, 2 / 3, 1.0))
    assert chains[4].node_values == chains[0].node_values


def test_rendered_texts_write_the_prefix_once_and_the_connector_between_the_halves():
    chains = linearize(example_tree(), "q1")
    assert chains[2].render() == f"<think>\n{A_STEP} {B_STEP}\n</think>\n<answer> white </answer>"
    assert chains[3].render() == (
        f"<think>\n{A_STEP} Look at (300, 300). {DEFAULT_CONNECTOR} Look at (110, 220). Look at (120, 330).\n"
        "</think>\n<answer> white </answer>"
    )
    for chain in chains:
        text = chain.render()
        assert text.count("(100, 100)") == 1
        assert parse_response(text).ok
    # The wrong rollout's answer never reaches the text.
    assert "black" not in chains[4].render() and "red" not in chains[3].render()


def test_config_connector_and_no_backtracking():
    custom = linearize(example_tree(), "q1", LinearizeConfig(connector="Hmm, no."))
    assert "Hmm, no. Look at (110, 220)." in custom[3].render()
    assert DEFAULT_CONNECTOR not in custom[3].render()
    direct_only = linearize(example_tree(), "q1", LinearizeConfig(include_backtracking=False))
    assert [c.kind for c in direct_only] == ["direct"] * 3


def test_chains_need_a_step_and_a_real_answer():
    tree = Tree()
    add_rollout(tree, 0, rollout([], "white", 1.0))  # nothing grounded
    add_rollout(tree, 0, rollout([(5, 5)], "white", 1.0, answered=False))  # judged from its last text
    add_rollout(tree, 0, rollout([(6, 6)], "red", 0.0))
    # Only the backtracking chain at the root: wrong (6, 6), connector, the step-less rollout's answer.
    [chain] = linearize(tree, "q")
    assert (chain.kind, chain.steps, chain.source, chain.connector_index) == (
        "backtracking", (step(6, 6),), ChainSource(0, (2, 0)), 1
    )
    assert chain.node_values == pytest.approx((2 / 3,))


def test_identical_texts_are_kept_once():
    tree = Tree()
    a = tree.add_child(tree.root, step=step(10, 10))
    for _ in range(2):
        add_rollout(tree, a.id, rollout([(20, 20)], "white", 1.0))
        add_rollout(tree, a.id, rollout([(30, 30)], "red", 0.0))
    # A terminal node reached through the same steps as rollout 0 renders the same text.
    b = tree.add_child(a, step=step(20, 20))
    tree.add_child(b, answer="white", reward=1.0)
    chains = linearize(tree, "q")
    assert [(c.kind, c.source) for c in chains] == [
        ("direct", ChainSource(1, (0,))),
        ("backtracking", ChainSource(1, (1, 0))),
    ]


def _wide_tree(n_right: int, n_wrong: int) -> Tree:
    tree = Tree()
    a = tree.add_child(tree.root, step=step(1, 1))
    for i in range(n_right):
        add_rollout(tree, a.id, rollout([(100 + i, 7)], "white", 1.0))
    for i in range(n_wrong):
        add_rollout(tree, a.id, rollout([(300 + i, 9)], "red", 0.0))
    return tree


def test_cap_keeps_kinds_in_proportion_and_is_seeded():
    tree = _wide_tree(3, 10)  # 3 direct + 30 backtracking
    full = linearize(tree, "q", LinearizeConfig(max_per_question=None))
    assert Counter(c.kind for c in full) == {"direct": 3, "backtracking": 30}
    capped = linearize(tree, "q", LinearizeConfig(max_per_question=11, seed=3))
    assert Counter(c.kind for c in capped) == {"direct": 1, "backtracking": 10}
    positions = [full.index(c) for c in capped]
    assert positions == sorted(positions)  # a subsequence, original order kept
    assert capped == linearize(tree, "q", LinearizeConfig(max_per_question=11, seed=3))
    draws = {tuple(c.source for c in linearize(tree, "q", LinearizeConfig(max_per_question=11, seed=s)))
             for s in range(6)}
    assert len(draws) > 1  # the seed matters
    other_question = linearize(tree, "q2", LinearizeConfig(max_per_question=11, seed=3))
    assert [c.source for c in other_question] != [c.source for c in capped]


def test_cap_keeps_a_rare_kind():
    capped = linearize(_wide_tree(1, 40), "q", LinearizeConfig(max_per_question=4))
    assert Counter(c.kind for c in capped) == {"direct": 1, "backtracking": 3}
    assert len(linearize(_wide_tree(1, 40), "q", LinearizeConfig(max_per_question=1))) == 1


@pytest.mark.parametrize("kwargs", [{"connector": " "}, {"max_per_question": -1}, {"max_zooms": -1}])
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        LinearizeConfig(**kwargs)


def test_chain_requires_connector_exactly_for_backtracking():
    with pytest.raises(ValueError):
        Chain("q", "direct", (step(1, 1),), "a", True, 1.0, (), ChainSource(0), "Wait.", 1)
    with pytest.raises(ValueError):
        Chain("q", "backtracking", (step(1, 1),), "a", True, 1.0, (), ChainSource(0))


# ------------------------------------------------------------------------------------------------ dialogs


def _chain(points, *, connector_index=None):
    steps = tuple(step(x, y) for x, y in points)
    kind = "direct" if connector_index is None else "backtracking"
    connector = None if connector_index is None else DEFAULT_CONNECTOR
    return Chain("q", kind, steps, "white", True, 1.0, (), ChainSource(0), connector, connector_index)


def _dialog(chain, prompts, dot, max_zooms):
    return dialog_turns(chain, plan_zooms(chain.steps, max_zooms), prompts, dot=dot)


def test_zero_per_question_keeps_every_chain():
    assert LinearizeConfig(max_per_question=0).max_per_question is None


def test_dialog_zooms_new_points_folds_repeats_and_stops_at_the_limit():
    prompts = prompts_for("option")
    chain = _chain([(100, 100), (106, 108), (300, 300), (500, 500), (700, 700), (900, 900)])
    turns = _dialog(chain, prompts, False, 3)
    assert [t.role for t in turns] == ["assistant", "tool"] * 3 + ["assistant"]
    assert [t.zoom for t in turns if t.role == "tool"] == [(100, 100), (300, 300), (500, 500)]
    assert turns[0].text == (
        "<think> Look at (100, 100). </think>\n<tool_call>\n"
        '{"name": "zoom", "arguments": {"point": [100, 100]}}\n</tool_call>'
    )
    assert turns[1].text == "Here is the zoomed crop of the image centred on (100, 100)."
    # (106, 108) is within 10 px of (100, 100): its text joins the next zoom turn's thought.
    assert turns[2].text.startswith("<think> Look at (106, 108). Look at (300, 300). </think>")
    # Past the limit, the remaining steps fold into the answer turn.
    assert turns[-1].text == (
        "<think> Look at (700, 700). Look at (900, 900). </think>\n<answer> white </answer>"
    )
    for turn in turns[::2]:
        assert parse_response(turn.text, expect="turn").ok


def test_dialog_keeps_the_connector_in_a_thought_and_closes_when_nothing_is_left():
    prompts = prompts_for("point")
    chain = _chain([(10, 10), (50, 50), (90, 90)], connector_index=2)
    turns = _dialog(chain, prompts, True, 4)
    assert [t.zoom for t in turns if t.role == "tool"] == [(10, 10), (50, 50), (90, 90)]
    assert turns[4].text.startswith(f"<think> {DEFAULT_CONNECTOR} Look at (90, 90). </think>\n<tool_call>")
    assert turns[1].text.endswith("a red dot marks that point.")
    assert turns[-1].text == f"<think> {prompts_for('option').closing_thought()} </think>\n<answer> white </answer>"
    # A connector after the last step (the correct rollout answered at once) lands in the answer turn.
    turns = _dialog(_chain([(10, 10)], connector_index=1), prompts, True, 4)
    assert turns[-1].text == f"<think> {DEFAULT_CONNECTOR} </think>\n<answer> white </answer>"


def test_dialog_without_zooms_is_one_answer_turn():
    turns = _dialog(_chain([(10, 10), (50, 50)]), prompts_for("option"), False, 0)
    assert len(turns) == 1
    assert turns[0].text == "<think> Look at (10, 10). Look at (50, 50). </think>\n<answer> white </answer>"
