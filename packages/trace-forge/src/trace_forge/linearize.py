"""Linearization: turn one question's search tree into training chains, and a chain into a zoom dialog.

A *chain* is one grounded trajectory written out as a single response. Two kinds come out of a tree:

- ``direct``: a correct trajectory: the tree steps on the path to a node, then the steps of a correct rollout
  from that node and its answer (or the path to a correct terminal node and its answer).
- ``backtracking``: at a node with both a wrong rollout (at least one step) and a correct one, the shared path
  prefix, the wrong rollout's steps, a connector sentence ("Wait, this seems off. ..."), then the correct
  rollout's steps and answer. Unlike the ViGoRL reference, which repeats the prefix before the correct half,
  the prefix is written once: the text reads as one line of thought that turns back, not as two restarts.

Chains are deduplicated by rendered text and capped per question by a seeded, deterministic draw that keeps
both kinds in proportion; with ``min_grounding`` only chains whose share of on-target steps
(:func:`~trace_forge.tasks.on_target`) reaches it are kept.

The trees hold more than their correct chains, and two more kinds of data come out of them:

- :func:`preference_pairs`: sibling branches that share a grounded prefix and end right or wrong. Every correct
  chain is paired with every wrong trajectory (really answered, at least one step); the pair parts at the deepest
  tree node on both paths (:attr:`Pair.node`), whose path is the prefix both share.
- :func:`step_paths`: root-to-leaf paths of the tree's step nodes with their MCTS values (the mean reward of every
  trajectory through the node), labelled good where the value reaches a threshold. For multi-turn training, :func:`plan_zooms` picks the steps that zoom (once, in the pixel
frame) and :func:`dialog_turns` spreads a chain over assistant turns that zoom on those steps' points, in whatever
frame the chain's points are. Everything here is pure: no files, no images (the crops are cut by
:mod:`trace_forge.dataset`, from the points the tool turns name).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from trace_forge.grounding import (
    DEFAULT_CONNECTOR,
    Box,
    Point,
    Step,
    Trajectory,
    format_point,
    render_answer_turn,
    render_backtracking,
    render_single_turn,
    render_zoom_turn,
)
from trace_forge.grounding.steps import move_anchor
from trace_forge.search.tree import Node, Tree, makes_chain
from trace_forge.tasks import on_target_share
from trace_forge.tasks.prompts import PromptSet

__all__ = [
    "REPEAT_RADIUS_PX",
    "Chain",
    "ChainKind",
    "ChainSource",
    "LinearizeConfig",
    "MODES",
    "Mode",
    "Pair",
    "SFT_MODES",
    "StepPath",
    "Turn",
    "dialog_turns",
    "grounded_enough",
    "linearize",
    "plan_zooms",
    "preference_pairs",
    "step_paths",
]

_T = TypeVar("_T")
ChainKind = Literal["direct", "backtracking"]

Mode = Literal["single", "multi", "preference", "stepwise"]
"""What a dataset's rows are: SFT chains (single response, or multi-turn zoom dialog), preference pairs or
step-level labels."""
SFT_MODES: tuple[Mode, ...] = ("single", "multi")
MODES: tuple[Mode, ...] = (*SFT_MODES, "preference", "stepwise")
_KINDS: tuple[ChainKind, ...] = ("direct", "backtracking")

REPEAT_RADIUS_PX = 10.0
"""A step whose point lies within this many pixels of an earlier zoom point is not zoomed again."""


@dataclass(frozen=True)
class LinearizeConfig:
    """How trees become chains; every field is a ``trace-forge linearize`` flag with this default and help."""

    connector: str = field(default=DEFAULT_CONNECTOR, metadata={
        "help": "The sentence between the wrong and the correct half of a backtracking chain."})
    max_per_question: int | None = field(default=16, metadata={
        "help": "Chains kept per question (a seeded draw keeping both kinds in proportion); 0 or none keeps all."})
    include_backtracking: bool = field(default=True, metadata={"help": "Emit backtracking chains."})
    seed: int = field(default=0, metadata={"help": "Seeds the per-question draw and the train/validation split."})
    max_zooms: int = field(default=4, metadata={
        "help": "Zoom turns per multi-turn dialog (4: the original image plus 4 crops is ViGoRL's limit)."})
    min_grounding: float | None = field(default=None, metadata={
        "help": "Keep only chains (preference: chosen responses) whose share of on-target steps, points inside a "
                "target box, is at least this (0-1); questions without target boxes then give none."})
    grounding_margin: float = field(default=0.0, metadata={
        "help": "Pixels of the original image a point may lie outside a target box and still be on target."})
    label_threshold: float = field(default=0.5, metadata={
        "help": "Stepwise mode: a step is labelled good when its MCTS value (the mean reward of every trajectory "
                "through its node) is at least this."})

    def __post_init__(self) -> None:
        if not self.connector.strip():
            raise ValueError("the backtracking connector must not be empty")
        if self.max_per_question == 0:
            object.__setattr__(self, "max_per_question", None)
        if self.max_per_question is not None and self.max_per_question < 1:
            raise ValueError(f"max_per_question must be >= 1, 0 or None (all), got {self.max_per_question}")
        if self.max_zooms < 0:
            raise ValueError(f"max_zooms must be >= 0, got {self.max_zooms}")
        if self.min_grounding is not None and not 0 <= self.min_grounding <= 1:
            raise ValueError(f"min_grounding must be in [0, 1], got {self.min_grounding}")
        if self.grounding_margin < 0:
            raise ValueError(f"grounding_margin must be >= 0 pixels, got {self.grounding_margin}")
        if not 0 <= self.label_threshold <= 1:
            raise ValueError(f"label_threshold must be in [0, 1], got {self.label_threshold}")


@dataclass(frozen=True)
class ChainSource:
    """Where a chain came from in its tree.

    Attributes:
        node: the node the trajectory ends at (a correct terminal node) or continues from (rollouts).
        rollouts: indices into ``node.rollouts``: ``()`` for a terminal node, ``(correct,)`` for a direct
            chain, ``(wrong, correct)`` for a backtracking chain.
    """

    node: int
    rollouts: tuple[int, ...] = ()


@dataclass(frozen=True)
class Chain:
    """One linearized trajectory of a question.

    Attributes:
        question_id: the question the tree was searched for.
        kind: ``"direct"`` or ``"backtracking"``.
        steps: every step in order, points in the pixel frame of the sample canvas (see :meth:`map_points`).
        answer: the final answer text (a point answer as its literal, e.g. ``"(412, 230)"``).
        correct: whether the answer was judged correct (``reward >= 1``).
        reward: the verifier's score of the answer.
        node_values: mean values of the tree nodes on the path, root first.
        source: the node and rollout(s) the chain was read from.
        connector: for backtracking chains, the sentence written before ``steps[connector_index]``.
        connector_index: for backtracking chains, the number of steps (prefix and wrong rollout) before the
            connector.
        answer_point: a point answer, unrounded, in the frame of the steps (None for other answers).
    """

    question_id: str
    kind: ChainKind
    steps: tuple[Step, ...]
    answer: str
    correct: bool
    reward: float
    node_values: tuple[float, ...]
    source: ChainSource
    connector: str | None = None
    connector_index: int | None = None
    answer_point: Point | None = None

    def __post_init__(self) -> None:
        backtracking = self.kind == "backtracking"
        if backtracking != (self.connector is not None) or backtracking != (self.connector_index is not None):
            raise ValueError("a backtracking chain (and only one) has a connector and a connector_index")

    @property
    def final(self) -> str | Point:
        """The answer as rendered: the point for a point answer, else the text."""
        return self.answer_point if self.answer_point is not None else self.answer

    def render(self) -> str:
        """The single-turn response: ``<think>`` with every step (and the connector), then the answer."""
        if self.connector_index is None:
            return render_single_turn(Trajectory(self.steps, self.final))
        wrong = Trajectory(self.steps[: self.connector_index])
        right = Trajectory(self.steps[self.connector_index :], self.final)
        return render_backtracking(wrong, right, self.connector)

    def map_points(self, convert: Callable[[Point], Point]) -> Chain:
        """This chain with every point (steps and a point answer) mapped by ``convert`` (e.g. into another frame);
        each step's literal is rewritten to its new point, and a point answer's text to its new literal."""
        steps = _map_steps(self.steps, convert)
        if self.answer_point is None:
            return replace(self, steps=steps)
        point = convert(self.answer_point)
        return replace(self, steps=steps, answer_point=point, answer=format_point(point))


def _map_steps(steps: Sequence[Step], convert: Callable[[Point], Point]) -> tuple[Step, ...]:
    """``steps`` with each point mapped by ``convert`` and its literal in the text rewritten to match."""
    return tuple(Step(move_anchor(s.text, s.point, p), p) for s in steps for p in [convert(s.point)])


def _correct(reward: float | None) -> bool:
    return reward is not None and reward >= 1


def grounded_enough(steps: Sequence[Step], boxes: Sequence[Box], config: LinearizeConfig) -> bool:
    """Whether ``steps`` (pixel frame) pass ``config.min_grounding``: always without it; with it, a share of on-target
    steps at least that high (no target boxes: no share, so never).

    Example:
        >>> steps = [Step("a", Point(5, 5)), Step("b", Point(50, 50))]
        >>> [grounded_enough(steps, [Box(0, 0, 10, 10)], LinearizeConfig(min_grounding=p)) for p in (0.5, 0.6)]
        [True, False]
    """
    if config.min_grounding is None:
        return True
    share = on_target_share([s.point for s in steps], boxes, config.grounding_margin)
    return share is not None and share >= config.min_grounding


def linearize(
    tree: Tree, question_id: str, config: LinearizeConfig | None = None, target_boxes: Sequence[Box] = ()
) -> list[Chain]:
    """All chains of one question's tree: direct chains first, then backtracking ones, in node order.

    A chain needs at least one grounded step, and its correct side must have really answered (a rollout the
    reference judged from its last text, ``answered=False``, never becomes training text).

    Args:
        tree: the question's search tree (points in the pixel frame).
        question_id: the question's id, copied onto every chain and mixed into the cap's seed.
        config: connector, cap, seed, grounding filter; defaults to :class:`LinearizeConfig`.
        target_boxes: the question's target boxes (pixel frame), for ``config.min_grounding``.

    Returns:
        The chains, deduplicated by rendered text, filtered by grounding and capped at ``config.max_per_question``.
    """
    config = config or LinearizeConfig()
    chains = _direct_chains(_trajectories(tree, question_id))
    if config.include_backtracking:
        chains += _backtracking_chains(tree, question_id, config.connector)
    by_text: dict[str, Chain] = {}
    for chain in chains:
        if grounded_enough(chain.steps, target_boxes, config):
            by_text.setdefault(chain.render(), chain)  # the first chain with a given text wins
    rng = random.Random(f"{config.seed}:{question_id}")  # str seeds hash with SHA-512: stable across runs
    return _cap(list(by_text.values()), config.max_per_question, rng)


def _values(tree: Tree, node: Node) -> tuple[float, ...]:
    return tuple(n.value for n in tree.path(node))


def _trajectories(tree: Tree, question_id: str) -> list[Chain]:
    """Every really answered trajectory with at least one grounded step, right or wrong, as a ``direct`` chain:
    per node in order, a terminal node's own answer, then its rollouts."""
    chains: list[Chain] = []
    for node in tree.nodes:
        prefix = tree.steps_to(node)
        values = _values(tree, node)
        if node.terminal and prefix:
            chains.append(Chain(question_id, "direct", tuple(prefix), node.answer or "", _correct(node.reward),
                                float(node.reward or 0.0), values, ChainSource(node.id),
                                answer_point=node.answer_point))
        for i, rollout in enumerate(node.rollouts):
            steps = (*prefix, *rollout.steps)
            if rollout.answered and steps:
                chains.append(Chain(question_id, "direct", steps, rollout.answer, _correct(rollout.reward),
                                    rollout.reward, values, ChainSource(node.id, (i,)),
                                    answer_point=rollout.answer_point))
    return chains


def _direct_chains(trajectories: list[Chain]) -> list[Chain]:
    """The correct ones of :func:`_trajectories`: exactly the trajectories that
    :func:`~trace_forge.search.tree.makes_chain` (all of them were really answered)."""
    return [c for c in trajectories if makes_chain(c.reward, True, len(c.steps))]


def _backtracking_chains(tree: Tree, question_id: str, connector: str) -> list[Chain]:
    chains: list[Chain] = []
    for node in tree.nodes:
        rollouts = list(enumerate(node.rollouts))
        wrong = [(i, r) for i, r in rollouts if not _correct(r.reward) and r.steps]
        right = [(j, r) for j, r in rollouts if _correct(r.reward) and r.answered]
        if not (wrong and right):
            continue
        prefix = tuple(tree.steps_to(node))
        values = _values(tree, node)
        for i, bad in wrong:
            for j, good in right:
                chains.append(Chain(
                    question_id, "backtracking", (*prefix, *bad.steps, *good.steps), good.answer, True,
                    good.reward, values, ChainSource(node.id, (i, j)), connector,
                    len(prefix) + len(bad.steps), good.answer_point,
                ))
    return chains


def _quotas(sizes: dict[ChainKind, int], limit: int) -> dict[ChainKind, int]:
    """Split ``limit`` over the kinds in proportion to ``sizes`` (largest remainder), at least 1 per kind."""
    total = sum(sizes.values())
    exact = {k: limit * n / total for k, n in sizes.items()}
    quotas = {k: math.floor(v) for k, v in exact.items()}
    # Ties in the remainder go to the kind listed first, so the split never depends on dict order.
    by_remainder = sorted(sizes, key=lambda k: (quotas[k] - exact[k], _KINDS.index(k)))
    for k in by_remainder[: limit - sum(quotas.values())]:
        quotas[k] += 1
    for k in sizes:
        if quotas[k] == 0 and limit >= len(sizes):
            donor = max(quotas, key=lambda d: (quotas[d], -_KINDS.index(d)))
            quotas[donor] -= 1
            quotas[k] = 1
    return quotas


def _cap(chains: list[Chain], limit: int | None, rng: random.Random) -> list[Chain]:
    """At most ``limit`` chains, drawn per kind by ``rng`` in proportion to the kinds, in original order."""
    if limit is None or len(chains) <= limit:
        return chains
    by_kind = {k: [i for i, c in enumerate(chains) if c.kind == k] for k in _KINDS}
    by_kind = {k: idx for k, idx in by_kind.items() if idx}
    quotas = _quotas({k: len(idx) for k, idx in by_kind.items()}, limit)
    keep = sorted(i for k, idx in by_kind.items() for i in rng.sample(idx, quotas[k]))
    return [chains[i] for i in keep]


def _draw(items: list[_T], limit: int | None, rng: random.Random) -> list[_T]:
    """At most ``limit`` of ``items``, drawn by ``rng``, in their original order."""
    if limit is None or len(items) <= limit:
        return items
    return [items[i] for i in sorted(rng.sample(range(len(items)), limit))]


# ------------------------------------------------------------------------------------------------------------
# Preference pairs and step paths
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """Two trajectories of one tree that share a grounded prefix and then part: one correct, one wrong.

    Attributes:
        question_id: the question the tree was searched for.
        node: the tree node where the branches part: the deepest node on both paths (the root when they share no
            tree step).
        node_value: that node's MCTS value.
        prefix_length: the steps both responses start with: the steps on the path to ``node``.
        chosen: the correct trajectory, whole (its first ``prefix_length`` steps are the shared prefix).
        rejected: the wrong trajectory, whole, really answered by the teacher.
    """

    question_id: str
    node: int
    node_value: float
    prefix_length: int
    chosen: Chain
    rejected: Chain

    def map_points(self, convert: Callable[[Point], Point]) -> Pair:
        """This pair with every point of both responses mapped by ``convert`` (see :meth:`Chain.map_points`)."""
        return replace(self, chosen=self.chosen.map_points(convert), rejected=self.rejected.map_points(convert))


def _parting(tree: Tree, a: ChainSource, b: ChainSource) -> Node:
    """The deepest tree node on the paths of two trajectories (a rollout's path ends at the node it left from)."""
    common = tree.root
    for x, y in zip(tree.path(tree.nodes[a.node]), tree.path(tree.nodes[b.node]), strict=False):
        if x.id != y.id:
            break
        common = x
    return common


def preference_pairs(
    tree: Tree, question_id: str, config: LinearizeConfig | None = None, target_boxes: Sequence[Box] = ()
) -> list[Pair]:
    """Preference pairs of one question's tree: every correct chain (:func:`~trace_forge.search.tree.makes_chain`)
    with every wrong trajectory that was really answered and has a grounded step, parting where their paths do.

    Two different trajectories always part at exactly one node, so each pair is counted once, at the node where the
    tree offered both a correct and a wrong continuation of the same grounded prefix.

    Args:
        tree: the question's search tree (points in the pixel frame).
        question_id: the question's id (also mixed into the cap's seed).
        config: the cap (``max_per_question``), seed and grounding filter (``min_grounding`` applies to the chosen
            response: a wrong response may be ungrounded, which is part of what the pair teaches).
        target_boxes: the question's target boxes (pixel frame), for ``min_grounding``.

    Returns:
        The pairs in (chosen, rejected) trajectory order, deduplicated by their two rendered responses, capped by a
        seeded draw.
    """
    config = config or LinearizeConfig()
    trajectories = _trajectories(tree, question_id)
    chosen = [c for c in _direct_chains(trajectories) if grounded_enough(c.steps, target_boxes, config)]
    rejected = [c for c in trajectories if not c.correct]
    pairs: dict[tuple[str, str], Pair] = {}
    for good in chosen:
        for bad in rejected:
            node = _parting(tree, good.source, bad.source)
            pairs.setdefault((good.render(), bad.render()),
                             Pair(question_id, node.id, node.value, len(tree.steps_to(node)), good, bad))
    rng = random.Random(f"{config.seed}:{question_id}:preference")
    return _draw(list(pairs.values()), config.max_per_question, rng)


@dataclass(frozen=True)
class StepPath:
    """A root-to-leaf path of a tree's step nodes, with what the search learned about each step.

    Attributes:
        question_id: the question the tree was searched for.
        nodes: the tree node of each step, root side first.
        steps: the steps (points in the pixel frame, see :meth:`map_points`).
        values: each node's MCTS value: the mean reward of every trajectory backed up through it.
        visits: how many trajectories each value averages.
    """

    question_id: str
    nodes: tuple[int, ...]
    steps: tuple[Step, ...]
    values: tuple[float, ...]
    visits: tuple[int, ...]

    def labels(self, threshold: float) -> tuple[bool, ...]:
        """Each step good (True) when its value is at least ``threshold``."""
        return tuple(v >= threshold for v in self.values)

    def map_points(self, convert: Callable[[Point], Point]) -> StepPath:
        """This path with every point mapped by ``convert`` and its literal rewritten."""
        return replace(self, steps=_map_steps(self.steps, convert))


def step_paths(tree: Tree, question_id: str, config: LinearizeConfig | None = None) -> list[StepPath]:
    """Every path from the root to a leaf step node, with the nodes' values: one step-level sequence per leaf.

    Only step nodes that a reward was backed up through count (a node never evaluated has no value); a leaf is such
    a node with no such child. Rollout steps are not nodes and carry no value of their own, so they are left out.

    Returns:
        The paths in leaf order, deduplicated by their step texts, capped at ``config.max_per_question`` by a
        seeded draw.
    """
    config = config or LinearizeConfig()

    def valued(node: Node) -> bool:
        return node.step is not None and node.visits > 0

    paths: dict[tuple[str, ...], StepPath] = {}
    for leaf in tree.nodes:
        if not valued(leaf) or any(valued(tree.nodes[c]) for c in leaf.children):
            continue
        nodes = [n for n in tree.path(leaf) if n.step is not None]
        steps = tuple(n.step for n in nodes)
        paths.setdefault(tuple(s.render() for s in steps), StepPath(
            question_id, tuple(n.id for n in nodes), steps, tuple(n.value for n in nodes),
            tuple(n.visits for n in nodes)))
    rng = random.Random(f"{config.seed}:{question_id}:stepwise")
    return _draw(list(paths.values()), config.max_per_question, rng)


@dataclass(frozen=True)
class Turn:
    """One turn of a multi-turn dialog after the question.

    Attributes:
        role: ``"assistant"`` (a zoom call or the final answer) or ``"tool"`` (a zoom observation).
        text: the turn's text.
        zoom: tool turns only: the point the crop is centred on, as the call writes it (rounded, in the chain's
            frame).
    """

    role: Literal["assistant", "tool"]
    text: str
    zoom: tuple[int, int] | None = None


def plan_zooms(steps: Sequence[Step], max_zooms: int) -> tuple[int, ...]:
    """The indices of the steps a dialog zooms on: a step whose point lies farther than :data:`REPEAT_RADIUS_PX`
    from every earlier zoom point, while fewer than ``max_zooms`` zooms were made. ``steps`` are in the pixel
    frame, so the rule means the same whatever frame the dialog is written in.

    Example:
        >>> from trace_forge.grounding import Point
        >>> plan_zooms([Step("a", Point(10, 10)), Step("b", Point(15, 10)), Step("c", Point(90, 10))], 4)
        (0, 2)
    """
    zoomed: list[int] = []
    for i, step in enumerate(steps):
        if len(zoomed) < max_zooms and all(step.point.distance(steps[z].point) > REPEAT_RADIUS_PX for z in zoomed):
            zoomed.append(i)
    return tuple(zoomed)


def dialog_turns(chain: Chain, zoom_steps: Sequence[int], prompts: PromptSet, *, dot: bool) -> list[Turn]:
    """Spread a chain over zoom turns: each step of ``zoom_steps`` thinks, then zooms on its point; the last turn
    answers.

    The text of steps that are not zoomed (repeats, or past the limit) is carried into the next turn's thought,
    so no reasoning is lost; a backtracking connector stays inside the thought it falls in. The final turn
    answers with the thought left over, or the prompts'
    :meth:`~trace_forge.tasks.prompts.PromptSet.closing_thought`. Points are written in the chain's frame.

    Args:
        chain: the chain to spread.
        zoom_steps: which steps zoom (:func:`plan_zooms`).
        prompts: the task's prompt set (the zoom observation text).
        dot: whether the task's crops carry a red dot (changes the observation text).

    Returns:
        Alternating assistant and tool turns, then the final assistant turn.
    """
    turns: list[Turn] = []
    thought: list[str] = []
    zooms = set(zoom_steps)
    for i, step in enumerate(chain.steps):
        if i == chain.connector_index:
            thought.append(chain.connector)
        thought.append(step.render())
        if i in zooms:
            xy = step.point.rounded()
            turns.append(Turn("assistant", render_zoom_turn(" ".join(thought), xy)))
            turns.append(Turn("tool", prompts.zoom_observation(xy, dot), xy))
            thought = []
    if chain.connector_index == len(chain.steps):  # a correct rollout that answered without a new step
        thought.append(chain.connector)
    turns.append(Turn("assistant", render_answer_turn(" ".join(thought) or prompts.closing_thought(), chain.final)))
    return turns
