import math

import pytest

from trace_forge.grounding import Point, Step
from trace_forge.search.tree import Rollout, Tree, backup, select, ucb


def _step(x: int, y: int) -> Step:
    return Step(f"Look at ({x}, {y}).", Point(x, y))


def _tree_with_children(values_visits):
    tree = Tree()
    root = tree.root
    root.expanded = True
    for i, (value, visits) in enumerate(values_visits):
        child = tree.add_child(root, step=_step(10 * i, 10 * i))
        child.value, child.visits = value, visits
    root.visits = sum(v for _, v in values_visits)
    return tree


def test_ucb_formula_and_unvisited_first():
    tree = _tree_with_children([(0.5, 2), (0.0, 0)])
    a, b = (tree.nodes[i] for i in tree.root.children)
    assert ucb(a, 2, 2.0) == pytest.approx(0.5 + 2.0 * math.sqrt(math.log(2) / 2))
    assert ucb(b, 2, 2.0) == math.inf
    assert select(tree) is b


def test_select_balances_value_and_exploration():
    # High value but heavily visited vs. low value rarely visited: c decides.
    tree = _tree_with_children([(0.9, 30), (0.3, 1)])
    exploit, explore = (tree.nodes[i] for i in tree.root.children)
    assert select(tree, c=2.0) is explore
    assert select(tree, c=0.0) is exploit


def test_select_stops_at_unexpanded_and_terminal_nodes():
    tree = _tree_with_children([(1.0, 1)])
    child = tree.nodes[1]
    assert select(tree) is child  # not expanded yet
    child.expanded = True
    term = tree.add_child(child, answer="red", reward=1.0)
    term.visits, term.value = 1, 1.0
    assert select(tree) is term


def test_backup_is_incremental_mean_along_the_path():
    tree = Tree()
    a = tree.add_child(tree.root, step=_step(1, 1))
    b = tree.add_child(a, step=_step(2, 2))
    for r in (1.0, 0.0, 1.0):
        backup(tree, b, r)
    backup(tree, a, 0.0)
    assert (b.visits, b.value) == (3, pytest.approx(2 / 3))
    assert (a.visits, a.value) == (4, pytest.approx(0.5))
    assert (tree.root.visits, tree.root.value) == (4, pytest.approx(0.5))


def test_used_points_and_round_trip():
    tree = Tree()
    a = tree.add_child(tree.root, step=_step(5, 6))
    b = tree.add_child(a, step=_step(7, 8))
    b.rollouts.append(Rollout([_step(9, 9)], "blue", 0.0, forced=True, answered=False))
    assert tree.used_points(b) == {(5, 6), (7, 8)}
    again = Tree.from_dict(tree.to_dict())
    assert again.to_dict() == tree.to_dict()
    assert again.nodes[2].rollouts[0].steps[0].point == Point(9, 9)
