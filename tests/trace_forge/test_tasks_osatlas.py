"""OS-Atlas grounding data: ViGoRL's RL JSONL files and OS-Atlas's own JSON (fractional boxes, grouped elements),
bad records, point-in-box scoring, and the aggregation computed by hand."""

import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import GUI_ZOOM, Box, Point
from trace_forge.tasks import AnswerKind, Sample, get_task

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples" / "osatlas"


def test_bundled_vigorl_files():
    task = get_task("osatlas")
    assert task.zoom == GUI_ZOOM and task.default_split == "train"
    train = list(task.load(SAMPLES))
    val = list(task.load(SAMPLES / "web_grounding", split="val"))  # web_grounding/ itself works too
    assert len(train) == 7 and len(val) == 2 and not task.skipped
    assert len({s.id for s in train + val}) == 9
    first = train[0]
    assert first.id == "vigorl_osatlas_train_RL_1" and first.source.endswith("vigorl_osatlas_train_RL.jsonl:1")
    assert first.question.startswith("Instruction: ") and "<image>" not in first.question
    assert first.images == [SAMPLES / "web_grounding" / "images" / "web_0.png"]
    for sample in train + val:
        (box,) = sample.target_boxes
        width, height = sample.canvas().size
        assert sample.answer_kind is AnswerKind.POINT and 0 <= box.x1 < box.x2 <= width and box.y2 <= height
        assert task.score(sample, box.center) == 1.0 and task.score(sample, Point(box.x2 + 1, box.y2)) == 0.0
    assert val[1].target_boxes == [Box(320, 600, 360, 640)]  # touches the screen's corner
    assert task.score(val[1], "(360, 640)") == 1.0  # border included


def test_bundled_os_atlas_json_with_grouped_elements():
    task = get_task("osatlas")
    samples = list(task.load(SAMPLES / "mobile_domain" / "uibert_raw.json"))
    flat = [s for s in samples if s.id.count("_") == 2]
    grouped = [s for s in samples if s.id.count("_") == 3]
    assert len(flat) == 4 and [s.id for s in grouped] == [f"uibert_raw_4_{k}" for k in range(4)]
    assert {s.category for s in samples} == {"icon", "text"}
    # fractions times the 360x640 screenshot, to 4 decimals of precision
    menu = next(s for s in flat if s.question == "open the navigation menu")
    assert menu.target_boxes[0].x1 == 0 and menu.target_boxes[0].y2 == pytest.approx(48, abs=0.04)
    assert all(s.images[0].parent == SAMPLES / "mobile_domain" for s in samples)


def test_os_atlas_json_image_folder_option(tmp_path):
    (tmp_path / "shots").mkdir()
    Image.new("RGB", (200, 100)).save(tmp_path / "shots" / "s.png")
    rows = [{"img_filename": "s.png", "instruction": "press OK", "bbox": [0.1, 0.2, 0.5, 1.0]}]
    (tmp_path / "web_raw.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"web_raw\.json: record 0: .*s\.png: image not found"):
        list(get_task("osatlas").load(tmp_path / "web_raw.json"))
    (sample,) = get_task("osatlas", images="shots").load(tmp_path / "web_raw.json")
    assert sample.target_boxes == [Box(20, 20, 100, 100)] and sample.category == ""
    assert get_task("osatlas", images="shots").spec.options == {"images": "shots"}


def test_needs_data_and_names_the_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="web_grounding.tar"):
        get_task("osatlas").load()
    with pytest.raises(DataError, match=r"no web_grounding/vigorl_osatlas_val_RL\.jsonl"):
        get_task("osatlas").load(tmp_path, split="val")


def test_bad_records_are_one_line_errors_or_counted_skips(tmp_path):
    grounding = tmp_path / "web_grounding"
    (grounding / "images").mkdir(parents=True)
    Image.new("RGB", (100, 80)).save(grounding / "images" / "a.png")
    ok = {"problem": "<image>\nclick Save", "answer": "(10, 20, 30, 40)", "images": ["web_grounding/images/a.png"]}
    rows = [ok, {**ok, "answer": "(10, 20)"}, {**ok, "answer": "Save button"}, {**ok, "answer": "(30, 20, 10, 40)"},
            {**ok, "images": ["web_grounding/images/a.png"] * 2}, {**ok, "problem": " <image> "}]
    (grounding / "vigorl_osatlas_train_RL.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "{torn")
    with pytest.raises(DataError, match=r"vigorl_osatlas_train_RL\.jsonl:2: field 'answer' must be 4 numbers"):
        list(get_task("osatlas").load(tmp_path))
    task = get_task("osatlas")
    kept = list(task.load(tmp_path, skip_bad=True))
    assert [(s.id, s.question, s.target_boxes) for s in kept] == [
        ("vigorl_osatlas_train_RL_1", "click Save", [Box(10, 20, 30, 40)])
    ]
    assert task.skipped == Counter({"bad field 'answer'": 3, "bad field 'images'": 1, "bad field 'problem'": 1,
                                    "malformed JSON": 1})


def test_os_atlas_json_bad_boxes(tmp_path):
    Image.new("RGB", (200, 100)).save(tmp_path / "s.png")
    rows = [{"img_filename": "s.png", "instruction": "a", "bbox": [10, 20, 50, 60]},  # pixels, not fractions
            {"img_filename": "s.png", "elements": [{"instruction": "b", "bbox": [0.5, 0.5, 0.2, 0.9]},
                                                   {"instruction": "c", "bbox": [0.1, 0.1, 0.2, 0.2]}]}]
    (tmp_path / "raw.json").write_text(json.dumps(rows))
    with pytest.raises(DataError, match=r"raw\.json: record 0: field 'bbox' must be \[left, top, right, bottom\]"):
        list(get_task("osatlas").load(tmp_path / "raw.json"))
    task = get_task("osatlas")
    assert [s.id for s in task.load(tmp_path / "raw.json", skip_bad=True)] == ["raw_1_1"]
    assert task.skipped == Counter({"bad field 'bbox'": 2})


def test_aggregate_by_hand():
    def scored(category: str, scores: list[float]) -> list[tuple[Sample, float]]:
        return [(Sample(f"{category}{k}", "osatlas", [], "q", AnswerKind.POINT, category=category), s)
                for k, s in enumerate(scores)]

    task = get_task("osatlas")
    assert task.aggregate(scored("", [1, 0, 0, 1])) == {"overall": 0.5}
    assert task.aggregate(scored("icon", [1, 0, 0]) + scored("text", [1])) == pytest.approx(
        {"overall": 0.5, "icon": 1 / 3, "text": 1.0}
    )
