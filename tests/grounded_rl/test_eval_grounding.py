"""`grounded-rl eval` reports the grounding precision of the model's own points on scripted answers whose points are
known to be on or off the target boxes, says when it does not apply, and gives TreeBench its evidence mIoU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from grounded_rl.eval import SAMPLES_FILE, SUMMARY_FILE, SUMMARY_MD, EvalConfig
from tests.grounded_rl.test_eval import SAMPLES, Script, config, load, run, serve, zoom_reply
from tests.trace_forge.fake_servers import FakeOpenAIServer, Request
from trace_forge.durable import read_records
from trace_forge.tasks import get_task


def _think(points: list[tuple[int, int]], extra: str = "") -> str:
    return "<think>\n" + " ".join(f"Here ({x}, {y})." for x, y in points) + extra + "\n</think>\n"


def test_single_turn_reasoning_points_per_category(tmp_path: Path) -> None:
    """V*: each direct-attribute answer names its box's centre and (5, 5) (1 of 2 on target); each relative-position
    answer names both boxes' centres and (5, 5) (2 of 3)."""
    samples = load("vstar")
    script = Script(samples)

    def reply(request: Request, k: int) -> str:
        _, sample, geometry = script.lookup(request)
        points = [box.center.to("model", geometry).rounded() for box in sample.target_boxes] + [(5, 5)]
        return _think(points) + f"<answer> {sample.answer} </answer>"

    with FakeOpenAIServer(reply_text=reply) as server:
        summary = run(config("vstar"), server, tmp_path)
    g = summary["grounding"]
    assert g["applicable"] and g["margin_px"] == 0 and g["questions"] == 10
    assert g["overall"]["reasoning"] == {"on_target": 14, "points": 24, "precision": 14 / 24}
    assert g["overall"]["zoom"] == {"on_target": 0, "points": 0, "precision": None}
    assert g["overall"]["all"] == g["overall"]["reasoning"]
    assert {name: c["reasoning"]["on_target"] / c["reasoning"]["points"] for name, c in g["categories"].items()} == {
        "direct_attributes": 6 / 12, "relative_position": 8 / 12}
    records = list(read_records(tmp_path / SAMPLES_FILE))
    assert all(len(r["step_points"]) == len(r["points"]) for r in records)  # single-turn: every point a step
    md = (tmp_path / SUMMARY_MD).read_text()
    assert "## Grounding precision" in md and "| overall | 58.33 (14/24) | - | 58.33 (14/24) |" in md
    assert json.loads((tmp_path / SUMMARY_FILE).read_text())["grounding"] == g
    assert "evidence_miou" not in summary
    # The margin only rescores: a rerun with one wide enough to take in (5, 5) asks nothing and counts every point.
    requests = server.request_count
    with FakeOpenAIServer(reply_text=reply) as again:
        wide = run(config("vstar", grounding_margin=10_000), again, tmp_path)["grounding"]
    assert again.request_count == 0 and server.request_count == requests
    assert wide["margin_px"] == 10_000 and wide["overall"]["reasoning"] == {"on_target": 24, "points": 24,
                                                                            "precision": 1.0}


def test_multi_turn_zoom_points_are_counted_apart(tmp_path: Path) -> None:
    """Turn 1 reasons and zooms on the target's centre; turn 2 reasons on (10, 12), off target, and answers."""
    samples = load("vstar", limit=2)
    script = Script(samples)

    def reply(request: Request, k: int) -> str:
        _, sample, geometry = script.lookup(request)
        if len(request.images) == 1:
            return zoom_reply(sample.target_boxes[0].center.to("model", geometry).rounded())
        return script.answer(sample, geometry, right=True).replace("\n", " ")

    with FakeOpenAIServer(reply_text=reply) as server:
        summary = run(config("vstar", multi_turn=True, limit=2), server, tmp_path)
    overall = summary["grounding"]["overall"]
    assert overall["reasoning"] == {"on_target": 2, "points": 4, "precision": 0.5}
    assert overall["zoom"] == {"on_target": 2, "points": 2, "precision": 1.0}
    assert overall["all"] == {"on_target": 4, "points": 6, "precision": 4 / 6}


def test_benchmarks_without_boxes_say_grounding_does_not_apply(tmp_path: Path) -> None:
    samples = load("sat2")
    with serve(Script(samples)) as server:
        summary = run(config("sat2"), server, tmp_path)
    assert summary["grounding"] == {"applicable": False, "reason": "the benchmark's samples carry no target boxes"}
    assert "Not applicable: the benchmark's samples carry no target boxes." in (tmp_path / SUMMARY_MD).read_text()


def test_treebench_reports_the_evidence_miou_per_category(tmp_path: Path) -> None:
    """Question 0 writes every evidence box (IoU 1), 1 the first of its two (1/2), 2 none (0), 3 both (1)."""
    data = SAMPLES / "treebench"
    samples = list(get_task("treebench").load(data_dir=data))
    script = Script(samples)
    written = {0: None, 1: 1, 2: 0, 3: None}  # how many evidence boxes each question writes (None: all)

    def reply(request: Request, k: int) -> str:
        i, sample, _ = script.lookup(request)
        boxes = sample.target_boxes[: written[i]]
        tags = "".join(f" <box>[{b.x1:.0f},{b.y1:.0f},{b.x2:.0f},{b.y2:.0f}]</box>" for b in boxes)
        return _think([sample.target_boxes[0].center.rounded()], tags) + f"<answer> {sample.answer} </answer>"

    cfg = EvalConfig(task="treebench", model="scripted", data_dir=str(data), backend="openai")
    with FakeOpenAIServer(reply_text=reply) as server:
        summary = run(cfg, server, tmp_path)
    categories = [s.category for s in samples]
    assert summary["evidence_miou"] == pytest.approx({"overall": 2.5 / 4, **dict(zip(categories, [1.0, 0.5, 0.0, 1.0],
                                                                                    strict=True))})
    assert summary["metrics"]["avg@1"]["overall"] == 1.0
    assert summary["grounding"]["overall"]["reasoning"]["precision"] == 1.0
    md = (tmp_path / SUMMARY_MD).read_text()
    assert "## Evidence boxes (TreeBench mIoU)" in md and "| overall | 62.50 |" in md
