"""TreeBench: the TSV with evidence boxes, bad rows, the official letter match, TreeVGR's box reading and mIoU, and
the official aggregation computed by hand."""

from collections import Counter
from pathlib import Path

import pytest

from tests.trace_forge.test_tasks_vlmeval import b64_png, write_tsv
from trace_forge.errors import DataError
from trace_forge.grounding import Box, Frame
from trace_forge.tasks import AnswerKind, Sample, get_task, metrics
from trace_forge.tasks.treebench import box_iou, evidence_iou, read_boxes

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples" / "treebench"


def tree_row(index: int, **overrides) -> dict:
    row = {"index": index, "image": b64_png((80, 60)), "question": "What color is the cup?", "A": "red",
           "B": "blue", "answer": "B", "category": "Perception/Attributes", "target_instances": "[[10, 5, 30, 25]]"}
    return {**row, **overrides}


def test_bundled_tsv_with_evidence_boxes():
    task = get_task("treebench")
    samples = list(task.load(SAMPLES))
    assert [s.id for s in samples] == ["0", "1", "2", "3"] and not task.skipped
    assert [s.category for s in samples] == ["Perception/Attributes", "Reasoning/Perspective Transform",
                                             "Perception/OCR", "Reasoning/Comparison"]
    assert [len(s.options) for s in samples] == [4, 2, 4, 3]  # empty C / D columns end the options
    assert [len(s.target_boxes) for s in samples] == [1, 2, 1, 2]
    attributes, perspective, ocr, _ = samples
    assert perspective.target_boxes[0] == attributes.target_boxes[0]
    assert perspective.canvas().tobytes() == attributes.canvas().tobytes()  # row 1's image cell names row 0
    assert ocr.answer == ocr.options[0] and ocr.answer.isdigit()
    for sample in samples:
        width, height = sample.canvas().size
        for box in sample.target_boxes:
            assert box.frame is Frame.PIXEL and 0 <= box.x1 < box.x2 <= width and 0 <= box.y1 < box.y2 <= height
        label = "ABCD"[sample.options.index(sample.answer)]
        assert task.score(sample, label) == 1.0 and task.score(sample, label.lower()) == 1.0
        assert task.score(sample, sample.answer) == 1.0
    assert task.aggregate([(s, 1.0) for s in samples])["overall"] == 1.0


def test_bad_rows_are_one_line_errors_or_counted_skips(tmp_path):
    rows = [tree_row(0), tree_row(1, target_instances="[[10, 5, 30"), tree_row(2, target_instances="[[30, 5, 10, 25]]"),
            tree_row(3, target_instances="7"), tree_row(4, answer="D"), tree_row(5, target_instances="[]")]
    path = write_tsv(tmp_path / "TreeBench.tsv", rows)
    with pytest.raises(DataError, match=r"TreeBench\.tsv:3: target_instances is not a list literal"):
        list(get_task("treebench").load(tmp_path))
    task = get_task("treebench")
    kept = list(task.load(path, skip_bad=True))
    assert [s.id for s in kept] == ["0", "5"] and kept[1].target_boxes == []  # no evidence: allowed, IoU 0
    assert task.skipped == Counter({"bad field 'target_instances'": 3, "bad answer": 1})


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ("<box>[10,20,50,60]</box>", [Box(10, 20, 50, 60)]),
        ("<box> [1,2,3,4] the cup</box> and <box>\n[5,6,7,8]\n</box>", [Box(1, 2, 3, 4), Box(5, 6, 7, 8)]),
        ("<box>[10, 20, 50, 60]</box>", []),  # spaces: the official pattern does not match
        ("<box>[10.5,20,50,60]</box>", []),  # floats neither
        ("<box>the cup [10,20,50,60]</box>", []),  # the box must open the tag's content
        ("<box>[50,20,10,60]</box><box>[10,20,10,60]</box>", []),  # x1 < x2 and y1 < y2, strictly
        ("[10,20,50,60]", []),  # outside a <box> tag
    ],
)
def test_read_boxes_as_treevgr(response, expected):
    assert read_boxes(response) == expected


def test_box_iou_and_evidence_iou_by_hand():
    assert box_iou(Box(0, 0, 10, 10), Box(0, 0, 10, 10)) == 1.0
    assert box_iou(Box(0, 0, 10, 10), Box(10, 0, 20, 10)) == 0.0  # touching edges share no area
    assert box_iou(Box(0, 0, 4, 4), Box(2, 2, 6, 6)) == pytest.approx(4 / 28)
    assert box_iou(Box(3, 3, 3, 3), Box(3, 3, 3, 3)) == 0.0  # empty union
    with pytest.raises(ValueError, match="frames"):
        box_iou(Box(0, 0, 1, 1), Box(0, 0, 1, 1, "norm1000"))
    evidence = [Box(0, 0, 10, 10), Box(20, 0, 30, 10)]
    predicted = [Box(0, 0, 10, 5), Box(0, 0, 10, 10), Box(25, 0, 35, 10)]
    # first target: best of 0.5, 1.0, 0 -> 1.0; second: best of 0, 0, 5/15 -> 1/3
    assert evidence_iou(predicted, evidence) == pytest.approx((1.0 + 1 / 3) / 2)
    assert evidence_iou([], evidence) == 0.0 and evidence_iou(predicted, []) == 0.0
    # The benchmark's mIoU: the mean over questions, one without evidence counting 0.
    per_question = [evidence_iou(read_boxes("<box>[0,0,10,10]</box>"), evidence), evidence_iou(predicted, [])]
    assert metrics.mean(per_question) == pytest.approx(0.25)


def test_every_answer_the_official_exact_match_takes_is_read_the_same():
    sample = Sample("1", "treebench", [], "Which?", AnswerKind.OPTION, ["left", "right"], "right")
    task = get_task("treebench")
    assert [task.score(sample, a) for a in ("B", "b", " B ", "A", "C")] == [1, 1, 1, 0, 0]
    # Beyond it: the option's text (what our prompts ask for), and a letter written with that same text.
    assert [task.score(sample, a) for a in ("right", "B right", "B left", "left")] == [1, 1, 0, 0]


def _scored(category: str, scores: list[float]) -> list[tuple[Sample, float]]:
    return [(Sample(f"{category}{k}", "treebench", [], "q", AnswerKind.OPTION, category=category), s)
            for k, s in enumerate(scores)]


def test_aggregate_by_hand():
    results = _scored("Perception/OCR", [1, 1, 0]) + _scored("Reasoning/Ordering", [0])
    assert get_task("treebench").aggregate(results) == pytest.approx(
        {"overall": 0.5, "Perception/OCR": 2 / 3, "Reasoning/Ordering": 0.0}
    )
