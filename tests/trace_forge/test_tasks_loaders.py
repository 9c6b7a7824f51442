"""Task loaders on hand-made fixtures of each official layout, bad input, aggregation, and the bundled samples."""

import json
import zipfile
from collections import Counter
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
from PIL import Image

from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import Box, Point
from trace_forge.grounding.zoom import GUI_ZOOM
from trace_forge.tasks import AnswerKind, Sample, get_task, task_names
from trace_forge.tasks.io import SkipPolicy, compose_canvas, iter_jsonl, open_image

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"


# ---------------------------------------------------------------------------------------------------- fixtures


def save_image(path: Path, size: tuple[int, int], color: str = "gray") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_json(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def make_vstar(root: Path, questions: bool = False) -> Path:
    save_image(root / "direct_attributes" / "sa_10.jpg", (64, 48))
    write_json(
        root / "direct_attributes" / "sa_10.json",
        {
            "target_object": ["glove"],
            "bbox": [[10, 5, 20, 10]],
            "question": "What is the color of the glove?",
            "options": ["white", "black", "red", "blue"],
        },
    )
    save_image(root / "relative_position" / "sa_2.jpg", (96, 54))
    write_json(
        root / "relative_position" / "sa_2.json",
        {
            "target_object": ["cup", "plate"],
            "bbox": [[1, 2, 3, 4], [50, 10, 40, 44]],
            "question": "Is the cup on the left or right side of the plate?",
            "options": ["The cup is on the left side of the plate.", "The cup is on the right side of the plate."],
        },
    )
    save_image(root / "OCR" / "sa_1.jpg", (32, 32))  # not part of the 191 questions
    write_json(root / "OCR" / "sa_1.json", {"question": "?", "options": ["a", "b"], "bbox": [[0, 0, 1, 1]]})
    if questions:
        rows = [
            {
                "image": "direct_attributes/sa_10.jpg",
                "text": "What is the color of the glove?\n(A) red\n(B) white\n(C) blue\n(D) black\n"
                "Answer with the option's letter from the given choices directly.",
                "category": "direct_attributes",
                "question_id": 0,
                "label": "B",
            },
            {
                "image": "relative_position/sa_2.jpg",
                "text": "Is the cup on the left or right side of the plate?\n"
                "(A) The cup is on the left side of the plate.\n(B) The cup is on the right side of the plate.\n"
                "Answer with the option's letter from the given choices directly.",
                "category": "relative_position",
                "question_id": 1,
                "label": "A",
            },
        ]
        (root / "test_questions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def screenspot_items(platform: str) -> list[dict]:
    return [
        {
            "img_filename": f"{platform}.png",
            "bbox": [10, 20, 30, 10],
            "instruction": f"open {platform} settings",
            "data_type": "text",
            "data_source": "ios" if platform == "mobile" else "windows",
        },
        {
            "img_filename": f"{platform}.png",
            "bbox": [0, 0, 8, 8],  # touches the image edge
            "instruction": "close",
            "data_type": "icon",
            "data_source": "android",
        },
    ]


def make_screenspot(root: Path, v2: bool = False, zipped: bool = False) -> Path:
    suffix, folder = ("_v2", "screenspotv2_image") if v2 else ("", "screenspot_imgs")
    sizes = {"mobile": (54, 96), "desktop": (96, 54), "web": (64, 48)}
    for platform, size in sizes.items():
        write_json(root / f"screenspot_{platform}{suffix}.json", screenspot_items(platform))
        save_image(root / folder / f"{platform}.png", size)
    if zipped:
        with zipfile.ZipFile(root / f"{folder}.zip", "w") as zf:
            for image in sorted((root / folder).iterdir()):
                zf.write(image, f"{folder}/{image.name}")
                image.unlink()
        (root / folder).rmdir()
    return root


def pro_item(app: str, index: int, bbox: list[int], img_size: list[int], ui_type: str, group: str) -> dict:
    return {
        "img_filename": f"{app}/screenshot_1.png",
        "bbox": bbox,
        "instruction": f"click target {index}",
        "instruction_cn": "点击",
        "id": f"{app}_{index}",
        "application": app.split("_")[0],
        "platform": app.split("_")[1],
        "img_size": img_size,
        "ui_type": ui_type,
        "group": group,
    }


def make_pro(root: Path) -> Path:
    save_image(root / "images" / "vscode_macos" / "screenshot_1.png", (96, 54))
    write_json(
        root / "annotations" / "vscode_macos.json",
        [pro_item("vscode_macos", 0, [10, 20, 30, 40], [96, 54], "text", "Dev")],
    )
    # Annotated on a 160x128 screen, shipped at 80x64: the box must be halved.
    save_image(root / "images" / "autocad_windows" / "screenshot_1.png", (80, 64))
    write_json(
        root / "annotations" / "autocad_windows.json",
        [
            pro_item("autocad_windows", 0, [20, 40, 60, 80], [160, 128], "icon", "CAD"),
            pro_item("autocad_windows", 1, [0, 0, 10, 10], [160, 128], "text", "CAD"),
        ],
    )
    return root


def make_sat(root: Path) -> Path:
    a, b = Image.new("RGB", (64, 48), "red"), Image.new("RGB", (96, 54), "blue")
    rows = {
        "images": [[a], [a, b]],
        "question": ["Is the box left or right of the ball?", "Did the camera turn left or right?"],
        "answers": [["left", "right"], ["left", "right"]],
        "correct_answer": ["right", "right"],  # answers[1], to catch a position bias
        "question_type": ["relative_position", "ego_movement"],
    }
    features = datasets.Features(
        {
            "images": datasets.Sequence(datasets.Image()),
            "question": datasets.Value("string"),
            "answers": datasets.Sequence(datasets.Value("string")),
            "correct_answer": datasets.Value("string"),
            "question_type": datasets.Value("string"),
        }
    )
    root.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(root / "val.parquet"))
    return root


BLINK_FEATURES = datasets.Features(
    {
        "idx": datasets.Value("string"),
        "question": datasets.Value("string"),
        "prompt": datasets.Value("string"),
        "choices": datasets.Sequence(datasets.Value("string")),
        "answer": datasets.Value("string"),
        "sub_task": datasets.Value("string"),
        **{f"image_{k}": datasets.Image() for k in range(1, 5)},
    }
)


def blink_parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = {name: [row.get(name) for row in rows] for name in BLINK_FEATURES}
    datasets.Dataset.from_dict(columns, features=BLINK_FEATURES).to_parquet(str(path))


def make_blink(root: Path) -> Path:
    a, b, c = (Image.new("RGB", size) for size in [(64, 48), (96, 54), (40, 30)])
    blink_parquet(
        root / "Counting" / "val-00000-of-00001.parquet",
        [
            {"idx": "val_Counting_1", "question": "How many balls?", "prompt": "How many balls?\n(A) 1\n(B) 2",
             "choices": ["1", "2", "3"], "answer": "(B)", "sub_task": "Counting", "image_1": a},
            {"idx": "val_Counting_2", "question": "How many boxes?", "prompt": "...",
             "choices": ["0", "4"], "answer": "(A)", "sub_task": "Counting", "image_1": a},
        ],
    )
    blink_parquet(
        root / "Jigsaw" / "val.parquet",
        [{"idx": "val_Jigsaw_1", "question": "Which piece fits?", "prompt": "...", "choices": ["first", "second"],
          "answer": "(B)", "sub_task": "Jigsaw", "image_1": a, "image_2": b, "image_3": c, "image_4": None}],
    )
    blink_parquet(
        root / "Counting" / "test.parquet",
        [{"idx": "test_Counting_1", "question": "How many?", "prompt": "...", "choices": ["1", "2"],
          "answer": "hidden", "sub_task": "Counting", "image_1": a}],
    )
    return root


def make_generic(root: Path) -> Path:
    save_image(root / "imgs" / "a.png", (64, 48))
    rows = [
        {"uid": "q1", "img": "imgs/a.png", "q": "Which colour?", "choices": ["red", "gray"], "gold": "B",
         "bb": [1, 2, 10, 20], "split_name": "x"},
        {"uid": "q2", "img": ["imgs/a.png", "imgs/a.png"], "q": "Same?", "choices": ["yes", "no"], "gold": "yes",
         "bb": [[0, 0, 5, 5], [6, 6, 9, 9]], "split_name": "y"},
    ]
    path = root / "bench.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GENERIC_MAP = dict(id="uid", image="img", question="q", options="choices", answer="gold", boxes="bb",
                   category="split_name")


# ---------------------------------------------------------------------------------------------------- registry


def test_registry_names_and_unknown_task():
    assert task_names() == sorted(
        ["vstar", "screenspot", "screenspot-v2", "screenspot-pro", "sat2", "blink", "generic", "hrbench-4k",
         "hrbench-8k", "mme-realworld", "mme-realworld-lite", "treebench", "visualprobe", "robospatial", "osatlas"]
    )
    with pytest.raises(ConfigError, match="unknown task 'nope'.*vstar"):
        get_task("nope")


def test_task_attributes():
    assert get_task("screenspot-v2").zoom == GUI_ZOOM and get_task("screenspot-pro").zoom == GUI_ZOOM
    assert get_task("vstar").zoom != GUI_ZOOM
    assert get_task("sat2").hub_id == "array/SAT-v2" and get_task("blink").default_split == "val"
    assert all(get_task(n).license_note for n in task_names())


# ---------------------------------------------------------------------------------------------------- V*


def test_vstar_official_order(tmp_path):
    samples = list(get_task("vstar").load(make_vstar(tmp_path)))
    assert [s.id for s in samples] == ["direct_attributes/sa_10", "relative_position/sa_2"]  # OCR/ ignored
    attr, rel = samples
    assert attr.options == ["white", "black", "red", "blue"] and attr.answer == "white"
    assert attr.answer_kind is AnswerKind.OPTION and attr.category == "direct_attributes"
    assert attr.target_boxes == [Box(10, 5, 30, 15)]  # xywh -> xyxy
    assert attr.meta["option_order"] == "official" and attr.images == [tmp_path / "direct_attributes/sa_10.jpg"]
    assert len(rel.options) == 2 and rel.target_boxes == [Box(1, 2, 4, 6), Box(50, 10, 90, 54)]
    assert rel.meta["target_object"] == ["cup", "plate"]
    assert attr.canvas().size == (64, 48)


def test_vstar_uses_shown_order_from_test_questions(tmp_path):
    task = get_task("vstar")
    attr, rel = task.load(make_vstar(tmp_path, questions=True))
    assert attr.options == ["red", "white", "blue", "black"] and attr.answer == "white"
    assert attr.meta["option_order"] == "test_questions.jsonl"
    assert task.score(attr, "B") == 1.0 and task.score(attr, "A") == 0.0 and task.score(attr, "white") == 1.0
    assert rel.answer == rel.options[0]


def test_vstar_inconsistent_test_questions_is_an_error(tmp_path):
    root = make_vstar(tmp_path, questions=True)
    text = (root / "test_questions.jsonl").read_text().replace('"label": "B"', '"label": "C"')
    (root / "test_questions.jsonl").write_text(text)
    with pytest.raises(DataError, match="sa_10.json.*disagrees"):
        list(get_task("vstar").load(root))


def test_vstar_missing_field_and_corrupt_image(tmp_path):
    root = make_vstar(tmp_path)
    (root / "relative_position" / "sa_2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"sa_2\.jpg: corrupt image"):
        list(get_task("vstar").load(root))
    data = json.loads((root / "direct_attributes/sa_10.json").read_text())
    del data["question"]
    write_json(root / "direct_attributes/sa_10.json", data)
    with pytest.raises(DataError, match=r"sa_10\.json: missing required field 'question'"):
        list(get_task("vstar").load(root))
    task = get_task("vstar")
    assert list(task.load(root, skip_bad=True)) == []
    assert task.skipped == Counter({"missing field 'question'": 1, "corrupt image": 1})


# ---------------------------------------------------------------------------------------------------- ScreenSpot


@pytest.mark.parametrize(("name", "v2", "zipped"), [("screenspot", False, False), ("screenspot-v2", True, False),
                                                    ("screenspot-v2", True, True)])
def test_screenspot_layouts(tmp_path, name, v2, zipped):
    samples = list(get_task(name).load(make_screenspot(tmp_path, v2=v2, zipped=zipped)))
    assert [s.id for s in samples] == ["mobile_0", "mobile_1", "desktop_0", "desktop_1", "web_0", "web_1"]
    first = samples[0]
    assert first.answer_kind is AnswerKind.POINT and first.answer is None and first.options == []
    assert first.question == "open mobile settings" and first.category == "mobile"
    assert first.target_boxes == [Box(10, 20, 40, 30)]
    assert first.meta == {"data_type": "text", "data_source": "ios", "img_filename": "mobile.png"}
    assert samples[1].meta["data_type"] == "icon" and samples[1].target_boxes == [Box(0, 0, 8, 8)]
    assert samples[2].canvas().size == (96, 54)


def test_screenspot_scores_points_on_the_border(tmp_path):
    task = get_task("screenspot-v2")
    sample = next(iter(task.load(make_screenspot(tmp_path, v2=True))))
    assert task.score(sample, "(40, 30)") == 1.0  # bottom-right corner is inside
    assert task.score(sample, Point(41, 30)) == 0.0 and task.score(sample, None) == 0.0


def test_screenspot_aggregate_is_mean_of_six_cells(tmp_path):
    task = get_task("screenspot")
    samples = list(task.load(make_screenspot(tmp_path)))
    extra = [Sample(f"mobile_x{i}", "screenspot", [], "q", AnswerKind.POINT, category="mobile",
                    meta={"data_type": "text"}) for i in range(2)]
    results = [(s, 1.0) for s in samples[:5]] + [(samples[5], 0.0)] + [(s, 1.0) for s in extra]
    metrics = task.aggregate(results)
    assert metrics["web/icon"] == 0.0 and metrics["mobile/text"] == 1.0
    assert metrics["overall"] == pytest.approx(5 / 6)  # not the micro 7/8
    assert len(metrics) == 7


def test_screenspot_missing_image_and_field(tmp_path):
    root = make_screenspot(tmp_path)
    items = screenspot_items("web")
    items[0]["img_filename"] = "gone.png"
    del items[1]["instruction"]
    write_json(root / "screenspot_web.json", items)
    with pytest.raises(DataError, match=r"screenspot_web\.json: record 0: .*gone\.png: image not found"):
        list(get_task("screenspot").load(root))
    task = get_task("screenspot")
    assert len(list(task.load(root, skip_bad=True))) == 4
    assert task.skipped == Counter({"missing image": 1, "missing field 'instruction'": 1})


def test_screenspot_missing_annotation_file_and_no_hub_layout(tmp_path):
    root = make_screenspot(tmp_path)
    (root / "screenspot_web.json").unlink()
    with pytest.raises(DataError, match="screenspot_web.json: annotation file missing"):
        get_task("screenspot").load(root)
    with pytest.raises(ConfigError, match="--data-dir"):
        get_task("screenspot").load()


def test_screenspot_pro_boxes_are_xyxy_scaled_by_img_size(tmp_path):
    task = get_task("screenspot-pro")
    cad0, cad1, vscode = task.load(make_pro(tmp_path))  # annotation files in name order
    assert vscode.id == "vscode_macos_0" and vscode.target_boxes == [Box(10, 20, 30, 40)]  # not xywh (10,20,40,60)
    assert cad0.target_boxes == [Box(10, 20, 30, 40)]  # [20, 40, 60, 80] on 160x128, image is 80x64
    assert cad0.category == "CAD" and cad0.meta["ui_type"] == "icon" and cad0.meta["img_size"] == [160, 128]
    assert vscode.meta["application"] == "vscode" and vscode.meta["platform"] == "macos"
    metrics = task.aggregate([(cad0, 1.0), (cad1, 0.0), (vscode, 1.0)])
    assert metrics == pytest.approx({"overall": 2 / 3, "text": 0.5, "icon": 1.0, "CAD": 0.5, "Dev": 1.0})


# ---------------------------------------------------------------------------------------------------- SAT-2


def test_sat_parquet_single_and_multi_image(tmp_path):
    task = get_task("sat2")
    one, two = task.load(make_sat(tmp_path), split="val")
    assert one.options == ["left", "right"] and one.answer == "right" and one.category == "relative_position"
    assert [im.size for im in one.images] == [(64, 48)]
    assert [im.size for im in two.images] == [(64, 48), (96, 54)]  # order kept
    canvas, offsets = compose_canvas(two.images)
    assert canvas.size == (160, 54) and offsets == [(0, 0), (64, 0)]
    assert two.canvas().getpixel((70, 10)) == (0, 0, 255) and two.canvas().getpixel((10, 50)) == (255, 255, 255)
    assert task.score(one, "right") == 1.0 and task.score(one, "A") == 0.0
    metrics = task.aggregate([(one, 1.0), (two, 0.0)])
    assert metrics == {"overall": 0.5, "ego_movement": 0.0, "relative_position": 1.0}


def test_sat_circular_expansion(tmp_path):
    task = get_task("sat2", circular=True)
    samples = list(task.load(make_sat(tmp_path), split="val", limit=1))  # limit counts questions
    assert [(s.id, s.options) for s in samples] == [("val_0#r0", ["left", "right"]), ("val_0#r1", ["right", "left"])]
    assert {s.meta["circular_group"] for s in samples} == {"val_0"} and all(s.answer == "right" for s in samples)
    metrics = task.aggregate([(samples[0], 1.0), (samples[1], 0.0)])
    # SAT's circular accuracy averages the rotations as items; all_rotations is the strict per-question reading
    assert metrics["overall"] == 0.5 and metrics["all_rotations"] == 0.0 and metrics["questions"] == 1


def test_sat_jsonl_with_bad_answer(tmp_path):
    save_image(tmp_path / "a.png", (64, 48))
    rows = [
        {"images": ["a.png"], "question": "q", "answers": ["x", "y"], "correct_answer": "y", "question_type": "t"},
        {"images": ["a.png"], "question": "q", "answers": ["x", "y"], "correct_answer": "z", "question_type": "t"},
    ]
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"test\.jsonl:2: correct_answer 'z'"):
        list(get_task("sat2").load(tmp_path))
    task = get_task("sat2")
    (sample,) = task.load(tmp_path, skip_bad=True)
    assert sample.images == [tmp_path / "a.png"] and sample.id == "test_1" and task.skipped["bad answer"] == 1


def test_sat_missing_split_and_column(tmp_path):
    with pytest.raises(DataError, match="no files for split 'test'"):
        get_task("sat2").load(make_sat(tmp_path))
    datasets.Dataset.from_dict({"question": ["q"]}).to_parquet(str(tmp_path / "train.parquet"))
    with pytest.raises(DataError, match=r"train\.parquet: missing column\(s\) \['answers', 'correct_answer'\]"):
        list(get_task("sat2").load(tmp_path, split="train"))


# ---------------------------------------------------------------------------------------------------- BLINK


def test_blink_subtasks_letters_and_images(tmp_path):
    task = get_task("blink")
    samples = list(task.load(make_blink(tmp_path)))
    assert [s.id for s in samples] == ["val_Counting_1", "val_Counting_2", "val_Jigsaw_1"]
    count1, _, jigsaw = samples
    assert count1.answer == "2" and count1.options == ["1", "2", "3"] and count1.meta["answer_label"] == "(B)"
    assert jigsaw.category == "Jigsaw" and [im.size for im in jigsaw.images] == [(64, 48), (96, 54), (40, 30)]
    assert jigsaw.canvas().size == (200, 54)
    assert task.score(count1, "(B)") == 1.0 and task.score(jigsaw, "first") == 0.0
    metrics = task.aggregate([(samples[0], 1.0), (samples[1], 1.0), (samples[2], 0.0)])
    assert metrics == {"overall": 0.5, "Counting": 1.0, "Jigsaw": 0.0}  # macro, not micro 2/3


def test_blink_hidden_rows_are_skipped_and_counted(tmp_path):
    task = get_task("blink")
    assert list(task.load(make_blink(tmp_path), split="test")) == []
    assert task.skipped == Counter({"hidden answer": 1})


def test_blink_subtask_option(tmp_path):
    root = make_blink(tmp_path)
    assert [s.category for s in get_task("blink", subtasks="Jigsaw").load(root)] == ["Jigsaw"]
    with pytest.raises(ConfigError, match=r"unknown BLINK subtask\(s\) \['Depth'\].*Counting"):
        get_task("blink", subtasks=["Depth"]).load(root)


# ---------------------------------------------------------------------------------------------------- generic


def test_generic_jsonl_with_mapping(tmp_path):
    task = get_task("generic", **GENERIC_MAP)
    one, two = task.load(make_generic(tmp_path))
    assert task.answer_kind is AnswerKind.OPTION
    assert one.id == "q1" and one.answer == "gray" and one.target_boxes == [Box(1, 2, 10, 20)]
    assert one.images == [tmp_path / "imgs/a.png"] and one.category == "x" and one.source.endswith("bench.jsonl:1")
    assert len(two.images) == 2 and two.target_boxes == [Box(0, 0, 5, 5), Box(6, 6, 9, 9)]
    assert task.aggregate([(one, 1.0), (two, 0.0)]) == {"overall": 0.5, "x": 1.0, "y": 0.0}


def test_generic_point_kind_with_xywh(tmp_path):
    task = get_task("generic", image="img", question="q", boxes="bb", box_format="xywh", answer_kind="point")
    one, _ = task.load(make_generic(tmp_path))
    assert one.target_boxes == [Box(1, 2, 11, 22)] and one.answer is None and one.id == "bench_1"
    assert task.score(one, "(11, 22)") == 1.0


def test_generic_config_errors(tmp_path):
    path = make_generic(tmp_path)
    with pytest.raises(ConfigError, match=r"'caption' \(question=\)"):
        list(get_task("generic", image="img", question="caption", answer="gold").load(path))
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['imgs'\]"):
        get_task("generic", imgs="img")
    with pytest.raises(ConfigError, match="needs the column option"):
        get_task("generic", answer_kind="point")
    with pytest.raises(ConfigError, match="box_format"):
        get_task("generic", box_format="cxcywh")
    with pytest.raises(ConfigError, match="--data-dir"):
        get_task("generic").load()


def test_generic_malformed_and_torn_jsonl(tmp_path):
    path = make_generic(tmp_path)
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n{not json\n" + lines[1] + "\n" + lines[1][:20])  # torn last line, no newline
    with pytest.raises(DataError, match=r"bench\.jsonl:2: malformed JSON"):
        list(get_task("generic", **GENERIC_MAP).load(path))
    task = get_task("generic", **GENERIC_MAP)
    assert [s.id for s in task.load(path, skip_bad=True)] == ["q1", "q2"]
    assert task.skipped == Counter({"malformed JSON": 2})


def test_iter_jsonl_reports_empty_and_non_object_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n[1, 2]\n')
    with pytest.raises(DataError, match=r"x\.jsonl:2: empty line"):
        list(iter_jsonl(path))
    counts: Counter[str] = Counter()
    assert list(iter_jsonl(path, SkipPolicy(True, counts))) == [(1, {"a": 1})]
    assert counts == Counter({"empty line": 1, "malformed JSON": 1})


def test_generic_parquet_and_saved_dataset(tmp_path):
    ds = datasets.Dataset.from_dict(
        {"image": [Image.new("RGB", (64, 48))], "question": ["q?"], "answer": ["Paris"]},
        features=datasets.Features(
            {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
        ),
    )
    ds.to_parquet(str(tmp_path / "test.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    task = get_task("generic")
    for source in (tmp_path, tmp_path / "saved"):
        (sample,) = task.load(source)
        assert sample.answer == "Paris" and sample.answer_kind is AnswerKind.TEXT and sample.images[0].size == (64, 48)
        assert task.score(sample, " paris. ") == 1.0


# ---------------------------------------------------------------------------------------------------- images, hub


def test_truncated_image_is_reported_when_decoded(tmp_path):
    root = make_vstar(tmp_path)
    image = root / "direct_attributes" / "sa_10.jpg"
    Image.effect_noise((64, 48), 60).convert("RGB").save(image, quality=95)
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])  # header intact, data torn: passes the load-time check
    sample = next(iter(get_task("vstar").load(root)))
    with pytest.raises(DataError, match=r"sa_10\.jpg: corrupt image"):
        sample.canvas()
    with pytest.raises(DataError, match=r"nowhere\.png: image not found"):
        open_image(tmp_path / "nowhere.png")


def test_missing_data_dir_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="data directory does not exist"):
        get_task("vstar").load(tmp_path / "absent")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(DataError, match=r"craigwu/vstar_bench.*pass --data-dir"):
        get_task("vstar").load()


# ---------------------------------------------------------------------------------------------------- bundled samples


def test_bundled_samples_load_and_score():
    expected = {
        "vstar": (SAMPLES / "vstar", None),
        "screenspot-v2": (SAMPLES / "screenspot_v2", None),
        "screenspot-pro": (SAMPLES / "screenspot_pro", None),
        "sat2": (SAMPLES / "sat2", "val"),
        "blink": (SAMPLES / "blink", "val"),
    }
    for name, (root, split) in expected.items():
        task = get_task(name)
        samples = list(task.load(root, split=split))
        assert samples and not task.skipped, name
        assert len({s.id for s in samples}) == len(samples), name
        for sample in samples:
            width, height = sample.canvas().size
            assert all(0 <= b.x1 <= b.x2 <= width and 0 <= b.y1 <= b.y2 <= height for b in sample.target_boxes)
            if sample.answer_kind is AnswerKind.OPTION:
                assert task.score(sample, sample.answer) == 1.0
            else:
                assert task.score(sample, sample.target_boxes[0].center) == 1.0
        metrics = task.aggregate([(s, 1.0) for s in samples])
        assert metrics["overall"] == 1.0, name
    vstar = list(get_task("vstar").load(SAMPLES / "vstar"))
    assert all(s.meta["option_order"] == "test_questions.jsonl" for s in vstar)
    assert any(s.options[0] != s.answer for s in vstar)  # shuffled: the answer is not always "A"
    blink = get_task("blink")
    assert list(blink.load(SAMPLES / "blink", split="test")) == [] and blink.skipped["hidden answer"] == 1
