"""The synthetic task of ``benchmarks/grpo_learning.py``: its warm-start traces keep the trace dataset contract and
earn the full reward, and its GRPO questions are fresh images scored by the official verifier."""

from __future__ import annotations

from benchmarks.grpo_learning import COLUMNS, RED, SIDE, SIZE, make_data
from grounded_rl.rewards import accuracy_reward, format_reward
from trace_forge.dataset import load_traces
from trace_forge.grounding import Point
from trace_forge.tasks import get_task


def test_traces_and_questions(tmp_path):
    traces, questions = make_data(tmp_path, seed=3, n_sft=6, n_grpo=4)

    rows = load_traces(traces, "train")  # raises on a column the contract lacks
    n = len(rows)
    assert n == 6 and set(rows["mode"]) == {"single"} and set(rows["image_size"][0]) == {SIZE}
    texts = [row["messages"][-1]["content"][0]["text"] for row in rows]
    columns = dict(task=rows["task"], task_options=rows["task_options"], answer_kind=["point"] * n,
                   target_boxes=rows["target_boxes"], image_size=rows["image_size"], model_size=rows["image_size"],
                   frame=["model"] * n)
    assert format_reward(texts, **columns) == [1.0] * n
    assert accuracy_reward(texts, **columns) == [1.0] * n
    # The same answers given to the next question's box mostly miss: the traces are specific to their image.
    shifted = {**columns, "target_boxes": columns["target_boxes"][1:] + columns["target_boxes"][:1]}
    assert sum(accuracy_reward(texts, **shifted)) < n

    task = get_task("generic", **COLUMNS)
    samples = list(task.load(questions))
    assert len(samples) == 4 and {s.id for s in samples}.isdisjoint(rows["question_id"])
    for sample in samples:
        box, canvas = sample.target_boxes[0], sample.canvas()
        assert canvas.size == (SIZE, SIZE) and (box.x2 - box.x1, box.y2 - box.y1) == (SIDE, SIDE)
        centre = box.center
        assert canvas.getpixel((int(centre.x), int(centre.y))) == RED
        assert task.score(sample, centre) == 1.0
        assert task.score(sample, Point(box.x2 + 1, box.y2 + 1)) == 0.0
