"""What a search run found and what it cost, read back from its run directory.

Counts come from the trees themselves (nodes, depths, branching, rollouts, correct trajectories) and from the
``stats`` object the search writes with each record (teacher requests and tokens, dead samples, dropped
repeats, stop reasons). A *correct trajectory* is one that linearization turns into a chain
(:func:`~trace_forge.search.tree.makes_chain`), as in the search.

Grounding precision (:class:`Grounding`) is the automatic counterpart of ViGoRL's human study of its points (72.8%
judged accurate): the share of grounded steps whose point lies in a target box (:func:`~trace_forge.tasks.on_target`,
optionally with a margin in pixels), over every step of the trees and over the steps of correct trajectories, each
step counted once. Only questions with target boxes count; a run without any reports no precision (None).

Example:
    >>> stats = run_stats("runs/vstar-sim")  # doctest: +SKIP
    >>> stats.solved, stats.questions  # doctest: +SKIP
    (41, 50)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trace_forge.durable import read_records
from trace_forge.errors import DataError
from trace_forge.search.records import QuestionRecord, StepGrounding, read_questions
from trace_forge.search.store import ERRORS, RUN_JSON, TREES, RunStore
from trace_forge.search.tree import Tree, chain_ends, correct_trajectories

__all__ = ["CategoryStats", "Grounding", "OnTarget", "RunStats", "run_stats", "records_stats"]

# Record-stats counters reported on their own line rather than among the teacher usage totals.
DEAD, DROPPED = "dead", "dropped_repeats"


@dataclass
class CategoryStats:
    """Yield of one benchmark category: questions searched, questions solved, correct trajectories found."""

    questions: int = 0
    solved: int = 0
    correct_trajectories: int = 0

    @property
    def solved_share(self) -> float:
        return self.solved / self.questions if self.questions else 0.0


@dataclass
class OnTarget:
    """On-target steps out of grounded steps."""

    on_target: int = 0
    steps: int = 0

    @property
    def precision(self) -> float | None:
        """The on-target share; None without steps."""
        return self.on_target / self.steps if self.steps else None

    def add(self, flags: Iterable[bool]) -> None:
        for flag in flags:
            self.on_target += flag
            self.steps += 1

    def to_dict(self) -> dict[str, Any]:
        return {"on_target": self.on_target, "steps": self.steps, "precision": self.precision}


@dataclass
class Grounding:
    """Grounding precision of the questions with target boxes.

    Attributes:
        questions: questions with target boxes (the only ones measured).
        all_steps: every step of their trees, tree nodes and rollout steps.
        correct_steps: the steps of their correct trajectories; a tree step shared by several counts once.
    """

    questions: int = 0
    all_steps: OnTarget = field(default_factory=OnTarget)
    correct_steps: OnTarget = field(default_factory=OnTarget)

    def add(self, tree: Tree, flags: StepGrounding) -> None:
        """Count one question's tree, its steps flagged by :meth:`QuestionRecord.step_grounding`."""
        self.questions += 1
        self.all_steps.add([*flags.nodes.values(), *(f for fs in flags.rollouts.values() for f in fs)])
        nodes: set[int] = set()
        rollouts: list[bool] = []
        for node, rollout in chain_ends(tree):
            nodes.update(n.id for n in tree.path(node) if n.step is not None)
            if rollout is not None:
                rollouts += flags.rollouts[(node.id, rollout)]
        self.correct_steps.add([*(flags.nodes[i] for i in sorted(nodes)), *rollouts])

    def to_dict(self) -> dict[str, Any]:
        return {"questions": self.questions, "all_steps": self.all_steps.to_dict(),
                "correct_steps": self.correct_steps.to_dict()}


@dataclass
class RunStats:
    """Totals over the finished questions of a run.

    Attributes:
        questions: finished questions (records in ``trees.jsonl``).
        solved: questions with at least one correct trajectory.
        failed: questions that ended in an error (``errors.jsonl``) and were never finished.
        nodes: tree nodes written by the teacher (roots, which are the questions, not counted).
        depth_histogram: nodes by depth (1 = children of the root).
        branching_histogram: expanded nodes by their number of children (0 = a dead end).
        rollouts: rollouts over all nodes; ``rollouts_correct`` of them with reward >= 1.
        terminals: terminal (answer) nodes; ``terminals_correct`` of them with reward >= 1.
        correct_trajectories: rollouts and terminal nodes that become training chains (correct, answered, at
            least one grounded step; see :func:`~trace_forge.search.tree.makes_chain`).
        dead: teacher samples that were neither a grounded step nor an answer (record stats).
        dropped: children dropped because their point repeated one of their path or a sibling (record stats).
        stop_reasons: why each question's search ended (record stats ``stopped``).
        usage: every other numeric record-stats counter summed over questions (requests, tokens, seconds,
        ...).
        categories: per-category yield.
        teacher: the teacher as ``run.json`` describes it.
        run_usage: the teacher client's usage counters as the search wrote them to ``run.json`` (``usage``:
            requests, retries, cache hits, cost, ...), numeric ones only.
        grounding_margin: the margin (pixels) of the on-target test.
        grounding: grounding precision over the questions with target boxes.
        grounding_categories: the same per category (categories with target boxes only).
    """

    questions: int = 0
    solved: int = 0
    failed: int = 0
    nodes: int = 0
    depth_histogram: dict[int, int] = field(default_factory=dict)
    branching_histogram: dict[int, int] = field(default_factory=dict)
    rollouts: int = 0
    rollouts_correct: int = 0
    terminals: int = 0
    terminals_correct: int = 0
    correct_trajectories: int = 0
    dead: int = 0
    dropped: int = 0
    stop_reasons: dict[str, int] = field(default_factory=dict)
    usage: dict[str, float] = field(default_factory=dict)
    categories: dict[str, CategoryStats] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)
    run_usage: dict[str, float] = field(default_factory=dict)
    grounding_margin: float = 0.0
    grounding: Grounding = field(default_factory=Grounding)
    grounding_categories: dict[str, Grounding] = field(default_factory=dict)

    @property
    def solved_share(self) -> float:
        return self.solved / self.questions if self.questions else 0.0

    @property
    def rollout_accuracy(self) -> float:
        return self.rollouts_correct / self.rollouts if self.rollouts else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: every field plus the derived shares; histogram keys become strings (JSON objects); grounding
        under ``grounding_precision`` (``margin_px``, ``questions``, ``all_steps`` and ``correct_steps`` with
        ``on_target``, ``steps`` and ``precision``, and the same per category)."""
        out = asdict(self)
        for name in ("grounding_margin", "grounding", "grounding_categories"):
            del out[name]
        out["grounding_precision"] = {
            "margin_px": self.grounding_margin, **self.grounding.to_dict(),
            "categories": {name: g.to_dict() for name, g in self.grounding_categories.items()},
        }
        out["depth_histogram"] = {str(k): v for k, v in self.depth_histogram.items()}
        out["branching_histogram"] = {str(k): v for k, v in self.branching_histogram.items()}
        out["categories"] = {
            name: {**asdict(c), "solved_share": c.solved_share} for name, c in self.categories.items()
        }
        out.update(
            solved_share=self.solved_share,
            rollout_accuracy=self.rollout_accuracy,
        )
        return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def records_stats(records: list[QuestionRecord], grounding_margin: float = 0.0) -> RunStats:
    """:class:`RunStats` of ``trees.jsonl`` records (``failed``, ``teacher`` and ``run_usage`` are left
    empty); a step is on target within ``grounding_margin`` pixels of a target box."""
    s = RunStats(questions=len(records), grounding_margin=grounding_margin)
    depths: Counter[int] = Counter()
    branching: Counter[int] = Counter()
    stops: Counter[str] = Counter()
    usage: Counter[str] = Counter()
    categories: dict[str, CategoryStats] = {}
    for record in records:
        tree = record.tree
        correct = correct_trajectories(tree)
        s.correct_trajectories += correct
        for node in tree.nodes[1:]:
            depths[node.depth] += 1
        for node in tree.nodes:
            if node.expanded:
                branching[len(node.children)] += 1
            if node.terminal:
                s.terminals += 1
                s.terminals_correct += (node.reward or 0) >= 1
            s.rollouts += len(node.rollouts)
            s.rollouts_correct += sum(r.reward >= 1 for r in node.rollouts)
        s.nodes += len(tree.nodes) - 1
        s.solved += correct > 0
        cat = categories.setdefault(record.question.category or "-", CategoryStats())
        cat.questions += 1
        cat.solved += correct > 0
        cat.correct_trajectories += correct
        flags = record.step_grounding(grounding_margin)
        if flags is not None:
            s.grounding.add(tree, flags)
            s.grounding_categories.setdefault(record.question.category or "-", Grounding()).add(tree, flags)
        counters = record.stats
        s.dead += int(counters.get(DEAD, 0))
        s.dropped += int(counters.get(DROPPED, 0))
        if isinstance(counters.get("stopped"), str):
            stops[counters["stopped"]] += 1
        # "correct" in the record stats repeats what the tree says; the tree is the source counted above.
        usage.update(
            {k: v for k, v in counters.items() if _number(v) and k not in (DEAD, DROPPED, "correct")}
        )
    s.depth_histogram = dict(sorted(depths.items()))
    s.branching_histogram = dict(sorted(branching.items()))
    s.stop_reasons = dict(sorted(stops.items()))
    s.usage = dict(sorted(usage.items()))
    s.categories = dict(sorted(categories.items()))
    s.grounding_categories = dict(sorted(s.grounding_categories.items()))
    return s


def run_stats(run_dir: str | Path, grounding_margin: float = 0.0) -> RunStats:
    """:class:`RunStats` of a run directory: ``trees.jsonl``, ``errors.jsonl`` and ``run.json``; a step is on
    target within ``grounding_margin`` pixels of a target box.

    Raises:
        DataError: ``run_dir`` has neither ``trees.jsonl`` nor ``run.json``, or a file is corrupt.
    """
    root = Path(run_dir)
    if not (root / TREES).exists() and not (root / RUN_JSON).exists():
        raise DataError("not a run directory (no trees.jsonl or run.json)", path=root)
    records = [record for _, record in read_questions(root / TREES)]
    stats = records_stats(records, grounding_margin)
    finished = {r.id for r in records}
    stats.failed = len({e["question_id"] for e in read_records(root / ERRORS)} - finished)
    run = RunStore(root).read_run()
    stats.teacher = run.teacher if run is not None else {}
    stats.run_usage = {k: v for k, v in sorted((run.usage if run is not None else {}).items()) if _number(v)}
    return stats
