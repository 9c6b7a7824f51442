"""The dataset contract: rows built from hand-made records, the split, disk round trips, runs and the CLI."""

import io
import json
import random
import re
from pathlib import Path

import pytest
from datasets import Dataset, load_dataset, load_from_disk
from PIL import Image
from typer.testing import CliRunner

from tests.trace_forge.fixtures_trees import (
    example_tree,
    make_record,
    step,
    vstar_samples,
    write_generic_run,
    write_run,
)
from trace_forge.cli import app
from trace_forge.dataset import FEATURES, build_rows, linearize_run, split_by_question, write_dataset
from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import GUI_ZOOM, parse_response, zoom
from trace_forge.linearize import LinearizeConfig, linearize
from trace_forge.search.tree import Rollout, Tree
from trace_forge.tasks import AnswerKind, Sample, get_task
from trace_forge.tasks.prompts import PROMPT_VERSION, prompts_for

RING = "direct_attributes/sa_4666"
QUESTIONS = [RING, "direct_attributes/sa_7437", "relative_position/sa_6612"]


@pytest.fixture(scope="module")
def samples() -> dict[str, Sample]:
    return vstar_samples()


def _decode(image: dict) -> Image.Image:
    return Image.open(io.BytesIO(image["bytes"])).convert("RGB")


def _same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.convert("RGB").tobytes() == b.convert("RGB").tobytes()


def _check_parts(row: dict) -> None:
    """Content is always a list of typed parts, and image parts match the images column one to one."""
    n_image_parts = 0
    for message in row["messages"]:
        assert message["role"] in ("system", "user", "assistant", "tool")
        assert isinstance(message["content"], list) and message["content"]
        for part in message["content"]:
            assert set(part) == {"type", "text"}
            if part["type"] == "image":
                assert part["text"] is None
                n_image_parts += 1
            else:
                assert part["type"] == "text" and isinstance(part["text"], str)
    assert n_image_parts == len(row["images"])


def test_single_turn_rows(samples):
    sample = samples[RING]
    tree = example_tree()
    rows = build_rows([make_record(tree, sample)], samples, "single", run_id="run-1")
    chains = linearize(tree, RING)
    assert len(rows) == len(chains) == 5
    prompts = prompts_for(AnswerKind.OPTION)
    for row, chain in zip(rows, chains, strict=True):
        assert set(row) == set(FEATURES)
        _check_parts(row)
        system, user, assistant = row["messages"]
        assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
        assert system["content"] == [{"type": "text", "text": prompts.student_system(False)}]
        assert user["content"] == [{"type": "image", "text": None},
                                   {"type": "text", "text": prompts.question_text(sample)}]
        assert assistant["content"] == [{"type": "text", "text": chain.render()}]
        assert row["steps"] == [s.to_dict() for s in chain.steps]
        assert json.loads(row["source"]) == {"run": "run-1", "node": chain.source.node,
                                             "rollouts": list(chain.source.rollouts),
                                             "connector_index": chain.connector_index}
        assert (row["kind"], row["mode"], row["answer"]) == (chain.kind, "single", "white") and row["correct"]
        assert row["image_size"] == [1960, 1470] and row["target_boxes"] == [[771.0, 613.0, 802.0, 644.0]]
        assert (row["teacher"], row["simulated"]) == ("openai:Qwen/Qwen2.5-VL-72B-Instruct", False)
        assert (row["task"], row["category"]) == ("vstar", "direct_attributes")
        assert row["prompt_version"] == PROMPT_VERSION
    # A single image file is stored as its own bytes, which decode to the canvas the points refer to.
    assert rows[0]["images"][0]["bytes"] == Path(sample.images[0]).read_bytes()
    assert _same_pixels(_decode(rows[0]["images"][0]), sample.canvas())


def test_multi_turn_rows_carry_crops_cut_at_the_zoomed_points(samples):
    sample = samples[RING]
    rows = build_rows([make_record(example_tree(), sample)], samples, "multi", LinearizeConfig(max_zooms=2))
    canvas = sample.canvas()
    prompts = prompts_for(AnswerKind.OPTION)
    for row in rows:
        _check_parts(row)
        roles = [m["role"] for m in row["messages"]]
        n_zooms = roles.count("tool")
        assert roles == ["system", "user"] + ["assistant", "tool"] * n_zooms + ["assistant"]
        assert 1 <= n_zooms <= 2 and len(row["images"]) == 1 + n_zooms
        assert row["messages"][0]["content"][0]["text"] == prompts.student_system(True)
        for k in range(n_zooms):
            call, observation = row["messages"][2 + 2 * k], row["messages"][3 + 2 * k]
            [tool_call] = parse_response(call["content"][0]["text"], expect="turn").tool_calls
            x, y = tool_call.point.rounded()
            assert observation["content"][1]["text"] == prompts.zoom_observation((x, y), dot=False)
            crop = _decode(row["images"][1 + k])
            assert crop.size == (672, 672)
            assert _same_pixels(crop, zoom(canvas, x, y, get_task("vstar").zoom).image)
        final = parse_response(row["messages"][-1]["content"][0]["text"], expect="turn")
        assert final.ok and final.answer == "white"
    # Chain 0 zooms (100, 100) then (110, 220); its third step folds into the answer turn.
    assert "Look at (120, 330)." in rows[0]["messages"][-1]["content"][0]["text"]


def test_composed_canvas_is_stored_as_png_and_the_task_spec_decides_crops():
    left = Image.linear_gradient("L").convert("RGB").resize((120, 90))
    right = Image.new("RGB", (80, 60), (10, 200, 30))
    sample = Sample("pair-1", "screenspot-v2", [left, right], "Click the green box.", AnswerKind.POINT)
    tree = Tree()
    tree.root.rollouts.append(Rollout([step(150, 30), step(40, 40)], "(150, 30)", 1.0))
    [row] = build_rows([make_record(tree, sample)], {sample.id: sample}, "multi", zoom_spec=GUI_ZOOM)
    assert row["image_size"] == [200, 90]
    assert _same_pixels(_decode(row["images"][0]), sample.canvas())
    assert row["images"][0]["bytes"].startswith(b"\x89PNG")
    for image, (x, y) in zip(row["images"][1:], [(150, 30), (40, 40)], strict=True):
        assert _same_pixels(_decode(image), zoom(sample.canvas(), x, y, GUI_ZOOM).image)
    assert "red dot" in row["messages"][3]["content"][1]["text"]


def test_rows_reject_a_record_of_another_canvas(samples):
    record = make_record(example_tree(), samples[RING], image_size=(100, 100))
    with pytest.raises(ValueError, match="image_size"):
        build_rows([record], samples, "single")


def _fake_rows(n_questions: int, chains: int = 3) -> list[dict]:
    return [{"task": "vstar", "question_id": f"q{i}", "n": j}
            for i in range(n_questions) for j in range(chains)]


def _questions(rows: list[dict]) -> set[str]:
    return {r["question_id"] for r in rows}


def test_split_keeps_questions_whole_and_is_deterministic():
    rows = _fake_rows(20)
    split = split_by_question(rows, val_fraction=0.2, seed=1)
    train, val = _questions(split["train"]), _questions(split["validation"])
    assert not train & val and train | val == _questions(rows)
    assert len(val) == 4 and len(split["validation"]) == 12
    shuffled = rows[:]
    random.Random(0).shuffle(shuffled)
    assert _questions(split_by_question(shuffled, 0.2, seed=1)["validation"]) == val
    assert split_by_question(rows, 0.2, seed=1) == split
    by_seed = {frozenset(_questions(split_by_question(rows, 0.2, seed=s)["validation"])) for s in range(5)}
    assert len(by_seed) > 1


def test_split_edge_cases():
    assert len(_questions(split_by_question(_fake_rows(2), 0.05)["validation"])) == 1
    assert len(_questions(split_by_question(_fake_rows(3), 0.9)["train"])) == 1
    one = split_by_question(_fake_rows(1), 0.05)
    assert len(one["train"]) == 3 and one["validation"] == []
    assert split_by_question(_fake_rows(5), 0.0)["validation"] == []
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError):
            split_by_question(_fake_rows(5), bad)


def _rows_for(samples, questions, mode) -> list[dict]:
    records = [make_record(example_tree(), samples[q]) for q in questions]
    return build_rows(records, samples, mode, LinearizeConfig(max_zooms=2))


def _assert_same_rows(loaded, expected: list[dict]) -> None:
    assert len(loaded) == len(expected)
    for got, want in zip(loaded, expected, strict=True):
        assert {k: v for k, v in got.items() if k != "images"} == {k: want[k] for k in got if k != "images"}
        assert len(got["images"]) == len(want["images"])
        for image, raw in zip(got["images"], want["images"], strict=True):
            assert image.mode == "RGB" and _same_pixels(image, _decode(raw))


def test_disk_and_parquet_round_trips_give_the_same_rows(samples, tmp_path):
    rows = _rows_for(samples, [RING], "multi")
    by_split = {"train": rows[:3], "validation": rows[3:]}
    write_dataset(by_split, tmp_path, max_shard_rows=2)
    assert sorted(p.name for p in (tmp_path / "parquet").iterdir()) == [
        "train-00000-of-00002.parquet", "train-00001-of-00002.parquet", "validation-00000-of-00001.parquet"
    ]
    from_disk = load_from_disk(str(tmp_path / "hf"))
    files = {s: sorted(str(p) for p in (tmp_path / "parquet").glob(f"{s}-*.parquet")) for s in by_split}
    from_parquet = load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "cache"))
    for split, expected in by_split.items():
        assert from_disk[split].features == from_parquet[split].features == FEATURES
        _assert_same_rows(from_disk[split], expected)
        _assert_same_rows(from_parquet[split], expected)


def test_write_refuses_to_clobber_and_overwrite_drops_stale_shards(samples, tmp_path):
    rows = _rows_for(samples, [RING], "single")
    write_dataset({"train": rows, "validation": rows[:1]}, tmp_path, max_shard_bytes=1)  # one row a shard
    assert len(list((tmp_path / "parquet").glob("train-*"))) == 5
    with pytest.raises(ConfigError, match="overwrite"):
        write_dataset({"train": rows}, tmp_path)
    with pytest.raises(ValueError, match="no rows"):
        write_dataset({"train": []}, tmp_path, overwrite=True)
    assert len(list((tmp_path / "parquet").glob("train-*"))) == 5  # nothing removed before the check
    written = write_dataset({"train": rows[:2], "validation": []}, tmp_path, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "parquet").iterdir()) == ["train-00000-of-00001.parquet"]
    assert set(written) == set(load_from_disk(str(tmp_path / "hf"))) == {"train"}
    shard = str(tmp_path / "parquet" / "train-00000-of-00001.parquet")
    assert len(Dataset.from_parquet(shard, cache_dir=str(tmp_path / "cache"))) == 2


# ------------------------------------------------------------------------------------------------- runs


def _run(samples, tmp_path: Path, questions=QUESTIONS, **record_kwargs) -> Path:
    records = [make_record(example_tree(), samples[q], **record_kwargs) for q in questions]
    return write_run(tmp_path / "run-7", records)


def test_linearize_run_writes_the_dataset(samples, tmp_path):
    run_dir = _run(samples, tmp_path)
    with open(run_dir / "trees.jsonl", "ab") as f:
        f.write(b'{"question_id": "torn')  # a kill mid-write: ignored
    dataset = linearize_run(run_dir, tmp_path / "out", "single", val_fraction=0.34)
    assert set(dataset) == {"train", "validation"}
    assert len(dataset["train"]) + len(dataset["validation"]) == 15
    assert len(set(dataset["validation"]["question_id"])) == 1
    assert set(dataset["train"]["question_id"]) | set(dataset["validation"]["question_id"]) == set(QUESTIONS)
    assert {json.loads(s)["run"] for s in dataset["train"]["source"]} == {"run-7"}
    assert (tmp_path / "out" / "hf" / "dataset_dict.json").is_file()
    reloaded = load_from_disk(str(tmp_path / "out" / "hf"))
    assert reloaded["train"]["question_id"] == dataset["train"]["question_id"]


def test_linearize_reads_only_the_searched_questions_and_keeps_the_task_order(samples, tmp_path, monkeypatch):
    first_two = list(samples)[:2]
    forward = write_run(tmp_path / "a" / "run", [make_record(example_tree(), samples[q]) for q in first_two])
    backward = write_run(tmp_path / "b" / "run", [make_record(example_tree(), samples[q]) for q in reversed(first_two)])
    vstar = type(get_task("vstar"))
    load, read = vstar.load, []

    def counting_load(self, *args, **kwargs):
        for sample in load(self, *args, **kwargs):
            read.append(sample.id)
            yield sample

    monkeypatch.setattr(vstar, "load", counting_load)
    a = linearize_run(forward, tmp_path / "out-a", "single", val_fraction=0)
    assert read == first_two  # the other bundled questions are never read (a real split holds 100k+)
    b = linearize_run(backward, tmp_path / "out-b", "single", val_fraction=0)
    # Completion order in trees.jsonl does not matter: the rows follow the task data's order.
    assert list(dict.fromkeys(b["train"]["question_id"])) == first_two
    assert b["train"].to_dict() == a["train"].to_dict()


def test_a_generic_run_is_reloaded_with_its_task_options(tmp_path):
    run_dir, sample = write_generic_run(tmp_path / "run", tmp_path / "data")
    dataset = linearize_run(run_dir, tmp_path / "out", "single", val_fraction=0)
    assert set(dataset["train"]["question_id"]) == {"g1"} and set(dataset["train"]["category"]) == {"mapped"}
    assert set(dataset["train"]["task"]) == {"generic"} and len(dataset["train"]) == 5


def test_a_question_missing_from_the_task_data_names_its_line(samples, tmp_path):
    records = [make_record(example_tree(), samples[q]) for q in QUESTIONS[:2]]
    records.insert(1, {**records[0], "question_id": "direct_attributes/nope"})
    run_dir = write_run(tmp_path / "run", records)
    with pytest.raises(DataError, match="nope") as info:
        linearize_run(run_dir, tmp_path / "out", "single")
    assert (info.value.path, info.value.line) == (run_dir / "trees.jsonl", 2)
    assert not (tmp_path / "out").exists()


def test_a_record_of_another_canvas_names_its_line(samples, tmp_path):
    run_dir = _run(samples, tmp_path, questions=[RING], image_size=(640, 480))
    with pytest.raises(DataError, match="image_size") as info:
        linearize_run(run_dir, tmp_path / "out", "multi")
    assert info.value.line == 1


def test_a_folder_without_run_json_is_not_a_run(tmp_path):
    with pytest.raises(DataError, match="run.json"):
        linearize_run(tmp_path, tmp_path / "out", "single")
    assert not (tmp_path / "out").exists()


# -------------------------------------------------------------------------------------------------- CLI

runner = CliRunner()


def test_cli_prints_counts_and_writes_next_to_the_run(samples, tmp_path):
    run_dir = _run(samples, tmp_path)
    args = ["linearize", str(run_dir), "--mode", "multi", "--max-zooms", "2", "--val-fraction", "0.5",
            "--max-per-question", "4", "--seed", "3"]
    result = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    dataset = load_from_disk(str(run_dir / "dataset-multi" / "hf"))
    # 5 chains per question (3 direct, 2 backtracking) capped at 4 in proportion: 2.4, 1.6 round to 2, 2.
    # Two of the three questions go to validation.
    assert re.search(r"train\s*│\s*1\s*│\s*2\s*│\s*2\s*│\s*4\s*│", result.stdout), result.stdout
    assert re.search(r"validation\s*│\s*2\s*│\s*4\s*│\s*4\s*│\s*8\s*│", result.stdout), result.stdout
    assert (len(dataset["train"]), len(dataset["validation"])) == (4, 8)
    assert max(max(len(images) for images in dataset[s]["images"]) for s in dataset) <= 3

    again = runner.invoke(app, args)
    assert isinstance(again.exception, ConfigError)
    bad = runner.invoke(app, ["linearize", str(run_dir), "--mode", "dual"])
    assert isinstance(bad.exception, ConfigError) and "single" in str(bad.exception)
    custom = runner.invoke(app, ["linearize", str(run_dir), "--mode", "single", "--no-backtracking",
                                 "--connector", "Hmm.", "--out", str(tmp_path / "d"), "--val-fraction", "0"])
    assert custom.exit_code == 0, custom.output
    assert set(load_from_disk(str(tmp_path / "d" / "hf"))["train"]["kind"]) == {"direct"}
