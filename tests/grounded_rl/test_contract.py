"""The stage contract end to end: datasets that `trace-forge search` + `linearize` write train in stock TRL, one
dialog is the same tokens in SFT, GRPO and evaluation, and points written for a processor land where that
processor puts the pixels they name."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from datasets import load_dataset
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import SFTConfig, SFTTrainer
from trl.data_utils import prepare_multimodal_messages
from typer.testing import CliRunner

from grounded_rl.env import ZoomEnvironment, ZoomSession
from grounded_rl.eval import EvalConfig, Student
from grounded_rl.grpo import prompt_dataset, prompt_rows
from grounded_rl.models import Family
from grounded_rl.templates import chat_template
from tests.grounded_rl.test_models import _resized_image
from trace_forge.cli import app as trace_forge
from trace_forge.dataset import TraceRow, load_traces
from trace_forge.grounding import Frame, Point, View, parse_response
from trace_forge.tasks import TaskSpec
from trace_forge.teachers import ImageRef, Message
from trace_forge.teachers.hf import HFTeacher

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def _trace_forge(*args: str) -> None:
    result = runner.invoke(trace_forge, list(args))
    assert result.exit_code == 0, result.output + repr(result.exception)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """`trace-forge search` with the simulated teacher on two bundled V* questions."""
    out = tmp_path_factory.mktemp("contract") / "run"
    _trace_forge("search", "--task", "vstar", "--data-dir", str(REPO / "data" / "samples" / "vstar"), "--limit", "2",
                 "--simulations", "2", "--teacher", "sim", "--sim-skill", "1.0", "--out", str(out), "--quiet",
                 "--no-linearize")
    return out


@pytest.fixture(scope="module")
def datasets(run_dir, tiny_qwen2_5_vl_dir) -> dict[str, Path]:
    """Single- and multi-turn datasets linearized for the tiny model's processor (its frame and resize)."""
    out = {}
    for mode in ("single", "multi"):
        out[mode] = run_dir / f"dataset-{mode}"
        _trace_forge("linearize", str(run_dir), "--mode", mode, "--processor", str(tiny_qwen2_5_vl_dir),
                     "--max-per-question", "2", "--max-zooms", "2", "--val-fraction", "0")
    return out


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_stock_sft_trainer_trains_on_the_dataset_as_loaded(datasets, tiny_qwen2_5_vl_dir, tmp_path, mode):
    dataset = load_dataset(str(datasets[mode]), split="train", cache_dir=str(tmp_path / "cache"))
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_5_vl_dir)
    args = SFTConfig(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2,
                     assistant_only_loss=True, max_length=None, learning_rate=1e-3, use_cpu=True, report_to=[],
                     save_strategy="no", logging_steps=1, gradient_checkpointing=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)

    # The labels TRL's own collator makes cover exactly the assistant turns (and their end-of-turn tokens).
    batch = trainer.data_collator([dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    trained = processor.tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])
    assistant = [p["text"] for m in dataset[0]["messages"] if m["role"] == "assistant" for p in m["content"]]
    assert trained == "".join(text + "<|im_end|>" for text in assistant)
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert ids.count(image_token) == int((batch["image_grid_thw"].prod(-1) // 4).sum())  # every image in place
    assert batch["image_grid_thw"].shape[0] == len(dataset[0]["images"])

    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    assert trainer.state.global_step == 2
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_one_dialog_is_the_same_tokens_in_sft_grpo_and_eval(datasets, tiny_qwen2_5_vl_dir):
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl_dir)
    rows = load_traces(datasets["multi"])
    row = next(r for r in rows if len(r["zoom_steps"]) == 2)
    trace = TraceRow.from_row(row)
    canvas, view = row["images"][0], View.of_checkpoint(tiny_qwen2_5_vl_dir)
    assert trace.view == view
    assistant = [m["content"][0]["text"] for m in row["messages"] if m["role"] == "assistant"]
    zooms = [parse_response(t, expect="turn").tool_calls[0].point for t in assistant[:-1]]

    def tokens(messages):
        return processor.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"][0]

    # SFT: the row as stock TRL reads it.
    sft = tokens(prepare_multimodal_messages(row["messages"], row["images"]))

    # GRPO: the prompt row of the question, then the rollout as TRL's tool loop builds it: each zoom call answered
    # by the zoom environment's reply in a "tool" message.
    sample = replace(trace.sample, images=[canvas])
    prompt = prompt_dataset(prompt_rows([sample], trace.task, view.resize, Family.QWEN2_5_VL, True))[0]
    env = ZoomEnvironment(view)
    env.reset(**{k: v for k, v in prompt.items() if k != "prompt"})
    grpo = prepare_multimodal_messages(prompt["prompt"], [prompt["image"]])
    for text, point in zip(assistant, [*zooms, None], strict=True):
        grpo.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
        if point is not None:
            grpo.append({"role": "tool", "name": "zoom", "content": env.zoom(list(point.rounded()))})

    # Evaluation: the student's prompt, and each zoom served by the same session class, rendered by the hf backend.
    config = EvalConfig(task="vstar", model=str(tiny_qwen2_5_vl_dir), multi_turn=True)
    teacher = HFTeacher(str(tiny_qwen2_5_vl_dir), chat_template=chat_template("qwen2_5_vl"))
    task = TaskSpec("vstar").build()
    chat = Student(None, view, config, task).prompt(sample, canvas)
    session = ZoomSession(canvas, view, task.zoom, env.session.prompts)
    for text, point in zip(assistant, [*zooms, None], strict=True):
        chat.append(Message("assistant", (text,)))
        if point is not None:
            served = session.zoom_at(list(point.rounded()))
            chat.append(Message("tool", (ImageRef(served.image), served.text)))
    # The backend renders the prompt of the last turn; the model then writes that turn, ending it with <|im_end|>.
    rendered = teacher.render(chat[:-1]) + assistant[-1] + "<|im_end|>\n"
    images = [teacher._image(ref) for m in chat for ref in m.images]
    evaluation = processor(text=[rendered], images=images)["input_ids"][0]

    assert sft == tokens(grpo) == list(evaluation)
    # and the crops are the same pixels: the row's crops are what the zoom tool serves
    fresh = ZoomSession(canvas, view, task.zoom, env.session.prompts)
    for crop, point in zip(row["images"][1:], zooms, strict=True):
        assert crop.tobytes() == fresh.zoom_at(list(point.rounded())).image.tobytes()


def _marker_bench(folder: Path) -> Path:
    """A generic point task: each image has one red disc, its target box a square inside the disc."""
    folder.mkdir()
    rows = []
    for i, (size, centre) in enumerate([((900, 600), (611, 217)), ((517, 389), (403, 97)), ((1500, 1000), (222, 811))]):
        image = Image.new("RGB", size, (255, 255, 255))
        x, y = centre
        ImageDraw.Draw(image).ellipse([x - 14, y - 14, x + 14, y + 14], fill=(255, 0, 0))
        image.save(folder / f"{i}.png")
        rows.append({"id": f"m{i}", "image": f"{i}.png", "question": "Where is the red disc?",
                     "box": [x - 6, y - 6, x + 6, y + 6]})
    (folder / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "bench.jsonl"


def test_points_written_for_a_processor_land_on_their_markers_in_what_it_feeds_the_model(tiny_qwen2_5_vl_dir,
                                                                                       tmp_path):
    bench = _marker_bench(tmp_path / "bench")
    run = tmp_path / "run"
    options = ["-o", "image=image", "-o", "question=question", "-o", "boxes=box", "-o", "id=id",
               "-o", "answer_kind=point"]
    _trace_forge("search", "--task", "generic", "--data-dir", str(bench), *options, "--teacher", "sim", "--sim-skill",
                 "1.0", "--simulations", "2", "--out", str(run), "--quiet", "--no-linearize")
    _trace_forge("linearize", str(run), "--mode", "single", "--processor", str(tiny_qwen2_5_vl_dir),
                 "--val-fraction", "0")
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl_dir)
    rows = load_traces(run / "dataset-single")
    assert set(rows["frame"]) == {"model"} and len(set(rows["question_id"])) == 3
    checked = 0
    for row in rows:
        out = processor.image_processor(images=[row["images"][0]], return_tensors="pt")
        rgb = _resized_image(out["pixel_values"], out["image_grid_thw"][0], processor.image_processor)
        assert (rgb.shape[2], rgb.shape[1]) != tuple(row["image_size"])  # the processor really resizes
        for step in row["steps"]:
            x, y = Point(step["x"], step["y"], Frame.MODEL).rounded()
            assert f"({x}, {y})" in step["text"]
            r, g, b = rgb[:, y, x].tolist()
            assert r > 0.8 and g < 0.3 and b < 0.3, (row["question_id"], step)  # on the red disc
            checked += 1
    assert checked >= 6

