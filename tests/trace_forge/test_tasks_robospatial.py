"""RoboSpatial-Home: the exported JSON layout, category splits, the pointing rows skipped, bad records, the official
yes/no reading, and micro accuracy and VQA average computed by hand."""

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import ImageGeometry
from trace_forge.tasks import AnswerKind, Sample, get_task, score_answer
from trace_forge.tasks.robospatial import robospatial_choice

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples" / "robospatial"


def test_bundled_annotations():
    task = get_task("robospatial")
    samples = list(task.load(SAMPLES))
    assert [s.id for s in samples] == ["annotations_0", "annotations_1", "annotations_2", "annotations_3"]
    assert task.skipped == Counter({"context (pointing)": 1})
    assert [s.category for s in samples] == ["configuration", "configuration", "compatibility", "compatibility"]
    assert [s.answer for s in samples] == ["yes", "no", "yes", "no"]  # "Yes" in the file, lower-cased
    assert all(s.options == ["yes", "no"] and s.answer_kind is AnswerKind.OPTION for s in samples)
    assert samples[0].images == [SAMPLES / "images" / "img_configuration_0.png"]
    assert samples[0].canvas().size == (512, 384)
    assert [s.id for s in task.load(SAMPLES, split="compatibility")] == ["annotations_2", "annotations_3"]
    assert len(list(task.load(SAMPLES, split="configuration"))) == 2
    with pytest.raises(ConfigError, match="no split 'context'"):
        task.load(SAMPLES, split="context")


def test_needs_the_exported_folder(tmp_path):
    with pytest.raises(ConfigError, match="download_benchmark.py"):
        get_task("robospatial").load()
    with pytest.raises(DataError, match=r"no \*\.json annotation files"):
        get_task("robospatial").load(tmp_path)


def test_bad_records_are_one_line_errors_or_counted_skips(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (64, 48)).save(tmp_path / "images" / "a.png")
    ok = {"category": "configuration", "question": "Is the cup left of the plate?", "answer": "yes",
          "img": "images/a.png"}
    rows = [ok, {**ok, "answer": "left"}, {**ok, "category": "navigation"}, {**ok, "img": "images/b.png"},
            {**ok, "question": ""}]
    (tmp_path / "annotations.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"annotations\.json: record 1: answer 'left' is not yes or no$"):
        list(get_task("robospatial").load(tmp_path))
    task = get_task("robospatial")
    assert [s.id for s in task.load(tmp_path, skip_bad=True)] == ["annotations_0"]
    assert task.skipped == Counter({"bad answer": 1, "bad field 'category'": 1, "missing image": 1,
                                    "bad field 'question'": 1})


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("yes", 0),
        ("Yes, the mug is to the left.", 0),
        ("  NO.", 1),
        ("Not sure", 1),  # the official startswith("no") reads it as no
        ("nope", 1),
        ("yesterday", 0),
        ("The answer is yes", None),  # must start with it
        ("A", None),  # no option letters: the official script reads none
        ("maybe", None),
    ],
)
def test_official_yes_no_reading(answer, expected):
    assert robospatial_choice(answer) == expected


def test_score_through_the_one_scoring_path():
    task = get_task("robospatial")
    sample = Sample("r1", "robospatial", [], "Is it left?", AnswerKind.OPTION, ["yes", "no"], "no")
    geometry = ImageGeometry(64, 48, 64, 48)
    assert score_answer(task, sample, "No, it is on the right.", geometry, "pixel").score == 1.0
    assert score_answer(task, sample, "B", geometry, "pixel").problems == ("no_option",)


def test_aggregate_micro_and_vqa_average_by_hand():
    results = [(Sample(f"{c}{k}", "robospatial", [], "q", AnswerKind.OPTION, ["yes", "no"], "yes", category=c), s)
               for c, scores in (("configuration", [1, 1, 1, 0]), ("compatibility", [0, 1])) for k, s in
               enumerate(scores)]
    assert get_task("robospatial").aggregate(results) == pytest.approx(
        {"overall": 4 / 6, "vqa_avg": (0.75 + 0.5) / 2, "configuration": 0.75, "compatibility": 0.5}
    )
