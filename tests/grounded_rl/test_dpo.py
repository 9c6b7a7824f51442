"""DPO on preference pairs from the trees: stock TRL `DPOTrainer` trains one step on a dataset that `trace-forge
search` + `linearize --mode preference` wrote, and `grounded-rl dpo` (model frame, frozen vision tower, the output
folder rules and strict resume of grounded_rl.training, TRL-style settings) on the tiny model, CPU."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from datasets import load_dataset
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor
from trl import DPOConfig, DPOTrainer
from typer.testing import CliRunner

from grounded_rl.cli import app as grounded_rl
from grounded_rl.dpo import GroundedDPOConfig, prepare_pairs, train
from grounded_rl.training import RUN_FILE, RunOptions, config_from_mapping, parse_command_line
from tests.grounded_rl.test_contract import REPO, _trace_forge
from tests.grounded_rl.test_sft import _cli, _error_lines, _imported, _losses
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
    return runner.invoke(grounded_rl, ["dpo", *args], env={"TRACE_FORGE_PROGRESS_S": "0"})


def dpo_config(**settings) -> GroundedDPOConfig:
    return config_from_mapping(GroundedDPOConfig, settings, base=None, where="test")


def test_grounded_rl_dpo_trains_saves_refuses_an_occupied_folder_resumes_and_overwrites(
    pairs, tiny_qwen2_5_vl_dir, tmp_path
):
    out = tmp_path / "dpo"
    common = ["--model", str(tiny_qwen2_5_vl_dir), "--data", str(pairs["pixel"]), "--out", str(out),
              "--per_device_train_batch_size", "2", "--gradient_checkpointing", "false", "--report_to", "none",
              "--logging_steps", "1", "--save_steps", "1", "--learning_rate", "1e-3"]
    first = _dpo(*common, "--max_steps", "1")
    assert first.exit_code == 0, first.output + repr(first.exception)
    assert first.stdout.strip() == f"saved the DPO model to {out}"  # logs and progress went to stderr
    lines = [line for line in first.stderr.splitlines() if line.startswith("dpo: ")]  # the toolkit's display
    assert lines[0].startswith("dpo: 0/1 (0%)") and any(line.startswith("dpo: 1/1 (100%)") for line in lines)
    assert "\r" not in first.stderr and "it/s" not in first.stderr  # no tqdm
    record = json.loads((out / RUN_FILE).read_text())
    assert record["command"] == "dpo" and record["finished"] and record["global_step"] == 1
    assert record["resumed_from"] is None and record["settings"]["beta"] == 0.1
    assert record["view"]["frame"] == "model" and record["config"]["bf16"] is False  # CPU: fp32
    pixel_pairs = len(load_traces(pairs["pixel"], rows=PREFERENCE_ROWS))
    assert record["data"]["train"]["pairs"] == pixel_pairs
    assert record["data"]["train"]["fit"] == {"kept": pixel_pairs, "too_long": 0}
    assert record["parameters"]["vision_frozen"] > 0
    assert json.loads((out / "checkpoint-1" / RUN_FILE).read_text())["command"] == "dpo"  # the checkpoint's run
    assert (out / "model.safetensors").is_file()
    assert "{%- generation -%}" in (out / "chat_template.jinja").read_text()  # our template, saved with the model
    card = (out / "README.md").read_text()
    assert "direct preference optimisation" in card and "single-turn" in card and str(pairs["pixel"]) in card
    before = load_file(str(tiny_qwen2_5_vl_dir / "model.safetensors"))
    after = load_file(str(out / "model.safetensors"))
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and not any("visual.blocks." in n or "visual.patch_embed." in n for n in changed)

    again = _dpo(*common, "--max_steps", "1")
    assert isinstance(again.exception, ConfigError)
    assert "holds a dpo run of" in str(again.exception) and "--resume" in str(again.exception)
    other = _dpo(*common, "--max_steps", "2", "--resume", "--beta", "0.5")
    assert isinstance(other.exception, ConfigError) and "beta (0.1 then, 0.5 now)" in str(other.exception)
    assert json.loads((out / RUN_FILE).read_text())["global_step"] == 1  # refused: untouched

    resumed = _dpo(*common, "--max_steps", "2", "--resume")
    assert resumed.exit_code == 0, resumed.output + repr(resumed.exception)
    record = json.loads((out / RUN_FILE).read_text())
    assert record["global_step"] == 2 and record["resumed_from"].endswith("checkpoint-1")
    assert (out / "checkpoint-2").is_dir()

    fresh = _dpo(*common, "--max_steps", "1", "--overwrite", "--beta", "0.5")
    assert fresh.exit_code == 0, fresh.output + repr(fresh.exception)
    record = json.loads((out / RUN_FILE).read_text())
    assert record["global_step"] == 1 and record["settings"]["beta"] == 0.5 and not (out / "checkpoint-2").exists()


def test_resume_from_a_copy_of_checkpoint_2_ends_with_the_weights_of_the_uninterrupted_run(
    pairs, tiny_qwen2_5_vl_dir, tmp_path
):
    """4 steps saving every 2 (past the end of an epoch); a second run resumed from a copy of checkpoint-2 ends with
    the same losses and weights: the restored weights, optimizer, scheduler, RNG and data position, and the same
    reference model (the policy as loaded, not as resumed)."""
    settings = dict(model=str(tiny_qwen2_5_vl_dir), data=str(pairs["model"]), learning_rate=1e-3,
                    per_device_train_batch_size=2, max_steps=4, save_steps=2, logging_steps=1, report_to="none",
                    gradient_checkpointing=False)
    first = train(dpo_config(**settings, output_dir=str(tmp_path / "a")))
    assert first.state.num_train_epochs > 1  # the resumed run crosses an epoch boundary too

    copy = tmp_path / "b"
    shutil.copytree(tmp_path / "a" / "checkpoint-2", copy / "checkpoint-2")
    shutil.copy(tmp_path / "a" / RUN_FILE, copy / RUN_FILE)
    second = train(dpo_config(**settings, output_dir=str(copy)), RunOptions(resume=True))

    assert second.state.global_step == 4
    assert [e["step"] for e in second.state.log_history if "loss" in e] == [1, 2, 3, 4]  # 1-2 restored
    assert _losses(second) == pytest.approx(_losses(first), abs=1e-5)
    want, got = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(copy / "model.safetensors"))
    assert want.keys() == got.keys()
    assert max((want[k] - got[k]).abs().max().item() for k in want) <= 1e-5
    assert json.loads((copy / RUN_FILE).read_text())["resumed_from"].endswith("checkpoint-2")


def test_dpo_settings_are_read_the_trl_way_and_checked_before_any_work(pairs, tiny_qwen2_5_vl_dir, tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    config_file = folder / "dpo.yaml"
    config_file.write_text(yaml.safe_dump({"model_name_or_path": "../runs/sft", "dataset_name": "../pairs",
                                           "out": "../runs/dpo", "beta": 0.3, "loss_type": "ipo"}))
    config, options = parse_command_line(GroundedDPOConfig, ["--config", str(config_file), "--max-steps", "5",
                                                              "--resume"], prog="dpo")
    assert isinstance(config, GroundedDPOConfig) and options.resume and not options.overwrite
    assert (config.model, config.data, config.output_dir) == tuple(  # relative to the file, not the cwd
        str(tmp_path / p) for p in ("runs/sft", "pairs", "runs/dpo"))
    assert (config.beta, config.loss_type, config.max_steps) == (0.3, ["ipo"], 5)
    assert config.max_length == 8192 and config.freeze_vision and config.report_to == ["tensorboard"]
    assert config.bf16 is False and config.dataloader_pin_memory is False  # CPU: fp32, nothing pinned
    config_file.write_text(yaml.safe_dump({"out": "x", "bta": 0.3}))
    with pytest.raises(ConfigError, match=r"dpo.yaml: unknown setting 'bta'; did you mean beta"):
        parse_command_line(GroundedDPOConfig, ["--config", str(config_file)], prog="dpo")
    with pytest.raises(ConfigError, match="eval_strategy steps needs eval_split"):
        dpo_config(output_dir="x", eval_strategy="steps")
    with_eval = dpo_config(output_dir="x", eval_split="validation", save_steps=7)
    assert (with_eval.eval_strategy, with_eval.eval_steps) == ("steps", 7)
    unknown = _dpo("--model", str(tiny_qwen2_5_vl_dir), "--data", str(pairs["pixel"]), "--out", str(tmp_path / "u"),
                   "--betta", "1")
    assert isinstance(unknown.exception, ConfigError)
    assert "unknown arguments --betta 1; did you mean --beta" in str(unknown.exception)
    help_text = _dpo("--help")
    assert help_text.exit_code == 0 and "examples:" in help_text.output
    for flag in ("--loss_type", "--beta", "--freeze_vision", "--out", "--resume", "--overwrite"):
        assert flag in help_text.output, flag

    # A missing model is one line (exit 2) before torch is imported.
    (tmp_path / "runs").mkdir()  # so runs/tinyy is a mistyped folder, not a Hub id
    result = _cli("dpo", "--model", "runs/tinyy", "--data", "d", "--out", "o", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert _error_lines(result) == ["error: --model runs/tinyy: no such file or folder; a Hub model is named org/name"]
    assert "torch" not in _imported(result)

    single = tmp_path / "single"
    _trace_forge("linearize", str(pairs["pixel"].parent), "--mode", "single", "--val-fraction", "0", "--out",
                 str(single))
    with pytest.raises(DataError, match="it holds trace rows, not preference rows"):
        train(dpo_config(model=str(tiny_qwen2_5_vl_dir), data=str(single), output_dir=str(tmp_path / "a")))
    with pytest.raises(DataError, match="no preference pair fits max_length=64"):
        train(dpo_config(model=str(tiny_qwen2_5_vl_dir), data=str(pairs["pixel"]), output_dir=str(tmp_path / "b"),
                         max_length=64))
    with pytest.raises(ConfigError, match="model and data are required"):
        train(dpo_config(model=str(tiny_qwen2_5_vl_dir), output_dir=str(tmp_path / "c")))
