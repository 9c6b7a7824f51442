"""Hand-built search trees, trees.jsonl records and run directories for tests.

:func:`example_tree` is the reference tree of the linearization tests; its docstring states what it must
linearize to. Records and run directories follow the search engine's contract (see
``trace_forge.search.records``) and point at the bundled V* samples, so datasets built from them have real
canvases.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trace_forge.grounding import Point, Step
from trace_forge.search.records import Question, QuestionRecord, RunRecord, store_images
from trace_forge.search.store import RunStore
from trace_forge.search.tree import Rollout, Tree, backup
from trace_forge.tasks import Sample, TaskSpec, get_task
from trace_forge.tasks.prompts import PROMPT_VERSION

VSTAR_DIR = Path(__file__).resolve().parents[2] / "data" / "samples" / "vstar"
TEACHER = {"backend": "openai", "model": "Qwen/Qwen2.5-VL-72B-Instruct", "simulated": False}
VSTAR = TaskSpec("vstar")


def step(x: float, y: float, text: str | None = None) -> Step:
    """A step whose text names its point inline: ``"Look at (x, y)."`` unless ``text`` is given."""
    point = Point(x, y)
    return Step(text if text is not None else f"Look at ({round(x)}, {round(y)}).", point)


def rollout(
    points: list[tuple[float, float]], answer: str, reward: float, *, answered: bool = True
) -> Rollout:
    """A rollout through ``points`` (default step texts) ending in ``answer``."""
    return Rollout([step(x, y) for x, y in points], answer, reward, answered=answered)


def add_rollout(tree: Tree, node_id: int, r: Rollout) -> Rollout:
    """Store ``r`` on a node and back its reward up, as the search does."""
    node = tree.nodes[node_id]
    node.rollouts.append(r)
    backup(tree, node, r.reward)
    return r


def example_tree() -> Tree:
    """root -> A -> B -> T, with rollouts; answers are V* option texts, ``"white"`` being correct.

    - root: one wrong rollout ``[(500, 500)] -> "red"`` (no correct continuation: no backtracking there).
    - A = (100, 100): rollouts r0 correct ``[(110, 220), (120, 330)] -> "white"``, r1 wrong
      ``[(300, 300)] -> "red"``, r2 wrong ``[(400, 400), (410, 420)] -> "black"``.
    - B = (200, 200) under A: rollouts r0 correct ``[(250, 260)] -> "white"``, r1 wrong with no step
      ``-> "red"``.
    - T under B: terminal ``"white"``, reward 1.

    Linearizes to 3 direct chains (A.r0, B.r0, T) and 2 backtracking chains at A ((r1, r0) and (r2, r0));
    B has no backtracking chain because its wrong rollout has no step.
    """
    tree = Tree()
    a = tree.add_child(tree.root, step=step(100, 100, "The ring is near the table (100, 100)."))
    b = tree.add_child(a, step=step(200, 200, "The ring looks white here (200, 200)."))
    t = tree.add_child(b, answer="white", reward=1.0)
    for node in (tree.root, a, b):
        node.expanded = True
    add_rollout(tree, 0, rollout([(500, 500)], "red", 0.0))
    add_rollout(tree, a.id, rollout([(110, 220), (120, 330)], "white", 1.0))
    add_rollout(tree, a.id, rollout([(300, 300)], "red", 0.0))
    add_rollout(tree, a.id, rollout([(400, 400), (410, 420)], "black", 0.0))
    add_rollout(tree, b.id, rollout([(250, 260)], "white", 1.0))
    add_rollout(tree, b.id, rollout([], "red", 0.0))
    backup(tree, t, 1.0)
    return tree


def vstar_samples() -> dict[str, Sample]:
    """The bundled V* samples by id."""
    return {s.id: s for s in get_task("vstar").load(data_dir=VSTAR_DIR)}


def make_record(
    tree: Tree,
    sample: Sample,
    *,
    task: TaskSpec = VSTAR,
    image_size: tuple[int, int] | None = None,
    data_dir: Path | None = VSTAR_DIR,
    run_dir: Path | None = None,
    teacher: dict[str, Any] | None = None,
) -> QuestionRecord:
    """A trees.jsonl record for ``sample`` holding ``tree`` (``image_size``: the real canvas by default)."""
    images = store_images(sample, run_dir or Path("/nonexistent"), data_dir)
    return QuestionRecord(
        question=Question.of(sample, task, images, image_size or sample.canvas().size),
        tree=tree,
        teacher=dict(teacher or TEACHER),
        prompt_version=PROMPT_VERSION,
        stats={"nodes": len(tree.nodes), "rollouts": sum(len(n.rollouts) for n in tree.nodes)},
    )


def write_run(
    run_dir: Path,
    records: list[QuestionRecord],
    *,
    task: TaskSpec = VSTAR,
    data_dir: Path | None = VSTAR_DIR,
    teacher: dict[str, Any] | None = None,
    params: dict[str, Any] | None = None,
) -> Path:
    """A run directory with ``run.json`` and one trees.jsonl line per record, in order."""
    store = RunStore(run_dir)
    store.write_run(RunRecord(
        task=task,
        params=dict(params or {"simulations": 8, "rollouts": 2}),
        teacher=dict(teacher or TEACHER),
        prompt_version=PROMPT_VERSION,
        data_dir=str(data_dir) if data_dir is not None else None,
        command="trace-forge search",
        versions={"trace_forge": "0.1.0"},
    ))
    for record in records:
        store.append(record)
    return run_dir


GENERIC_OPTIONS = {"id": "uid", "image": "img", "question": "q", "options": "choices", "answer": "gold",
                   "boxes": "bb", "category": "kind"}


def write_generic_run(run_dir: Path, data_dir: Path) -> tuple[Path, Sample]:
    """A run of the ``generic`` task over a one-question JSONL whose columns only ``GENERIC_OPTIONS`` maps; the
    question reuses a V* image so :func:`example_tree` fits its canvas."""
    import json

    ring = vstar_samples()["direct_attributes/sa_4666"]  # the ring question of example_tree
    row = {"uid": "g1", "img": str(ring.images[0]), "q": ring.question, "choices": ring.options,
           "gold": ring.answer, "bb": [b.to_list() for b in ring.target_boxes], "kind": "mapped"}
    data_dir.mkdir(parents=True)
    (data_dir / "bench.jsonl").write_text(json.dumps(row) + "\n")
    spec = TaskSpec("generic", GENERIC_OPTIONS)
    (sample,) = spec.build().load(data_dir / "bench.jsonl")
    record = make_record(example_tree(), sample, task=spec, data_dir=data_dir)
    write_run(run_dir, [record], task=spec, data_dir=data_dir)
    return run_dir, sample
