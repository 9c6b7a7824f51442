"""Hand-built trees whose points are on or off known target boxes, for grounding precision, the ``--min-grounding``
filter, preference pairs and step paths. Every number the tests assert is worked out in the docstrings here.

The ring question (``direct_attributes/sa_4666``) has one target box ``[771, 613, 802, 644]``; the star question
(``relative_position/sa_6612``) has two, ``[899, 784, 958, 840]`` and ``[440, 831, 491, 882]``.
"""

from __future__ import annotations

from pathlib import Path

from tests.trace_forge.fixtures_trees import add_rollout, make_record, rollout, step, vstar_samples, write_run
from trace_forge.search.records import QuestionRecord
from trace_forge.search.tree import Tree, backup

RING = "direct_attributes/sa_4666"
STAR = "relative_position/sa_6612"
STAR_ANSWER = "The star is on the right side of the ring."


def ring_tree() -> Tree:
    """root -> A (780, 620) on -> B (100, 100) off -> T "white" (correct); root -> C (805, 640), 3 px right of the box.

    - root: rollout ``[(775, 615) on] -> "yellow"`` (wrong).
    - A: r0 ``[(790, 630) on, (10, 10) off] -> "white"`` (correct); r1 ``[(500, 500) off] -> "red"`` (wrong).
    - B: r0 ``[] -> "red"`` (wrong, no step of its own); T under B: terminal ``"white"``, reward 1.
    - C: r0 ``[(20, 20) off] -> "black"`` (wrong); r1 ``[(30, 30)]``, never answered (judged 0).

    Steps: 3 nodes + 6 rollout steps = 9; on target: A, the root rollout's, A.r0's first = 3 (4 with a 3 px margin:
    C). Correct trajectories: A.r0 and T; their steps, each once: A, B, A.r0's two = 4, of which 2 on target.
    Chains: direct A.r0 (2/3 on target) and T (1/2), backtracking at A (A.r1 then A.r0: 2/4).
    Pairs (2 correct x 4 answered wrong, C.r1 left out): parting at the root 4 (prefix 0), at A 3 (prefix 1), at B 1
    (T against B.r0, prefix 2). Values: A 2/4, B 1/2, C 0/2; step paths, in leaf order, [C] and [A, B].
    """
    tree = Tree()
    a = tree.add_child(tree.root, step=step(780, 620, "The ring sits on the table (780, 620)."))
    c = tree.add_child(tree.root, step=step(805, 640, "Just right of the ring (805, 640)."))
    b = tree.add_child(a, step=step(100, 100, "The corner is dark (100, 100)."))
    t = tree.add_child(b, answer="white", reward=1.0)
    for node in (tree.root, a, b, c):
        node.expanded = True
    add_rollout(tree, 0, rollout([(775, 615)], "yellow", 0.0))
    add_rollout(tree, a.id, rollout([(790, 630), (10, 10)], "white", 1.0))
    add_rollout(tree, a.id, rollout([(500, 500)], "red", 0.0))
    add_rollout(tree, b.id, rollout([], "red", 0.0))
    backup(tree, t, 1.0)
    add_rollout(tree, c.id, rollout([(20, 20)], "black", 0.0))
    add_rollout(tree, c.id, rollout([(30, 30)], "red", 0.0, answered=False))
    return tree


def star_tree() -> Tree:
    """root -> D (900, 800), in the first box; D's one rollout ``[(450, 850)]`` (in the second box) is correct.

    Steps 2, both on target, both on the correct trajectory; no wrong trajectory, so no pair; one step path [D].
    """
    tree = Tree()
    d = tree.add_child(tree.root, step=step(900, 800, "The star is here (900, 800)."))
    tree.root.expanded = True
    add_rollout(tree, d.id, rollout([(450, 850)], STAR_ANSWER, 1.0))
    return tree


def grounding_records(with_unboxed: bool = True) -> list[QuestionRecord]:
    """The ring and star questions with their trees, and (``with_unboxed``) a third question stripped of its target
    boxes, category ``unboxed``, holding a copy of the ring tree: it counts nowhere in grounding precision."""
    samples = vstar_samples()
    records = [make_record(ring_tree(), samples[RING]), make_record(star_tree(), samples[STAR])]
    if with_unboxed:
        other = make_record(ring_tree(), samples["direct_attributes/sa_7437"])  # its canvas holds every point
        other.question.target_boxes = []
        other.question.category = "unboxed"
        records.append(other)
    return records


def write_grounding_run(run_dir: Path, with_unboxed: bool = True) -> Path:
    return write_run(run_dir, grounding_records(with_unboxed))
