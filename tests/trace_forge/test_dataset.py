"""The dataset contract: rows built from hand-made records, their decoder, other frames, the split, the folder on
disk, runs and the CLI."""

import io
import json
import random
import re
from pathlib import Path

import pytest
from datasets import load_dataset
from PIL import Image
from typer.testing import CliRunner

from tests.trace_forge.fixtures_trees import (
    GENERIC_OPTIONS,
    VSTAR_DIR,
    example_tree,
    make_record,
    step,
    vstar_samples,
    write_generic_run,
    write_run,
)
from trace_forge.cli import app
from trace_forge.dataset import (
    FEATURES,
    TraceRow,
    linearize_run,
    load_traces,
    question_rows,
    split_by_question,
)
from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import GUI_ZOOM, Frame, Point, Resize, View, parse_response, zoom, zoom_on
from trace_forge.linearize import LinearizeConfig, linearize
from trace_forge.search.tree import Rollout, Tree
from trace_forge.tasks import AnswerKind, Sample, TaskSpec, get_task
from trace_forge.tasks.prompts import NORM1000_HINT, PROMPT_VERSION, prompts_for

RING = "direct_attributes/sa_4666"
QUESTIONS = [RING, "direct_attributes/sa_7437", "relative_position/sa_6612"]
MODEL_VIEW = View(Frame.MODEL, Resize(max_pixels=200_704))  # a small model: 1960x1470 -> 504x392


@pytest.fixture(scope="module")
def samples() -> dict[str, Sample]:
    return vstar_samples()


def _decode(image: dict | Image.Image) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.open(io.BytesIO(image["bytes"])).convert("RGB")


def _same_pixels(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and a.convert("RGB").tobytes() == b.convert("RGB").tobytes()


def _check_parts(row: dict) -> None:
    """Content is always a list of typed parts; image parts sit in user turns only (where TRL fills them) and
    match the images column one to one."""
    n_image_parts = 0
    for message in row["messages"]:
        assert message["role"] in ("system", "user", "assistant")
        assert isinstance(message["content"], list) and message["content"]
        for part in message["content"]:
            assert set(part) == {"type", "text"}
            if part["type"] == "image":
                assert part["text"] is None and message["role"] == "user"
                n_image_parts += 1
            else:
                assert part["type"] == "text" and isinstance(part["text"], str)
    assert n_image_parts == len(row["images"])


def _rows(samples, question=RING, mode="single", tree=None, **kwargs) -> list[dict]:
    record = make_record(tree or example_tree(), samples[question])
    return question_rows(record, samples[question], mode, **kwargs)


def test_single_turn_rows(samples):
    sample = samples[RING]
    tree = example_tree()
    rows = question_rows(make_record(tree, sample), sample, "single", run_id="run-1")
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
        assert row["steps"] == [{"text": s.text, "x": s.point.x, "y": s.point.y} for s in chain.steps]
        assert json.loads(row["source"]) == {"run": "run-1", "node": chain.source.node,
                                             "rollouts": list(chain.source.rollouts)}
        assert (row["kind"], row["mode"], row["answer"]) == (chain.kind, "single", "white") and row["correct"]
        assert (row["connector_index"], row["zoom_steps"]) == (chain.connector_index, [])
        # The question travels with the row: no stage reloads the benchmark.
        assert (row["question"], row["options"], row["reference"]) == (sample.question, sample.options, "white")
        assert (row["answer_kind"], row["frame"], row["resize"], row["schema_version"]) == ("option", "pixel",
                                                                                            None, 2)
        assert row["image_size"] == [1960, 1470] and row["target_boxes"] == [[771.0, 613.0, 802.0, 644.0]]
        assert (row["teacher"], row["simulated"]) == ("openai:Qwen/Qwen2.5-VL-72B-Instruct", False)
        assert (row["task"], row["task_options"], row["category"]) == ("vstar", "{}", "direct_attributes")
        assert row["prompt_version"] == PROMPT_VERSION
    # A single image file is stored as its own bytes, which decode to the canvas the points refer to.
    assert rows[0]["images"][0]["bytes"] == Path(sample.images[0]).read_bytes()
    assert _same_pixels(_decode(rows[0]["images"][0]), sample.canvas())


def test_multi_turn_rows_return_crops_in_user_turns_cut_where_the_zoom_tool_cuts(samples):
    sample = samples[RING]
    rows = _rows(samples, mode="multi", config=LinearizeConfig(max_zooms=2))
    canvas = sample.canvas()
    prompts = prompts_for(AnswerKind.OPTION)
    for row in rows:
        _check_parts(row)
        roles = [m["role"] for m in row["messages"]]
        n_zooms = len(row["zoom_steps"])
        assert roles == ["system", "user"] + ["assistant", "user"] * n_zooms + ["assistant"]
        assert 1 <= n_zooms <= 2 and len(row["images"]) == 1 + n_zooms
        assert row["messages"][0]["content"][0]["text"] == prompts.student_system(True)
        for k in range(n_zooms):
            call, observation = row["messages"][2 + 2 * k], row["messages"][3 + 2 * k]
            [tool_call] = parse_response(call["content"][0]["text"], expect="turn").tool_calls
            x, y = tool_call.point.rounded()
            assert observation["content"] == [
                {"type": "text", "text": "<tool_response>\n"}, {"type": "image", "text": None},
                {"type": "text", "text": prompts.zoom_observation((x, y), dot=False)},
                {"type": "text", "text": "\n</tool_response>"},
            ]
            crop = _decode(row["images"][1 + k])
            assert crop.size == (672, 672)
            assert _same_pixels(crop, zoom(canvas, x, y, get_task("vstar").zoom).image)
        final = parse_response(row["messages"][-1]["content"][0]["text"], expect="turn")
        assert final.ok and final.answer == "white"
    # Chain 0 zooms (100, 100) then (110, 220); its third step folds into the answer turn.
    assert rows[0]["zoom_steps"] == [0, 1]
    assert "Look at (120, 330)." in rows[0]["messages"][-1]["content"][0]["text"]


def test_composed_canvas_is_stored_as_png_and_the_task_decides_crops():
    left = Image.linear_gradient("L").convert("RGB").resize((120, 90))
    right = Image.new("RGB", (80, 60), (10, 200, 30))
    sample = Sample("pair-1", "screenspot-v2", [left, right], "Click the green box.", AnswerKind.POINT,
                    target_boxes=[])
    tree = Tree()
    tree.root.rollouts.append(Rollout([step(150, 30), step(40, 40)], "(150, 30)", 1.0, answer_point=Point(150, 30)))
    record = make_record(tree, sample, task=TaskSpec("screenspot-v2"), data_dir=None, run_dir=Path("/tmp"))
    [row] = question_rows(record, sample, "multi")
    assert row["image_size"] == [200, 90] and row["answer_point"] == {"x": 150.0, "y": 30.0}
    assert _same_pixels(_decode(row["images"][0]), sample.canvas())
    assert row["images"][0]["bytes"].startswith(b"\x89PNG")
    for image, (x, y) in zip(row["images"][1:], [(150, 30), (40, 40)], strict=True):
        assert _same_pixels(_decode(image), zoom(sample.canvas(), x, y, GUI_ZOOM).image)
    assert "red dot" in row["messages"][3]["content"][2]["text"]


def test_rows_reject_a_record_of_another_canvas(samples):
    record = make_record(example_tree(), samples[RING], image_size=(100, 100))
    with pytest.raises(DataError, match="100x100"):
        question_rows(record, samples[RING], "single")


def test_a_row_decodes_to_the_same_row(samples):
    for mode in ("single", "multi"):
        for row in _rows(samples, mode=mode):
            assert TraceRow.from_row(row).to_row() == row


# ----------------------------------------------------------------------------------------- other frames


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_rows_written_for_a_model_are_the_pixel_rows_seen_by_that_model(samples, mode):
    pixel = _rows(samples, mode=mode)
    model = _rows(samples, mode=mode, view=MODEL_VIEW)
    geometry = MODEL_VIEW.geometry(1960, 1470)
    for p_row, m_row in zip(pixel, model, strict=True):
        assert (m_row["frame"], m_row["resize"]) == ("model", {"min_pixels": 3136, "max_pixels": 200_704,
                                                                "factor": 28})
        seen = TraceRow.from_row(p_row).in_view(MODEL_VIEW).to_row()
        assert seen["messages"] == m_row["messages"]
        assert [_decode(i).tobytes() for i in seen["images"]] == [_decode(i).tobytes() for i in m_row["images"]]
        # Every point is the pixel point in the model's frame, and the text writes it rounded.
        for p_step, m_step in zip(p_row["steps"], m_row["steps"], strict=True):
            want = Point(p_step["x"], p_step["y"]).to(Frame.MODEL, geometry)
            assert (m_step["x"], m_step["y"]) == pytest.approx((want.x, want.y))
            assert f"({round(want.x)}, {round(want.y)})" in m_step["text"]
        # Crops are cut where the model's zoom tool cuts: at its rounded point, converted back to pixels.
        for k, i in enumerate(m_row["zoom_steps"]):
            xy = Point(round(m_row["steps"][i]["x"]), round(m_row["steps"][i]["y"]), Frame.MODEL)
            want = zoom_on(samples[RING].canvas(), xy, geometry, get_task("vstar").zoom).image
            assert _same_pixels(_decode(m_row["images"][1 + k]), want)


def test_norm1000_rows_word_the_system_prompt_for_the_grid(samples):
    [row, *_] = _rows(samples, view=View(Frame.NORM1000))
    assert NORM1000_HINT in row["messages"][0]["content"][0]["text"]
    assert all(0 <= s["x"] <= 1000 and 0 <= s["y"] <= 1000 for s in row["steps"])


# ------------------------------------------------------------------------------------------------ split


def _keys(n: int) -> list[tuple[str, str]]:
    return [("vstar", f"q{i}") for i in range(n)]


def test_split_keeps_questions_whole_and_is_deterministic():
    keys = _keys(20)
    val = split_by_question(keys, val_fraction=0.2, seed=1)
    assert len(val) == 4 and val <= set(keys)
    shuffled = keys[:]
    random.Random(0).shuffle(shuffled)
    assert split_by_question(shuffled, 0.2, seed=1) == val
    assert split_by_question(keys[:10] + keys[10:] + keys[:3], 0.2, seed=1) == val  # repeats do not count
    assert len({frozenset(split_by_question(keys, 0.2, seed=s)) for s in range(5)}) > 1


def test_split_edge_cases():
    assert len(split_by_question(_keys(2), 0.05)) == 1
    assert len(split_by_question(_keys(3), 0.9)) == 2  # at least one question trains
    assert split_by_question(_keys(1), 0.05) == set()
    assert split_by_question(_keys(5), 0.0) == set()
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError):
            split_by_question(_keys(5), bad)


# ------------------------------------------------------------------------------------------------- runs


def _run(samples, tmp_path: Path, questions=QUESTIONS, **record_kwargs) -> Path:
    records = [make_record(example_tree(), samples[q], **record_kwargs) for q in questions]
    return write_run(tmp_path / "run-7", records)


def test_linearize_run_writes_one_copy_in_the_hub_layout(samples, tmp_path):
    run_dir = _run(samples, tmp_path)
    with open(run_dir / "trees.jsonl", "ab") as f:
        f.write(b'{"schema_version": 2, "question": {"id": "torn')  # a kill mid-write: ignored
    counts = linearize_run(run_dir, tmp_path / "out", "single", val_fraction=0.34)
    out = tmp_path / "out"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [
        "README.md", "data", "data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet",
        "provenance.json",
    ]
    assert counts.questions == {"train": 2, "validation": 1} and counts.total_rows == 15
    # What plain `datasets` reads is the dataset: the card's metadata names the splits' files.
    loaded = load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert set(loaded) == {"train", "validation"} and loaded["train"].features == FEATURES
    assert set(loaded["train"]["question_id"]) | set(loaded["validation"]["question_id"]) == set(QUESTIONS)
    assert {json.loads(s)["run"] for s in loaded["train"]["source"]} == {"run-7"}
    # Rows are exactly the question's rows, decoded images included.
    expected = [row for q in sorted(set(loaded["train"]["question_id"]))
                for row in _rows(samples, q, config=LinearizeConfig(), run_id="run-7")]
    got = list(loaded["train"])
    assert len(got) == len(expected)
    for g, w in zip(got, expected, strict=True):
        assert {k: v for k, v in g.items() if k != "images"} == {k: v for k, v in w.items() if k != "images"}
        assert _same_pixels(g["images"][0], _decode(w["images"][0]))
    assert len(load_traces(out, "validation")) == 5


def test_each_image_is_stored_once_per_question(samples, tmp_path):
    """The canvas repeats in every chain of a question; parquet's dictionary pages keep one copy."""
    run_dir = _run(samples, tmp_path)
    linearize_run(run_dir, tmp_path / "out", "single", val_fraction=0)
    images = sum(Path(samples[q].images[0]).stat().st_size for q in QUESTIONS)
    stored = sum(p.stat().st_size for p in (tmp_path / "out" / "data").glob("*.parquet"))
    assert stored < 1.3 * images < 15 / 3 * images  # 15 rows, 5 per question


def test_overwrite_replaces_whole_and_a_killed_write_leaves_no_trace(samples, tmp_path):
    run_dir = _run(samples, tmp_path)
    out = tmp_path / "out"
    linearize_run(run_dir, out, "single", val_fraction=0)
    with pytest.raises(ConfigError, match="overwrite"):
        linearize_run(run_dir, out, "multi")
    (tmp_path / ".out.writing").mkdir()  # what a killed write leaves
    (tmp_path / ".out.writing" / "junk").write_text("x")
    linearize_run(run_dir, out, "multi", LinearizeConfig(max_per_question=1), val_fraction=0, overwrite=True)
    assert not (tmp_path / ".out.writing").exists() and not (tmp_path / ".out.old").exists()
    assert set(load_traces(out)["mode"]) == {"multi"} and len(load_traces(out)) == 3
    # A write that fails keeps the dataset that was there.
    empty = write_run(tmp_path / "empty", [make_record(Tree(), samples[RING])])
    with pytest.raises(DataError, match="no rows"):
        linearize_run(empty, out, "single", overwrite=True)
    assert len(load_traces(out)) == 3 and not (tmp_path / ".out.writing").exists()


def test_rows_follow_question_ids_whatever_order_the_search_finished_them(samples, tmp_path):
    forward = write_run(tmp_path / "a" / "run", [make_record(example_tree(), samples[q]) for q in QUESTIONS])
    backward = write_run(tmp_path / "b" / "run",
                         [make_record(example_tree(), samples[q]) for q in reversed(QUESTIONS)])
    linearize_run(forward, tmp_path / "out-a", "single", val_fraction=0)
    linearize_run(backward, tmp_path / "out-b", "single", val_fraction=0)
    a, b = (sorted((tmp_path / d / "data").glob("*.parquet")) for d in ("out-a", "out-b"))
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_the_benchmark_is_not_reloaded_and_moved_data_is_found_with_data_dir(samples, tmp_path, monkeypatch):
    import shutil

    moved = tmp_path / "moved-vstar"
    shutil.copytree(VSTAR_DIR, moved)
    ring = next(s for s in get_task("vstar").load(moved) if s.id == RING)
    run_dir = write_run(tmp_path / "run", [make_record(example_tree(), ring, data_dir=moved)], data_dir=moved)
    monkeypatch.setattr(type(get_task("vstar")), "load", lambda *a, **k: pytest.fail("benchmark reloaded"))
    elsewhere = tmp_path / "elsewhere"
    moved.rename(elsewhere)
    with pytest.raises(DataError, match="--data-dir") as info:
        linearize_run(run_dir, tmp_path / "out", "single")
    assert (info.value.path, info.value.line) == (run_dir / "trees.jsonl", 1)
    assert not (tmp_path / "out").exists()
    linearize_run(run_dir, tmp_path / "out", "single", data_dir=elsewhere, val_fraction=0)
    # A changed image is refused: its points would land on other pixels.
    target = elsewhere / RING
    target.with_suffix(".jpg").write_bytes(target.with_suffix(".jpg").read_bytes() + b"\0")
    with pytest.raises(DataError, match="changed"):
        linearize_run(run_dir, tmp_path / "out2", "single", data_dir=elsewhere)


def test_a_generic_run_keeps_its_task_options(tmp_path):
    run_dir, sample = write_generic_run(tmp_path / "run", tmp_path / "data")
    linearize_run(run_dir, tmp_path / "out", "single", val_fraction=0)
    rows = load_traces(tmp_path / "out")
    assert set(rows["question_id"]) == {"g1"} and set(rows["category"]) == {"mapped"} and len(rows) == 5
    assert {(r["task"], r["task_options"]) for r in rows} == {("generic", json.dumps(GENERIC_OPTIONS, sort_keys=True))}


def test_a_record_of_another_canvas_names_its_line(samples, tmp_path):
    run_dir = _run(samples, tmp_path, questions=[RING], image_size=(640, 480))
    with pytest.raises(DataError, match="640x480") as info:
        linearize_run(run_dir, tmp_path / "out", "multi")
    assert info.value.line == 1


def test_a_folder_without_run_json_is_not_a_run(tmp_path):
    with pytest.raises(DataError, match="run.json"):
        linearize_run(tmp_path, tmp_path / "out", "single")
    assert not (tmp_path / "out").exists()


def test_older_schemas_fail_naming_their_version(samples, tmp_path):
    run_dir = _run(samples, tmp_path, questions=[RING])
    trees = run_dir / "trees.jsonl"
    old_line = {"question_id": RING, "task": "vstar", "tree": example_tree().to_dict()}  # trace-forge 0.1.0
    trees.write_text(json.dumps(old_line) + "\n")
    with pytest.raises(DataError, match="schema version 1") as info:
        linearize_run(run_dir, tmp_path / "out", "single")
    assert info.value.line == 1
    run_json = run_dir / "run.json"
    run_json.write_text(json.dumps({**json.loads(run_json.read_text()), "schema_version": 1}))
    with pytest.raises(DataError, match="run.json.*schema version 1"):
        linearize_run(run_dir, tmp_path / "out", "single")
    old_dataset = tmp_path / "old-dataset"
    (old_dataset / "hf").mkdir(parents=True)
    with pytest.raises(DataError, match="row schema 1"):
        load_traces(old_dataset)
    with pytest.raises(DataError, match="schema version 1"):
        TraceRow.from_row({k: v for k, v in _rows(samples)[0].items() if k != "schema_version"})


# -------------------------------------------------------------------------------------------------- CLI

runner = CliRunner()


def test_cli_prints_counts_and_writes_next_to_the_run(samples, tmp_path):
    run_dir = _run(samples, tmp_path)
    args = ["linearize", str(run_dir), "--mode", "multi", "--max-zooms", "2", "--val-fraction", "0.5",
            "--max-per-question", "4", "--seed", "3"]
    result = runner.invoke(app, args, env={"COLUMNS": "200", "TRACE_FORGE_PROGRESS_S": "0"})
    assert result.exit_code == 0, result.output
    # Not a terminal: a progress line per question on stderr, the counts on stdout.
    progress = [line.split(" · ")[0] for line in result.stderr.splitlines() if line.startswith("linearize")]
    assert progress == ["linearize multi: 1/3 (33%)", "linearize multi: 2/3 (67%)", "linearize multi: 3/3 (100%)"]
    assert "linearize multi:" not in result.stdout
    dataset = {s: load_traces(run_dir / "dataset-multi", s) for s in ("train", "validation")}
    # 5 chains per question (3 direct, 2 backtracking) capped at 4 in proportion: 2.4, 1.6 round to 2, 2.
    # Two of the three questions go to validation.
    assert re.search(r"train\s*│\s*1\s*│\s*2\s*│\s*2\s*│\s*4\s*│", result.stdout), result.stdout
    assert re.search(r"validation\s*│\s*2\s*│\s*4\s*│\s*4\s*│\s*8\s*│", result.stdout), result.stdout
    assert (len(dataset["train"]), len(dataset["validation"])) == (4, 8)
    assert max(max(len(images) for images in dataset[s]["images"]) for s in dataset) <= 3

    again = runner.invoke(app, args)
    assert isinstance(again.exception, ConfigError)
    bad = runner.invoke(app, ["linearize", str(run_dir), "--mode", "dual"])
    assert bad.exit_code == 2 and "single" in bad.output  # a usage error listing the modes
    custom = runner.invoke(app, ["linearize", str(run_dir), "--mode", "single", "--no-backtracking",
                                 "--connector", "Hmm.", "--out", str(tmp_path / "d"), "--val-fraction", "0",
                                 "--frame", "model", "--max-pixels", "200704"])
    assert custom.exit_code == 0, custom.output
    rows = load_traces(tmp_path / "d")
    assert set(rows["kind"]) == {"direct"} and set(rows["frame"]) == {"model"}
