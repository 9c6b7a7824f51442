"""The search tree of grounded steps: nodes, rollouts, UCB selection and mean-value backup.

A node is one grounded step written by the teacher (the root is the question). Rollouts are ephemeral
continuations from a node to a final answer; they are stored on the node they started from but never become
nodes themselves. Everything here is plain data plus pure functions, so the search engine stays small and the
selection and backup rules can be tested on hand-built trees.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from trace_forge.grounding import Point, Step

__all__ = ["Rollout", "Node", "Tree", "ucb", "select", "backup", "makes_chain", "chain_ends",
           "correct_trajectories"]


@dataclass
class Rollout:
    """One continuation from a node to a final answer.

    Attributes:
        steps: the ephemeral steps after the node (points in the pixel frame).
        answer: the final answer text (a point answer as its pixel-frame literal, e.g. "(412, 230)"); for a
            rollout that never answered, the last text it produced (the reference judges that).
        reward: the task verifier's score of ``answer`` (0/1).
        forced: whether the answer was forced (depth or rollout limit reached).
        answered: whether the teacher produced an ``<answer>`` at all.
        answer_point: a point answer, unrounded, in the pixel frame (None for other answers).
    """

    steps: list[Step]
    answer: str
    reward: float
    forced: bool = False
    answered: bool = True
    answer_point: Point | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": [s.to_dict() for s in self.steps],
            "answer": self.answer,
            "answer_point": _point_dict(self.answer_point),
            "reward": self.reward,
            "forced": self.forced,
            "answered": self.answered,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rollout:
        return cls(
            [Step.from_dict(s) for s in d["steps"]], d["answer"], float(d["reward"]), d["forced"], d["answered"],
            _point(d.get("answer_point")),
        )


def _point_dict(point: Point | None) -> dict[str, Any] | None:
    return point.to_dict() if point is not None else None


def _point(d: dict[str, Any] | None) -> Point | None:
    return Point.from_dict(d) if d is not None else None


@dataclass
class Node:
    """A tree node: the root (question), a grounded step, or a terminal answer.

    ``value`` is the running mean of the rewards backed up through the node; ``visits`` counts them.
    """

    id: int
    parent: int | None
    depth: int
    step: Step | None = None
    answer: str | None = None
    reward: float | None = None  # terminal nodes: the verifier's score of `answer`
    answer_point: Point | None = None  # terminal nodes answering a point (pixel frame)
    children: list[int] = field(default_factory=list)
    rollouts: list[Rollout] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0
    expanded: bool = False

    @property
    def terminal(self) -> bool:
        return self.answer is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "parent": self.parent,
            "depth": self.depth,
            "step": self.step.to_dict() if self.step else None,
            "answer": self.answer,
            "answer_point": _point_dict(self.answer_point),
            "reward": self.reward,
            "children": list(self.children),
            "rollouts": [r.to_dict() for r in self.rollouts],
            "visits": self.visits,
            "value": self.value,
            "expanded": self.expanded,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Node:
        return cls(
            id=d["id"],
            parent=d["parent"],
            depth=d["depth"],
            step=Step.from_dict(d["step"]) if d["step"] else None,
            answer=d["answer"],
            reward=d["reward"],
            answer_point=_point(d.get("answer_point")),
            children=list(d["children"]),
            rollouts=[Rollout.from_dict(r) for r in d["rollouts"]],
            visits=d["visits"],
            value=d["value"],
            expanded=d["expanded"],
        )


@dataclass
class Tree:
    """All nodes of one question's search, root first (``nodes[0]``)."""

    nodes: list[Node] = field(default_factory=lambda: [Node(id=0, parent=None, depth=0)])

    @property
    def root(self) -> Node:
        return self.nodes[0]

    def add_child(self, parent: Node, *, step: Step | None = None, answer: str | None = None,
                  reward: float | None = None, answer_point: Point | None = None) -> Node:
        node = Node(id=len(self.nodes), parent=parent.id, depth=parent.depth + 1, step=step, answer=answer,
                    reward=reward, answer_point=answer_point)
        self.nodes.append(node)
        parent.children.append(node.id)
        return node

    def path(self, node: Node) -> list[Node]:
        """Nodes from the root to ``node``, both included."""
        out = [node]
        while out[-1].parent is not None:
            out.append(self.nodes[out[-1].parent])
        return out[::-1]

    def steps_to(self, node: Node) -> list[Step]:
        """The grounded steps on the path to ``node`` (the root and terminal answers carry none)."""
        return [n.step for n in self.path(node) if n.step is not None]

    def used_points(self, node: Node) -> set[tuple[int, int]]:
        """Rounded points already used on the path to ``node``: a child repeating one is dropped."""
        return {s.point.rounded() for s in self.steps_to(node)}

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": [n.to_dict() for n in self.nodes]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tree:
        return cls([Node.from_dict(n) for n in d["nodes"]])


def ucb(child: Node, parent_visits: int, c: float) -> float:
    """UCB1: ``Q + c * sqrt(ln N / n)``; an unvisited child scores +inf so every child is tried once."""
    if child.visits == 0:
        return math.inf
    return child.value + c * math.sqrt(math.log(max(parent_visits, 1)) / child.visits)


def select(tree: Tree, c: float = 2.0) -> Node:
    """Descend from the root by UCB to the node to work on next.

    Descent stops at a terminal node or at a node that has not been expanded yet. Ties go to the earliest child,
    so the walk is deterministic.
    """
    node = tree.root
    while not node.terminal and node.expanded and node.children:
        children = [tree.nodes[i] for i in node.children]
        node = max(children, key=lambda ch: ucb(ch, node.visits, c))
    return node


def backup(tree: Tree, node: Node, reward: float) -> None:
    """Add one reward to every node from ``node`` up to the root as an incremental mean."""
    for n in tree.path(node):
        n.visits += 1
        n.value += (reward - n.value) / n.visits


def makes_chain(reward: float | None, answered: bool, steps: int) -> bool:
    """Whether a trajectory becomes a training chain: judged correct (reward >= 1), really answered (not a rollout
    judged on its last text) and grounded by at least one step. The one rule shared by linearization and every
    count of "correct trajectories", so a count never promises chains the dataset will not hold."""
    return reward is not None and reward >= 1 and answered and steps > 0


def chain_ends(tree: Tree) -> Iterator[tuple[Node, int | None]]:
    """Where each trajectory of ``tree`` that :func:`makes_chain` ends, in node order: ``(terminal node, None)``
    or ``(node, rollout index)``."""
    for node in tree.nodes:
        prefix = len(tree.steps_to(node))
        if node.terminal and makes_chain(node.reward, True, prefix):
            yield node, None
        for i, r in enumerate(node.rollouts):
            if makes_chain(r.reward, r.answered, prefix + len(r.steps)):
                yield node, i


def correct_trajectories(tree: Tree) -> int:
    """Terminal nodes and rollouts of ``tree`` that :func:`makes_chain`."""
    return sum(1 for _ in chain_ends(tree))
