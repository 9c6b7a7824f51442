"""SFT with TRL on the tiny model, CPU: overfitting, frozen vision tower, save/reload, crops in the forward pass,
resuming, and the CLI with a config file."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
from typer.testing import CliRunner

from grounded_rl.cli import app
from grounded_rl.data import GroundedCollator
from grounded_rl.sft import RUN_RECORD, SFTArgs, train
from grounded_rl.templates import chat_template
from tests.grounded_rl.test_data import make_row, write_traces
from trace_forge.errors import ConfigError
from trace_forge.grounding import View


@pytest.fixture(scope="module")
def traces(tmp_path_factory, tiny_qwen2_5_vl_dir):
    """Four grounded chains (two multi-turn with crops, two single-turn) and a one-row validation split, written
    for the tiny model's processor, so its short system prompt is trained as stored."""
    view = View.of_checkpoint(tiny_qwen2_5_vl_dir)
    modes = ["multi", "single", "multi", "single", "multi"]
    rows = [make_row(i, mode, view=view, system="Answer with grounded steps.") for i, mode in enumerate(modes)]
    return write_traces({"train": rows[:4], "validation": rows[4:]}, tmp_path_factory.mktemp("traces") / "ds")


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_overfit_freezes_the_vision_tower_and_saves_a_reloadable_model(traces, tiny_qwen2_5_vl_dir, tmp_path):
    out = tmp_path / "run"
    args = SFTArgs.from_sources(overrides=dict(
        model=str(tiny_qwen2_5_vl_dir), data=str(traces), val_data=str(traces), out=str(out), lr=5e-3,
        lr_scheduler="constant", weight_decay=0.0, batch_size=4, grad_accum=1, max_steps=20, warmup_ratio=0.0,
        logging_steps=1, save_steps=20, eval_steps=20, max_length=1024, gradient_checkpointing=False, seed=0,
    ))
    trainer = train(args)

    losses = _losses(trainer)
    assert len(losses) == 20 and losses[-1] < 0.5 * losses[0], losses
    assert any("eval_loss" in entry for entry in trainer.state.log_history)
    assert any("train_tokens_per_second" in entry for entry in trainer.state.log_history)

    # Vision blocks unchanged, merger (projector) and LLM trained.
    before = load_file(str(tiny_qwen2_5_vl_dir / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert not any("visual.blocks." in n or "visual.patch_embed." in n for n in changed)
    assert any("visual.merger." in n for n in changed)
    assert any("visual" not in n for n in changed)  # the language model

    # The saved model and processor reload (HF format, our template) and give the trained model's logits.
    processor = AutoProcessor.from_pretrained(out)
    assert processor.chat_template == chat_template("qwen2_5_vl")
    reloaded = AutoModelForImageTextToText.from_pretrained(out).eval()
    batch = GroundedCollator(processor, "qwen2_5_vl")([make_row(0, "multi")])
    batch.pop("labels")
    trained = trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, trained(**batch).logits)

    record = json.loads((out / RUN_RECORD).read_text())
    assert record["args"]["lr"] == 5e-3 and record["family"] == "qwen2_5_vl" and record["global_step"] == 20
    assert record["versions"]["trl"] and record["data"]["train"]["fingerprint"]
    assert record["data"]["train"]["rows"] == 4 and record["data"]["validation"]["rows"] == 1
    assert record["parameters"]["vision_frozen"] > 0
    assert list((out / "runs").rglob("events.out.tfevents.*"))


def test_crop_images_reach_the_vision_tower(tiny_qwen2_5_vl_dir):
    processor = AutoProcessor.from_pretrained(tiny_qwen2_5_vl_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_5_vl_dir)
    row = make_row(30, "multi")
    assert len(row["images"]) == 3  # canvas and two crops
    seen = []
    model.model.visual.register_forward_hook(lambda module, args, kwargs, output: seen.append(args[0]),
                                             with_kwargs=True)
    batch = GroundedCollator(processor, "qwen2_5_vl")([row])
    model(**batch)

    (pixels,) = seen
    crop = processor.image_processor(images=[row["images"][2]], return_tensors="pt")["pixel_values"]
    canvas = processor.image_processor(images=[row["images"][0]], return_tensors="pt")["pixel_values"]
    assert pixels.shape[0] == canvas.shape[0] + 2 * crop.shape[0]
    assert torch.allclose(pixels[-crop.shape[0]:], crop)  # the last crop's patches, in order of appearance


def test_resume_continues_the_global_step(traces, tiny_qwen2_5_vl_dir, tmp_path):
    common = dict(model=str(tiny_qwen2_5_vl_dir), data=str(traces), out=str(tmp_path / "run"), lr=1e-4,
                  batch_size=2, grad_accum=1, save_steps=2, logging_steps=1, report_to="none",
                  gradient_checkpointing=False)
    first = train(SFTArgs.from_sources(overrides={**common, "max_steps": 4}))
    assert first.state.global_step == 4 and (tmp_path / "run" / "checkpoint-4").is_dir()

    second = train(SFTArgs.from_sources(overrides={**common, "max_steps": 6, "resume": True}))
    assert second.state.global_step == 6
    logged_steps = [entry["step"] for entry in second.state.log_history if "loss" in entry]
    assert logged_steps[-2:] == [5, 6] and logged_steps == sorted(logged_steps)
    record = json.loads((tmp_path / "run" / RUN_RECORD).read_text())
    assert record["resumed_from"].endswith("checkpoint-4") and record["global_step"] == 6


def test_cli_config_file_gives_defaults_that_flags_override_and_lora_saves_a_merged_model(
    traces, tiny_qwen2_5_vl_dir, tmp_path
):
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_qwen2_5_vl_dir), "data": str(traces), "lr": "2e-4", "batch_size": 2, "grad_accum": 1,
        "max_steps": 50, "warmup_ratio": 0.0, "report_to": "none", "save_steps": 100,
        "gradient_checkpointing": False,
    }))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["sft", "--config", str(config), "--out", str(out), "--max-steps", "2",
                                      "--lora"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    args = json.loads((out / RUN_RECORD).read_text())["args"]
    assert args["lr"] == 2e-4 and args["max_steps"] == 2 and args["lora"] is True and args["batch_size"] == 2

    saved = load_file(str(out / "model.safetensors"))
    assert saved and not any("lora" in name for name in saved)  # adapters merged into plain weights
    AutoModelForImageTextToText.from_pretrained(out)

    with pytest.raises(ConfigError, match=r"unknown SFT arguments \['learning_rate'\]"):
        SFTArgs.from_sources(config, {"learning_rate": 1.0})
    with pytest.raises(ConfigError, match="--out is required"):
        SFTArgs.from_sources(config)
