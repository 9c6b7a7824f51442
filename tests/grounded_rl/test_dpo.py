"""DPO on preference pairs from the trees: stock TRL `DPOTrainer` trains one step on a dataset that `trace-forge
search` + `linearize --mode preference` wrote, and `grounded-rl dpo` (model frame, frozen vision tower, output
folder rules, resume) on the tiny model, CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from datasets import load_dataset
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import DPOConfig, DPOTrainer
from typer.testing import CliRunner

from grounded_rl.cli import app as grounded_rl
from grounded_rl.dpo import RUN_RECORD, GroundedDPOConfig, parse_config, prepare_pairs, train_dpo
from tests.grounded_rl.test_contract import REPO, _trace_forge
from trace_forge.dataset import PREFERENCE_ROWS, load_traces
from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import View, parse_response

runner = CliRunner()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, tiny_qwen2_5_vl_dir) -> dict[str, Path]:
    """`trace-forge search` (simulated teacher, half right) on two V* questions, then its preference pairs written in
    pixels and for the tiny model's processor."""
    run = tmp_path_factory.mktemp("dpo") / "run"
    _trace_forge("search", "--task", "vstar", "--data-dir", str(REPO / "data" / "samples" / "vstar"), "--limit", "2",
                 "--simulations", "3", "--teacher", "sim", "--sim-skill", "0.5", "--out", str(run), "--quiet",
                 "--no-linearize")
    _trace_forge("linearize", str(run), "--mode", "preference", "--val-fraction", "0", "--max-per-question", "3",
                 "--out", str(run / "pixel"))
    _trace_forge("linearize", str(run), "--mode", "preference", "--val-fraction", "0", "--max-per-question", "3",
                 "--processor", str(tiny_qwen2_5_vl_dir), "--out", str(run / "model"))
    return {"pixel": run / "pixel", "model": run / "model"}


def test_stock_dpo_trainer_trains_one_step_on_the_pairs_as_loaded(pairs, tiny_qwen2_5_vl_dir, tmp_path):
    dataset = load_dataset(str(pairs["model"]), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(dataset) >= 2
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_5_vl_dir)
    args = DPOConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, max_length=None,
                     learning_rate=1e-3, use_cpu=True, bf16=False, report_to=[], save_strategy="no", logging_steps=1,
                     gradient_checkpointing=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor)

    # TRL's own collator: the image in the prompt, and exactly the chosen response (and its end of turn) as the
    # completion; the chosen and rejected responses are two answers of the grounded format.
    row = dataset[0]
    batch = trainer.data_collator([dict(row)])
    ids, mask = batch["input_ids"][0].tolist(), batch["completion_mask"][0].tolist()
    chosen = row["chosen"][0]["content"][0]["text"]
    assert processor.tokenizer.decode([t for t, m in zip(ids, mask, strict=True) if m]) == chosen + "<|im_end|>\n"
    image_token = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    assert ids.count(image_token) == int((batch["image_grid_thw"].prod(-1) // 4)[0])
    for side in ("chosen", "rejected"):
        assert parse_response(row[side][0]["content"][0]["text"], expect="single").answer is not None

    before = [p.detach().clone() for p in model.parameters()]
    trainer.train()
    assert trainer.state.global_step == 1
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_pixel_pairs_are_rewritten_for_the_model_and_long_ones_dropped(pairs, tiny_qwen2_5_vl_dir):
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl_dir)
    view = View.of_checkpoint(tiny_qwen2_5_vl_dir)
    pixel = load_traces(pairs["pixel"], rows=PREFERENCE_ROWS)
    model = load_traces(pairs["model"], rows=PREFERENCE_ROWS)
    prepared, counts = prepare_pairs(pixel, processor, view, max_length=None)
    assert counts == {"kept": len(pixel), "too_long": 0}
    for side in ("prompt", "chosen", "rejected"):
        assert prepared[side] == model[side]
    assert set(prepared["frame"]) == {"model"} and pixel["chosen"] != model["chosen"]
    same, _ = prepare_pairs(model, processor, view, max_length=None)
    assert same is model  # already in the model's view: used as stored
    _, short = prepare_pairs(model, processor, view, max_length=64)
    assert short == {"kept": 0, "too_long": len(model)}  # the image alone is longer


def _dpo(*args: str):
    return runner.invoke(grounded_rl, ["dpo", *args])


def test_grounded_rl_dpo_trains_saves_refuses_an_occupied_folder_and_resumes(pairs, tiny_qwen2_5_vl_dir, tmp_path):
    out = tmp_path / "dpo"
    common = ["--model", str(tiny_qwen2_5_vl_dir), "--data", str(pairs["pixel"]), "--output-dir", str(out),
              "--per_device_train_batch_size", "2", "--gradient_checkpointing", "false", "--report_to", "none",
              "--logging_steps", "1", "--save_steps", "1", "--learning_rate", "1e-3"]
    first = _dpo(*common, "--max_steps", "1")
    assert first.exit_code == 0, first.output + repr(first.exception)
    record = json.loads((out / RUN_RECORD).read_text())
    assert record["global_step"] == 1 and record["resumed_from"] is None
    assert record["view"]["frame"] == "model" and record["config"]["bf16"] is False  # CPU: fp32
    assert record["data"]["train"]["pairs"] == len(load_traces(pairs["pixel"], rows=PREFERENCE_ROWS))
    assert record["parameters"]["vision_frozen"] > 0
    assert (out / "checkpoint-1").is_dir() and (out / "model.safetensors").is_file()
    assert "{%- generation -%}" in (out / "chat_template.jinja").read_text()  # our template, saved with the model
    before = load_file(str(tiny_qwen2_5_vl_dir / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and not any("visual.blocks." in n or "visual.patch_embed." in n for n in changed)

    again = _dpo(*common, "--max_steps", "1")
    assert isinstance(again.exception, ConfigError) and "--resume" in str(again.exception)
    other = _dpo(*common, "--max_steps", "2", "--resume", "--beta", "0.5")
    assert isinstance(other.exception, ConfigError) and "beta: 0.1 -> 0.5" in str(other.exception)

    resumed = _dpo(*common, "--max_steps", "2", "--resume")
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    record = json.loads((out / RUN_RECORD).read_text())
    assert record["global_step"] == 2 and record["resumed_from"].endswith("checkpoint-1")
    assert (out / "checkpoint-2").is_dir()

    fresh = _dpo(*common, "--max_steps", "1", "--overwrite")
    assert fresh.exit_code == 0, fresh.output + repr(fresh.exception)
    assert json.loads((out / RUN_RECORD).read_text())["global_step"] == 1 and not (out / "checkpoint-2").exists()


def test_dpo_settings_are_checked_before_any_work(pairs, tiny_qwen2_5_vl_dir, tmp_path):
    with pytest.raises(ConfigError, match="--data, --output_dir required"):
        parse_config(["--model", "m"])
    with pytest.raises(ConfigError, match="pass one"):
        parse_config(["--model", "m", "--data", "d", "--output_dir", str(tmp_path), "--resume", "--overwrite"])
    config = parse_config(["--model", "m", "--data", "d", "--output_dir", str(tmp_path), "--beta", "0.3",
                           "--loss_type", "ipo"])
    assert isinstance(config, GroundedDPOConfig) and config.beta == 0.3 and config.loss_type == ["ipo"]
    assert config.max_length == 8192 and config.freeze_vision and config.bf16 is torch.cuda.is_available()
    unknown = _dpo("--model", "m", "--data", "d", "--output_dir", str(tmp_path), "--bogus", "1")
    assert isinstance(unknown.exception, ConfigError) and "--bogus" in str(unknown.exception)
    help_text = _dpo("--help")
    assert help_text.exit_code == 0 and "--loss_type" in help_text.output and "--freeze_vision" in help_text.output

    single = tmp_path / "single"
    _trace_forge("linearize", str(pairs["pixel"].parent), "--mode", "single", "--val-fraction", "0", "--out",
                 str(single))
    with pytest.raises(DataError, match="it holds trace rows, not preference rows"):
        train_dpo(parse_config(["--model", str(tiny_qwen2_5_vl_dir), "--data", str(single), "--output_dir",
                                str(tmp_path / "a")]))
    with pytest.raises(DataError, match="no preference pair fits max_length=64"):
        train_dpo(parse_config(["--model", str(tiny_qwen2_5_vl_dir), "--data", str(pairs["pixel"]), "--output_dir",
                                str(tmp_path / "b"), "--max_length", "64"]))
