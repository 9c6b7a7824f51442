"""The rules every training command shares (grounded_rl.training): sources, extras, run settings, checkpoints,
and the docstring examples of the training modules."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest

from grounded_rl.training import (
    RUN_FILE,
    RunOptions,
    check_extras,
    check_source,
    claim_output,
    is_hub_id,
    last_checkpoint,
    model_card,
    run_settings,
)
from trace_forge.errors import ConfigError, DataError


def test_a_path_like_value_is_never_a_hub_id(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    assert is_hub_id("Qwen/Qwen2.5-VL-3B-Instruct", tmp_path)
    for local in ("runs/sft-typo", "./sft", "../sft", "/abs/model", "~/model", "tiny", "a/b/c", "org/../x"):
        assert not is_hub_id(local, tmp_path), local
    check_source("Qwen/Qwen2.5-VL-3B-Instruct", "model", model=True)  # left to the Hub (and its own errors)
    with pytest.raises(ConfigError, match="model /nope/m: no such file or folder"):
        check_source("/nope/m", "model", model=True)
    with pytest.raises(ConfigError, match=r"not a model checkpoint \(no config.json\)"):
        check_source(str(tmp_path / "runs"), "model", model=True)
    with pytest.raises(DataError, match="data /nope/d: no such file or folder"):
        check_source("/nope/d", "data")


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_a_missing_extra_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"needs the deepspeed extra: `uv sync --extra deepspeed`"):
        check_extras(deepspeed="ds_zero3.json")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch` with zero3.yaml sets
    with pytest.raises(ConfigError, match="deepspeed extra"):
        check_extras()
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    check_extras(report_to=["tensorboard"])
    if importlib.util.find_spec("swanlab") is None:
        with pytest.raises(ConfigError, match="report_to swanlab needs the swanlab package: pip install swanlab"):
            check_extras(report_to="swanlab")


def test_settings_that_may_change_on_resume_are_left_out(tmp_path: Path) -> None:
    from grounded_rl.sft import GroundedSFTConfig

    def settings(**kw):
        return run_settings(GroundedSFTConfig(output_dir=str(tmp_path), model="m", data="d", **kw))

    base = settings()
    assert base["learning_rate"] == 1e-6 and base["model"] == "m" and "output_dir" not in base
    assert settings(max_steps=9, logging_steps=3, save_steps=7, report_to="none", run_name="x") == base
    assert settings(learning_rate=1e-5) != base and settings(per_device_train_batch_size=2) != base
    assert json.loads(json.dumps(base)) == base  # what the run record stores, compared as read back


def test_the_last_complete_checkpoint_is_chosen(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def checkpoint(step: int, state: str | None, weights: bool = True) -> Path:
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if state is not None:
            (folder / "trainer_state.json").write_text(state)
        if weights:
            (folder / "model.safetensors").write_bytes(b"w")
        return folder

    assert last_checkpoint(tmp_path) is None
    checkpoint(5, "{}")
    good = checkpoint(10, "{}")
    checkpoint(20, '{"global_st')  # trainer state cut mid-write
    checkpoint(30, None)  # killed before the trainer state
    checkpoint(40, "{}", weights=False)
    (tmp_path / "checkpoint-x").mkdir()  # not a checkpoint
    with caplog.at_level(logging.WARNING, logger="grounded_rl.training"):
        assert last_checkpoint(tmp_path) == good
    assert [r.getMessage().split("/")[-1] for r in caplog.records] == [
        f"checkpoint-{n} is incomplete (the run stopped while saving it): skipped" for n in (40, 30, 20)]
    assert last_checkpoint(tmp_path, remove_incomplete=True) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-5", "checkpoint-x"]

    from grounded_rl.sft import GroundedSFTConfig

    def start(checkpoint: Path) -> str | None:
        config = GroundedSFTConfig(output_dir=str(tmp_path / "new"), resume_from_checkpoint=str(checkpoint))
        return claim_output(config.output_dir, "sft", config, run_settings(config), RunOptions())

    with pytest.raises(ConfigError, match="checkpoint-x: not a complete checkpoint"):
        start(tmp_path / "checkpoint-x")
    assert start(good) == str(good)  # a copied checkpoint without its run record starts a new folder


def test_the_model_card_names_base_data_method_and_lineage(tmp_path: Path) -> None:
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / RUN_FILE).write_text(json.dumps({"command": "sft", "settings": {"model": "Qwen/Qwen2.5-VL-3B-Instruct"}}))
    card = model_card(name="grpo", base=str(sft), method="GRPO", multi_turn=True, datasets=["org/vstar-traces"],
                      settings={"beta": 0.01}, path="runs/grpo")
    assert f"trained from `{sft}` (SFT of [Qwen/Qwen2.5-VL-3B-Instruct]" in card
    assert "datasets: [org/vstar-traces]" in card and "base_model:" not in card  # a local base is not a Hub id
    assert "multi-turn (zoom tool)" in card and "grounded-rl eval --multi-turn" in card
    assert 'path = "runs/grpo"' in card and "| beta | 0.01 |" in card


def test_the_private_trainer_methods_we_override_keep_their_shape():
    """TrainerMixin overrides private transformers methods (pinned below transformers 6): a change fails here."""
    import inspect

    from transformers import Trainer

    assert list(inspect.signature(Trainer._load_from_checkpoint).parameters) == [
        "self", "resume_from_checkpoint", "model"]
    assert list(inspect.signature(Trainer._save_checkpoint).parameters) == ["self", "model", "trial"]
    assert list(inspect.signature(Trainer._get_output_dir).parameters) == ["self", "trial"]
