"""SFT with TRL on the tiny model, CPU: overfitting, frozen vision tower, save/reload, crops in the forward pass,
resuming, output-folder rules, and the command line (TRL's names, YAML files, one-line errors)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
from typer.testing import CliRunner

from grounded_rl.cli import app
from grounded_rl.data import GroundedCollator
from grounded_rl.sft import GroundedSFTConfig, train
from grounded_rl.templates import chat_template
from grounded_rl.training import RUN_FILE, RunOptions, config_from_mapping, parse_command_line
from tests.grounded_rl.test_data import make_row, write_traces
from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import View

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def traces(tmp_path_factory, tiny_qwen2_5_vl_dir):
    """Four grounded chains (two multi-turn with crops, two single-turn) and a one-row validation split, written
    for the tiny model's processor, so its short system prompt is trained as stored."""
    view = View.of_checkpoint(tiny_qwen2_5_vl_dir)
    modes = ["multi", "single", "multi", "single", "multi"]
    rows = [make_row(i, mode, view=view, system="Answer with grounded steps.") for i, mode in enumerate(modes)]
    return write_traces({"train": rows[:4], "validation": rows[4:]}, tmp_path_factory.mktemp("traces") / "ds")


def sft_config(**settings) -> GroundedSFTConfig:
    return config_from_mapping(GroundedSFTConfig, settings, base=None, where="test")


def _losses(trainer) -> list[float]:
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def test_overfit_freezes_the_vision_tower_and_saves_a_reloadable_model(traces, tiny_qwen2_5_vl_dir, tmp_path):
    out = tmp_path / "run"
    before = sorted(p.relative_to(traces) for p in traces.rglob("*"))
    config = sft_config(
        model=str(tiny_qwen2_5_vl_dir), data=str(traces), val_data=str(traces), output_dir=str(out),
        learning_rate=5e-3, lr_scheduler_type="constant", weight_decay=0.0, per_device_train_batch_size=4,
        gradient_accumulation_steps=1, max_steps=20, warmup_steps=0.0, logging_steps=1, save_steps=20,
        eval_steps=20, max_length=1024, gradient_checkpointing=False,
    )
    assert config.bf16 is False and config.dataloader_pin_memory is False  # CPU: fp32, nothing pinned
    trainer = train(config)

    losses = _losses(trainer)
    assert len(losses) == 20 and losses[-1] < 0.5 * losses[0], losses
    assert any("eval_loss" in entry for entry in trainer.state.log_history)

    # Vision blocks unchanged, merger (projector) and LLM trained.
    base = load_file(str(tiny_qwen2_5_vl_dir / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    assert {t.dtype for t in after.values()} == {torch.float32}
    changed = {name for name in base if not torch.equal(base[name], after[name])}
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

    record = json.loads((out / RUN_FILE).read_text())
    assert record["command"] == "sft" and record["settings"]["learning_rate"] == 5e-3
    assert record["family"] == "qwen2_5_vl" and record["global_step"] == 20 and record["finished"]
    assert record["versions"]["trl"] and record["data"]["train"]["fingerprint"]
    assert record["data"]["train"]["rows"] == 4 and record["data"]["validation"]["rows"] == 1
    assert record["parameters"]["vision_frozen"] > 0
    assert list((out / "runs").rglob("events.out.tfevents.*"))

    card = (out / "README.md").read_text()
    assert str(tiny_qwen2_5_vl_dir) in card and str(traces) in card  # base model and data named
    assert "supervised fine-tuning" in card and "multi-turn" in card and "AutoModelForImageTextToText" in card
    assert '"type": "image"' in card and "[None]" not in card
    assert sorted(p.relative_to(traces) for p in traces.rglob("*")) == before  # nothing written into the input


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


# ---------------------------------------------------------------------------------------------------------------
# Resume and output folders
# ---------------------------------------------------------------------------------------------------------------


def test_resume_from_a_copy_of_checkpoint_3_ends_with_the_weights_of_the_uninterrupted_run(
    traces, tiny_qwen2_5_vl_dir, tmp_path, caplog
):
    """6 steps saving every 3; a second run resumed from a copy of checkpoint-3 (next to a checkpoint-6 that a
    kill left half-written) ends with the same weights: LLM, projector and frozen vision tower alike."""
    settings = dict(model=str(tiny_qwen2_5_vl_dir), data=str(traces), learning_rate=1e-3,
                    per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=6, save_steps=3,
                    logging_steps=1, warmup_steps=0.0, report_to="none", gradient_checkpointing=False)
    first = train(sft_config(**settings, output_dir=str(tmp_path / "a")))

    copy = tmp_path / "b"
    copy.mkdir()
    shutil.copy(tmp_path / "a" / RUN_FILE, copy / RUN_FILE)
    shutil.copytree(tmp_path / "a" / "checkpoint-3", copy / "checkpoint-3")
    torn = copy / "checkpoint-6"  # a kill while saving: weights half written, no trainer state
    torn.mkdir()
    (torn / "model.safetensors").write_bytes((tmp_path / "a" / "checkpoint-6" / "model.safetensors").read_bytes()[:99])
    with caplog.at_level(logging.WARNING, logger="grounded_rl"):
        second = train(sft_config(**settings, output_dir=str(copy)), RunOptions(resume=True))
    assert any("checkpoint-6 is incomplete" in r.getMessage() for r in caplog.records)

    assert second.state.global_step == 6
    assert [e["step"] for e in second.state.log_history if "loss" in e] == [1, 2, 3, 4, 5, 6]  # 1-3 restored
    assert _losses(second) == pytest.approx(_losses(first), abs=1e-5)
    want, got = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(copy / "model.safetensors"))
    assert want.keys() == got.keys()
    assert max((want[k] - got[k]).abs().max().item() for k in want) <= 1e-5
    base = load_file(str(tiny_qwen2_5_vl_dir / "model.safetensors"))
    assert any(not torch.equal(base[k], want[k]) for k in want if "visual.merger." in k)  # the projector moved
    record = json.loads((copy / RUN_FILE).read_text())
    assert record["resumed_from"].endswith("checkpoint-3") and record["global_step"] == 6
    assert (copy / "checkpoint-6" / "trainer_state.json").is_file()  # saved again, whole


def test_an_unrestorable_checkpoint_is_an_error(traces, tiny_qwen2_5_vl_dir, tiny_qwen3_vl_dir, tmp_path):
    settings = dict(model=str(tiny_qwen2_5_vl_dir), data=str(traces), per_device_train_batch_size=2,
                    gradient_accumulation_steps=1, max_steps=2, save_steps=1, report_to="none",
                    gradient_checkpointing=False)
    out = tmp_path / "run"
    train(sft_config(**settings, output_dir=str(out)))
    # Another model's weights where checkpoint-2's should be: nothing of it may load silently.
    shutil.copy(tiny_qwen3_vl_dir / "model.safetensors", out / "checkpoint-2" / "model.safetensors")
    with pytest.raises(DataError, match="checkpoint-2: cannot restore the weights"):
        train(sft_config(**{**settings, "max_steps": 3}, output_dir=str(out)), RunOptions(resume=True))


def test_an_occupied_output_folder_is_refused_unless_resume_with_the_same_settings_or_overwrite(
    traces, tiny_qwen2_5_vl_dir, tmp_path
):
    out = tmp_path / "run"
    settings = dict(model=str(tiny_qwen2_5_vl_dir), data=str(traces), output_dir=str(out),
                    per_device_train_batch_size=2, gradient_accumulation_steps=1, max_steps=1, save_steps=1,
                    report_to="none", gradient_checkpointing=False)
    train(sft_config(**settings))
    model = (out / "model.safetensors").read_bytes()

    with pytest.raises(ConfigError, match=r"holds a sft run of .*: add --resume to continue it .* --overwrite"):
        train(sft_config(**settings))
    with pytest.raises(ConfigError, match=r"other settings: learning_rate \(1e-06 then, 0.01 now\)"):
        train(sft_config(**settings, learning_rate=1e-2), RunOptions(resume=True))
    assert (out / "model.safetensors").read_bytes() == model and (out / "checkpoint-1").is_dir()  # untouched

    train(sft_config(**settings, learning_rate=1e-2), RunOptions(overwrite=True))
    assert json.loads((out / RUN_FILE).read_text())["settings"]["learning_rate"] == 1e-2

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds files that are no grounded-rl run"):
        train(sft_config(**{**settings, "output_dir": str(tmp_path / "notes")}), RunOptions(overwrite=True))
    with pytest.raises(ConfigError, match="holds no run to resume"):
        train(sft_config(**{**settings, "output_dir": str(tmp_path / "new")}), RunOptions(resume=True))


# ---------------------------------------------------------------------------------------------------------------
# Configuration, the TRL way
# ---------------------------------------------------------------------------------------------------------------


def test_a_trl_style_yaml_is_read_with_trl_names_and_paths_relative_to_the_file(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    folder.mkdir()
    config_file = folder / "sft.yaml"
    config_file.write_text(yaml.safe_dump({
        "model_name_or_path": "Qwen/Qwen2.5-VL-3B-Instruct", "dataset_name": "../traces/ds",
        "output_dir": "../runs/sft", "learning_rate": "2e-5", "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 8, "warmup_ratio": 0.1, "lr_scheduler_type": "linear", "num_train_epochs": 1,
        "optim": "adamw_torch", "report_to": ["none"], "run_name": "mine", "push_to_hub": False,
        "env": {"GROUNDED_RL_TEST_ENV": "set"},
    }))
    monkeypatch.chdir(tmp_path / "configs")
    monkeypatch.delenv("GROUNDED_RL_TEST_ENV", raising=False)
    config, options = parse_command_line(GroundedSFTConfig, ["--config", str(config_file), "--max-steps", "7",
                                                              "--weight_decay", "0.1", "--resume"], prog="sft")
    assert config.model == "Qwen/Qwen2.5-VL-3B-Instruct"  # a Hub id stays one
    assert config.data == str(tmp_path / "traces" / "ds") and config.output_dir == str(tmp_path / "runs" / "sft")
    assert (config.learning_rate, config.per_device_train_batch_size, config.gradient_accumulation_steps) == (
        2e-5, 2, 8)
    assert (config.warmup_steps, config.lr_scheduler_type.value, config.optim.value) == (0.1, "linear", "adamw_torch")
    assert (config.max_steps, config.weight_decay, config.run_name, config.report_to) == (7, 0.1, "mine", [])
    assert options.resume and not options.overwrite and os.environ["GROUNDED_RL_TEST_ENV"] == "set"

    for tracker in ("trackio", "mlflow"):  # passed through to transformers, or one line naming the package
        argv = ["--out", "x", "--report_to", f"tensorboard,{tracker}"]
        if importlib.util.find_spec(tracker):
            assert parse_command_line(GroundedSFTConfig, argv, prog="sft")[0].report_to == ["tensorboard", tracker]
        else:
            with pytest.raises(ConfigError, match=f"report_to {tracker} needs the {tracker} package"):
                parse_command_line(GroundedSFTConfig, argv, prog="sft")

    config_file.write_text(yaml.safe_dump({"model": "m", "lr": 1e-3}))
    with pytest.raises(ConfigError, match=r"sft.yaml: unknown setting 'lr'"):
        parse_command_line(GroundedSFTConfig, ["--config", str(config_file)], prog="sft")
    with pytest.raises(ConfigError, match=r"unknown setting 'learning_rat'; did you mean learning_rate"):
        config_from_mapping(GroundedSFTConfig, {"output_dir": "x", "learning_rat": 1}, base=None, where="sft")
    with pytest.raises(ConfigError, match=r"sft: unknown arguments --epochs 3; did you mean .*--num_train_epochs"):
        parse_command_line(GroundedSFTConfig, ["--out", "x", "--epochs", "3"], prog="sft")


def test_the_cli_trains_from_a_yaml_file_that_flags_override_and_lora_saves_a_merged_model(
    traces, tiny_qwen2_5_vl_dir, tmp_path
):
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_qwen2_5_vl_dir), "data": str(traces), "learning_rate": "2e-4",
        "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 50, "warmup_ratio": 0.0,
        "report_to": "none", "save_steps": 100, "gradient_checkpointing": False,
    }))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["sft", "--config", str(config), "--out", str(out), "--max-steps", "2",
                                      "--lora", "--logging_steps", "1"], env={"TRACE_FORGE_PROGRESS_S": "0"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert result.stdout.strip() == f"saved the fine-tuned model to {out}"  # logs went to stderr
    # One progress display in a log: whole lines with the step and the latest loss, no tqdm carriage returns.
    lines = [line for line in result.stderr.splitlines() if line.startswith("sft: ")]
    assert lines[0].startswith("sft: 0/2 (0%)") and any(line.startswith("sft: 2/2 (100%)") for line in lines)
    assert any(" · loss " in line for line in lines) and "\r" not in result.stderr and "it/s" not in result.stderr
    settings = json.loads((out / RUN_FILE).read_text())["settings"]
    assert settings["learning_rate"] == 2e-4 and settings["use_peft"] is True
    assert settings["per_device_train_batch_size"] == 2
    assert json.loads((out / RUN_FILE).read_text())["config"]["max_steps"] == 2

    saved = load_file(str(out / "model.safetensors"))
    assert saved and not any("lora" in name for name in saved)  # adapters merged into plain weights
    AutoModelForImageTextToText.from_pretrained(out)

    help_text = CliRunner().invoke(app, ["sft", "--help"]).stdout
    for flag in ("--learning_rate", "--per_device_train_batch_size", "--weight_decay", "--optim", "--push_to_hub",
                 "--run_name", "--bf16", "--out", "--warmup_ratio", "--resume", "--overwrite", "examples:"):
        assert flag in help_text, flag


def _cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``grounded-rl ARGS`` in a fresh process, with Python's import log (``-X importtime``) on stderr."""
    # A Hub lookup would fail slowly here; a wide console keeps the one error line on one line.
    env = {**os.environ, "HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9", "COLUMNS": "500"}
    return subprocess.run([sys.executable, "-X", "importtime", "-m", "grounded_rl.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if not line.startswith("import time:")]


def _imported(result: subprocess.CompletedProcess) -> set[str]:
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[-1].strip() for line in lines}


def test_a_missing_model_or_dataset_is_one_line_before_anything_heavy_loads(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "sft.yaml").write_text("model: ../runs/tiny\n")  # relative to the file, not the cwd

    cases = [
        (["--model", "runs/tinyy", "--data", "d", "--out", "o"], "--model runs/tinyy: no such file or folder"),
        (["--config", "configs/sft.yaml", "--data", "d", "--out", "o"],
         f"--model {tmp_path / 'runs' / 'tiny'}: no such file or folder"),
    ]
    for args, message in cases:
        result = _cli("sft", *args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-2000:]
        assert _error_lines(result) == [f"error: {message}; a Hub model is named org/name"]
        assert "torch" not in _imported(result)  # refused before torch (and any Hub lookup)

    (tmp_path / "runs" / "tiny").mkdir()
    (tmp_path / "runs" / "tiny" / "config.json").write_text("{}")
    result = _cli("grpo", "--model", "runs/tiny", "--data", "runs/traces", "--out", "o", cwd=tmp_path)
    assert result.returncode == 2 and _error_lines(result) == [
        "error: --data runs/traces: no such file or folder; a Hub dataset is named org/name"]
    assert "torch" not in _imported(result)
