"""VisualProbe: the three level folders, level splits, bad records, Mini-o3's judge-free rule, and accuracy per level
computed by hand."""

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from trace_forge.errors import ConfigError, DataError
from trace_forge.tasks import AnswerKind, Sample, get_task

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples" / "visualprobe"


def make_levels(root: Path, hard_rows: list[dict]) -> Path:
    for level in ("Easy", "Medium", "Hard"):
        folder = root / f"VisualProbe_{level}"
        (folder / "data").mkdir(parents=True)
        Image.new("RGB", (64, 48)).save(folder / "data" / "a.jpg")
        rows = hard_rows if level == "Hard" else [
            {"images": [f"VisualProbe_{level}/data/a.jpg"], "doc_id": "0", "problem": "<image>\nWhat?",
             "solution": "red"}]
        (folder / "val.json").write_text(json.dumps(rows))
    return root


def test_bundled_levels():
    task = get_task("visualprobe")
    samples = list(task.load(SAMPLES))
    assert [s.id for s in samples] == ["easy/0", "easy/1", "medium/0", "medium/1", "hard/0", "hard/1"]
    assert [s.category for s in samples] == ["easy", "easy", "medium", "medium", "hard", "hard"]
    assert not task.skipped and all(s.answer_kind is AnswerKind.TEXT and s.options == [] for s in samples)
    assert all("<image>" not in s.question and s.question.endswith(("?", "letter.")) for s in samples)
    # easy/1 names its image relative to its level folder; the others from the folder above.
    assert samples[1].images == [SAMPLES / "VisualProbe_Easy" / "data" / "easy_1.jpg"]
    assert samples[0].images == [SAMPLES / "VisualProbe_Easy" / "data" / "easy_0.jpg"]
    assert [s.canvas().size for s in samples[::2]] == [(420, 300), (520, 362), (610, 410)]
    assert samples[3].answer in ("left", "right") and samples[5].answer in ("A", "B", "C")
    for sample in samples:
        assert task.score(sample, sample.answer) == 1.0
    assert [s.id for s in task.load(SAMPLES, split="hard")] == ["hard/0", "hard/1"]
    with pytest.raises(ConfigError, match="no split 'val'; its splits: all, easy, medium, hard"):
        task.load(SAMPLES, split="val")


def test_missing_level_folder_and_bad_records(tmp_path):
    with pytest.raises(DataError, match=r"missing VisualProbe_Easy/val\.json"):
        get_task("visualprobe").load(tmp_path)
    ok = {"images": ["VisualProbe_Hard/data/a.jpg"], "doc_id": "7", "problem": "<image> Which sign?", "solution": 3}
    root = make_levels(tmp_path, [
        ok,
        {**ok, "doc_id": "8", "solution": "  "},
        {**ok, "doc_id": "9", "problem": "<image>"},
        {**ok, "doc_id": "10", "images": "VisualProbe_Hard/data/a.jpg"},
        {**ok, "doc_id": "11", "images": ["VisualProbe_Hard/data/gone.jpg"]},
    ])
    with pytest.raises(DataError, match=r"VisualProbe_Hard/val\.json: record 1: field 'solution' must be a non-empty"):
        list(get_task("visualprobe").load(root, split="hard"))
    task = get_task("visualprobe")
    kept = list(task.load(root, split="hard", skip_bad=True))
    assert [(s.id, s.answer, s.question) for s in kept] == [("hard/7", "3", "Which sign?")]
    assert task.skipped == Counter({"bad field 'solution'": 1, "bad field 'problem'": 1, "bad field 'images'": 1,
                                    "missing image": 1})


@pytest.mark.parametrize(
    ("solution", "answer", "expected"),
    [
        ("Jptica", "jptica.", 1.0),  # case and surrounding punctuation ignored (the rule compares exactly)
        ("Jptica", "The sign says Jptica", 0.0),  # no partial credit without the judge
        ("B", "(B) the blue one", 1.0),  # Mini-o3's letter rule
        ("B", "B. blue", 1.0),
        ("B", "b", 1.0),
        ("B", "(C) green", 0.0),
        ("B", "Blue", 0.0),  # "B" followed by a letter is no letter answer
        ("red", None, 0.0),
    ],
)
def test_judge_free_rule(solution, answer, expected):
    sample = Sample("hard/1", "visualprobe", [], "Which?", AnswerKind.TEXT, answer=solution, category="hard")
    assert get_task("visualprobe").score(sample, answer) == expected


def test_aggregate_per_level_by_hand():
    results = [(Sample(f"{level}/{k}", "visualprobe", [], "q", AnswerKind.TEXT, answer="x", category=level), s)
               for level, scores in (("easy", [1, 1, 0, 1]), ("hard", [0, 1])) for k, s in enumerate(scores)]
    assert get_task("visualprobe").aggregate(results) == pytest.approx({"overall": 4 / 6, "easy": 0.75, "hard": 0.5})
