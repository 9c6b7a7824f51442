import functools
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from PIL import Image

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
NOT_GENERATED = {"generate.py", "README.md"}


@functools.cache
def _load_generator():
    # data/samples is not a package; dataclasses need the module registered while its body runs.
    spec = importlib.util.spec_from_file_location("samples_generate", SAMPLES / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in NOT_GENERATED and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("samples")
    _load_generator().main(out)
    return out


def test_generator_is_deterministic(fresh, tmp_path):
    _load_generator().main(tmp_path)
    first, second = _hashes(fresh), _hashes(tmp_path)
    assert len(first) > 30
    assert first == second


def test_committed_files_match_a_fresh_generation(fresh):
    # Outputs are never edited by hand: rerun `uv run python data/samples/generate.py` after changing it.
    assert _hashes(SAMPLES) == _hashes(fresh)


def test_total_size_under_4_mb():
    total = sum(p.stat().st_size for p in SAMPLES.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total < 4 * 1024 * 1024


def _vstar_items() -> list[tuple[Path, dict]]:
    return [(p.with_suffix(".jpg"), json.loads(p.read_text())) for p in sorted((SAMPLES / "vstar").rglob("sa_*.json"))]


def test_vstar_layout_and_small_targets():
    items = _vstar_items()
    counts = {"direct_attributes": 0, "relative_position": 0}
    for image_path, meta in items:
        category = image_path.parent.name
        counts[category] += 1
        n_targets, n_options = (1, 4) if category == "direct_attributes" else (2, 2)
        assert len(meta["target_object"]) == len(meta["bbox"]) == n_targets
        assert len(meta["options"]) == len(set(meta["options"])) == n_options
        with Image.open(image_path) as im:
            width, height = im.size
            pixels = np.asarray(im.convert("RGB"), dtype=np.int32)
        assert 1600 <= width <= 2400 and width != height
        for x, y, w, h in meta["bbox"]:
            assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
            assert w * h < 0.01 * width * height
        if category == "direct_attributes":
            # The correct colour really is the target's colour: a good share of the box is close to it.
            colour = np.array(_load_generator().COLOURS[meta["options"][0]])
            x, y, w, h = meta["bbox"][0]
            patch = pixels[y : y + h, x : x + w]
            assert (np.abs(patch - colour).sum(axis=2) < 90).mean() > 0.15
        else:
            (ax, _, aw, _), (bx, _, bw, _) = meta["bbox"]
            side = "left" if ax + aw / 2 < bx + bw / 2 else "right"
            assert f" {side} side" in meta["options"][0]
    assert counts == {"direct_attributes": 6, "relative_position": 4}


def test_vstar_question_file():
    rows = [json.loads(line) for line in (SAMPLES / "vstar" / "test_questions.jsonl").read_text().splitlines()]
    metas = {str(p.relative_to(SAMPLES / "vstar")): m for p, m in _vstar_items()}
    assert sorted(r["image"] for r in rows) == sorted(metas)
    assert len({r["label"] for r in rows}) > 1  # labels vary, so position bias shows
    assert sorted(r["question_id"] for r in rows) == list(range(len(rows)))
    for row in rows:
        meta = metas[row["image"]]
        assert row["text"].startswith(meta["question"] + "\n(A) ")
        assert row["text"].endswith("\nAnswer with the option's letter from the given choices directly.")
        assert f"({row['label']}) {meta['options'][0]}\n" in row["text"]
        assert row["category"] == Path(row["image"]).parent.name


def test_screenspot_v2_layout():
    root = SAMPLES / "screenspot_v2"
    sources = {"mobile": {"ios", "android"}, "desktop": {"macos", "windows"}, "web": {"shop", "forum"}}
    touching = 0
    for platform, allowed in sources.items():
        rows = json.loads((root / f"screenspot_{platform}_v2.json").read_text())
        assert {r["data_type"] for r in rows} == {"text", "icon"}
        assert {r["data_source"] for r in rows} == allowed
        by_image: dict[str, list[str]] = {}
        for row in rows:
            by_image.setdefault(row["img_filename"], []).append(row["data_type"])
        assert len(by_image) == 2
        assert all(3 <= len(types) <= 4 and set(types) == {"text", "icon"} for types in by_image.values())
        for row in rows:
            with Image.open(root / "screenspotv2_image" / row["img_filename"]) as im:
                width, height = im.size
            assert (height > width) == (platform == "mobile")
            x, y, w, h = row["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height
            touching += x == 0 or y == 0 or x + w == width or y + h == height
    assert touching >= 1


def test_screenspot_pro_boxes_are_xyxy_within_img_size():
    sizes = set()
    for path in sorted((SAMPLES / "screenspot_pro" / "annotations").glob("*.json")):
        rows = json.loads(path.read_text())
        assert rows and {r["ui_type"] for r in rows} <= {"text", "icon"}
        for i, row in enumerate(rows):
            assert row["id"] == f"{path.stem}_{i}"
            assert row["img_filename"].startswith(f"{path.stem}/screenshot_")
            with Image.open(SAMPLES / "screenspot_pro" / "images" / row["img_filename"]) as im:
                assert list(im.size) == row["img_size"]
            width, height = row["img_size"]
            x1, y1, x2, y2 = row["bbox"]
            assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
            assert (x2 - x1) * (y2 - y1) < 0.001 * width * height  # tiny targets on a big screen
            sizes.add(tuple(row["img_size"]))
    assert len(sizes) >= 2


def test_sat2_parquet(tmp_path):
    ds = Dataset.from_parquet(str(SAMPLES / "sat2" / "val.parquet"), cache_dir=str(tmp_path))
    assert len(ds) == 6
    assert {len(row["images"]) for row in ds} == {1, 2}
    assert any(row["correct_answer"] == row["answers"][1] for row in ds)
    assert any(row["correct_answer"] == row["answers"][0] for row in ds)
    for row in ds:
        assert len(row["answers"]) == 2 and row["correct_answer"] in row["answers"]
        assert all(im.size == (512, 384) for im in row["images"])


def test_blink_parquet(tmp_path):
    answers = []
    for sub_task in ("Relative_Depth", "Spatial_Relation", "Multi-view_Reasoning"):
        ds = Dataset.from_parquet(str(SAMPLES / "blink" / sub_task / "val.parquet"), cache_dir=str(tmp_path))
        assert len(ds) == 3
        n_images = 2 if sub_task == "Multi-view_Reasoning" else 1
        for n, row in enumerate(ds, start=1):
            assert row["idx"] == f"val_{sub_task}_{n}" and row["sub_task"] == sub_task
            letter = row["answer"][1]
            assert row["answer"] == f"({letter})" and ord(letter) - ord("A") < len(row["choices"])
            assert row["prompt"].startswith(row["question"])
            assert all(f"({chr(65 + k)}) {c}" in row["prompt"] for k, c in enumerate(row["choices"]))
            assert [row[f"image_{k}"] is not None for k in range(1, 5)] == [k <= n_images for k in range(1, 5)]
            answers.append(row["answer"])
    assert "(B)" in answers and "(A)" in answers
    test = Dataset.from_parquet(str(SAMPLES / "blink" / "Relative_Depth" / "test.parquet"), cache_dir=str(tmp_path))
    assert test["answer"] == ["hidden"]


def test_thinking_with_images_sets_stay_small():
    folders = ("hrbench", "mme_realworld", "mme_realworld_lite", "treebench", "visualprobe", "robospatial", "osatlas")
    total = sum(p.stat().st_size for folder in folders for p in (SAMPLES / folder).rglob("*") if p.is_file())
    assert 0 < total < 600 * 1024


def test_treebench_colour_answer_lies_in_its_evidence_box():
    import base64
    import csv
    import io

    csv.field_size_limit(2**31 - 1)
    with (SAMPLES / "treebench" / "TreeBench.tsv").open(newline="", encoding="utf-8") as f:
        row = next(csv.DictReader(f, delimiter="\t"))
    assert row["category"] == "Perception/Attributes"
    colour = np.array(_load_generator().COLOURS[row[row["answer"]]])
    (x1, y1, x2, y2), = json.loads(row["target_instances"])
    with Image.open(io.BytesIO(base64.b64decode(row["image"]))) as im:
        close = np.abs(np.asarray(im.convert("RGB"), dtype=np.int32) - colour).sum(axis=2) < 90
    # Small targets (a ring is mostly outline): the colour is far denser in the box than in the picture.
    assert close[y1:y2, x1:x2].mean() > 0.08 and close[y1:y2, x1:x2].mean() > 5 * close.mean()


def test_osatlas_layouts_agree_on_the_shared_screen():
    vigorl = [json.loads(line) for line in (SAMPLES / "osatlas" / "web_grounding" / "vigorl_osatlas_train_RL.jsonl")
              .read_text().splitlines()]
    phone = {r["problem"].split("Instruction: ")[1]: r["answer"] for r in vigorl if "phone_0" in r["images"][0]}
    raw = json.loads((SAMPLES / "osatlas" / "mobile_domain" / "uibert_raw.json").read_text())
    flat = {r["instruction"]: r["bbox"] for r in raw if "bbox" in r}
    assert phone and set(phone) <= set(flat)
    for instruction, answer in phone.items():
        pixels = [int(v) for v in answer.strip("()").split(",")]
        fractions = [p / (360, 640)[i % 2] for i, p in enumerate(pixels)]
        assert flat[instruction] == pytest.approx(fractions, abs=1e-4)
