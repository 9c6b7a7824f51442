"""``grounded-rl grpo`` / ``grounded-rl train``: CLI wiring, stage skipping and resumption, the demo pipeline."""

from __future__ import annotations

import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from grounded_rl.cli import app
from grounded_rl.grpo import GroundedGRPOConfig
from grounded_rl.sft import GroundedSFTConfig
from grounded_rl.train import DONE, PipelineConfig, run_pipeline
from grounded_rl.training import RUN_FILE, RunOptions, config_from_mapping
from trace_forge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "data" / "configs"


def test_cli_help_does_not_import_torch() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from grounded_rl.cli import app; "
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0 and 'grpo' in r.output, r.output; "
        "r = CliRunner().invoke(app, ['train', '--help']); assert r.exit_code == 0, r.output; "
        "assert 'torch' not in sys.modules and 'trl' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_grpo_help_lists_every_grpo_config_field() -> None:
    """``grpo --help`` is TRL's parser's: every GRPOConfig field, ours, and the run options (TRL is imported)."""
    import dataclasses

    from grounded_rl.grpo import GroundedGRPOConfig

    result = CliRunner().invoke(app, ["grpo", "--help"])
    assert result.exit_code == 0
    for f in dataclasses.fields(GroundedGRPOConfig):
        if f.init:
            assert f"--{f.name}" in result.stdout, f.name
    for flag in ("--out", "--resume", "--overwrite", "--config", "--option", "--zoom_rate_floor", "examples:"):
        assert flag in result.stdout, flag


@pytest.mark.parametrize("name", ["vigorl_3b_single", "vigorl_3b_multi", "vigorl_7b_single", "vigorl_7b_multi"])
def test_recipes_parse_with_the_paper_values(name: str) -> None:
    config = PipelineConfig.from_yaml(CONFIGS / f"{name}.yaml")
    multi = name.endswith("multi")
    assert config.multi_turn is multi and config.model.startswith("Qwen/Qwen2.5-VL-")
    assert config.grpo["num_generations"] == (8 if multi else 5)
    assert config.grpo["max_grad_norm"] == (0.2 if multi else 1.0)
    assert (config.grpo["learning_rate"], config.grpo["beta"], config.grpo["epsilon_high"]) == (1e-6, 0.01, 0.28)
    assert config.sft["learning_rate"] == 1e-6 and config.eval["temperature"] == 0.5
    # Both sections are read as `grounded-rl sft/grpo --config` reads a file: TRL's names, no key unknown.
    sft = config_from_mapping(GroundedSFTConfig, {**config.sft, "output_dir": "o"}, base=None, where="sft")
    grpo = config_from_mapping(GroundedGRPOConfig, {**config.grpo, "output_dir": "o", "use_vllm": False}, base=None,
                               where="grpo")
    assert (sft.num_train_epochs, sft.warmup_steps, sft.per_device_train_batch_size) == (3, 0.03, 1)
    assert sft.gradient_accumulation_steps * 8 == 32 and grpo.max_steps == 500
    # RL never on the evaluation questions: SAT-2 train -> val; visual-search RL file -> V*Bench.
    if multi:
        assert (config.grpo["task"], config.eval["task"]) == ("generic", "vstar")
        assert config.grpo["task_options"]["question"] == "problem" and config.grpo["max_pixels"] == 2_850_000
    else:
        assert (config.grpo["split"], config.eval["split"]) == ("train", "val")
        assert config.grpo["max_pixels"] == 4_194_304
    assert not config.allow_eval_overlap


def test_grpo_on_the_evaluation_questions_is_refused(tmp_path: Path) -> None:
    stages = dict(out=str(tmp_path), model="m", data="d")
    same = {"task": "sat2", "data_dir": "data/sat2"}
    with pytest.raises(ConfigError, match="same questions.*'sat2'.*split 'test'"):  # both default to test
        PipelineConfig(**stages, grpo=same, eval={**same, "split": "test"})
    with pytest.raises(ConfigError, match="same questions"):  # the same folder, written differently
        PipelineConfig(**stages, grpo=same, eval={"task": "sat2", "data_dir": str(REPO / "data" / "sat2")})
    PipelineConfig(**stages, grpo={**same, "split": "train"}, eval={**same, "split": "val"})
    PipelineConfig(**stages, grpo=same, eval=same, allow_eval_overlap=True)
    PipelineConfig(**stages, grpo={"data": "traces"}, eval=same)  # GRPO on a trace dataset's questions


def _recording_stages(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, RunOptions]]:
    """Replace the SFT and GRPO commands with recorders (the stages around them are what is tested)."""
    import grounded_rl.grpo
    import grounded_rl.sft

    calls: list[tuple[str, RunOptions]] = []
    monkeypatch.setattr(grounded_rl.sft, "train", lambda config, options: calls.append(("sft", options)))
    monkeypatch.setattr(grounded_rl.grpo, "run_grpo", lambda config, options: calls.append(("grpo", options)))
    return calls


def _pipeline(out: Path, **sft: object) -> PipelineConfig:
    return PipelineConfig(out=str(out), model="m", data="d", sft={"max_steps": 3, **sft},
                          grpo={"task": "vstar", "max_steps": 2})


def test_stages_resume_after_a_crash_and_a_fresh_run_starts_quietly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = _recording_stages(monkeypatch)
    with caplog.at_level(logging.WARNING):
        run_pipeline(_pipeline(tmp_path))
    assert calls == [("sft", RunOptions()), ("grpo", RunOptions())] and caplog.records == []  # nothing to resume

    # A crash mid-SFT: its folder holds the run's record, no DONE. The rerun continues that run.
    for stage in ("sft", "grpo"):
        (tmp_path / stage / DONE).unlink()
    (tmp_path / "sft" / RUN_FILE).write_text("{}")
    calls.clear()
    run_pipeline(_pipeline(tmp_path))
    assert calls == [("sft", RunOptions(resume=True)), ("grpo", RunOptions())]


def test_traces_stage_searches_with_the_task_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A generic task's column map reaches ``trace-forge search`` (and so run.json and every dataset row)."""
    calls = _recording_stages(monkeypatch)  # stop after the traces
    rows = [{"img": str(p), "q": "What colour is the shape?", "choices": ["red", "blue"], "gold": "red"}
            for p in sorted((REPO / "data" / "samples" / "vstar" / "direct_attributes").glob("*.jpg"))[:2]]
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = {"image": "img", "question": "q", "options": "choices", "answer": "gold"}
    config = PipelineConfig(out=str(tmp_path / "out"), model="m", grpo={"task": "vstar", "max_steps": 2}, traces={
        "task": "generic", "data_dir": str(bench), "task_options": options, "mode": "single",
        "search_args": ["--simulations", "1"]})
    run_pipeline(config)
    assert [stage for stage, _ in calls] == ["sft", "grpo"]
    run = json.loads((tmp_path / "out" / "traces" / "run.json").read_text())
    assert run["task"] == {"name": "generic", "options": options}


def test_pipeline_config_names_what_is_wrong(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="exactly one of model"):
        PipelineConfig(out=str(tmp_path), data="x")
    with pytest.raises(ConfigError, match="exactly one of data"):
        PipelineConfig(out=str(tmp_path), model="m")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"out": "x", "model": "m", "data": "d", "rlhf": {}}))
    with pytest.raises(ConfigError, match="unknown keys \\['rlhf'\\]"):
        PipelineConfig.from_yaml(bad)
    calls = _recording_stages(monkeypatch)  # a bad stage setting is found before any stage runs
    with pytest.raises(ConfigError, match=r"grpo: unknown setting 'lr' \(settings are the command's flags: see its --help\)"):
        run_pipeline(PipelineConfig(out=str(tmp_path / "o"), tiny_model={"seed": 0}, data="d",
                                    grpo={"task": "vstar", "lr": 1e-3}))
    assert calls == [] and not (tmp_path / "o" / "base").exists()


def test_paths_in_a_pipeline_file_are_relative_to_it(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    path = tmp_path / "configs" / "p.yaml"
    path.write_text(yaml.safe_dump({
        "out": "../runs/p", "model": "Qwen/Qwen2.5-VL-3B-Instruct", "data": "../traces/ds",
        "sft": {"output_dir": "x", "dataset_name": "../t"}, "grpo": {"task": "vstar", "data_dir": "../vstar"},
        "eval": {"task": "vstar", "data_dir": "../vstar", "split": "test"}, "allow_eval_overlap": True,
    }))
    config = PipelineConfig.from_yaml(path)
    assert config.out == str(tmp_path / "runs" / "p") and config.model == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert config.data == str(tmp_path / "traces" / "ds") and config.sft["dataset_name"] == str(tmp_path / "t")
    assert config.grpo["data_dir"] == config.eval["data_dir"] == str(tmp_path / "vstar")


def test_done_stages_are_skipped_and_changed_ones_refused_unless_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _recording_stages(monkeypatch)
    run_pipeline(_pipeline(tmp_path))
    calls.clear()
    assert sorted(run_pipeline(_pipeline(tmp_path))) == ["grpo", "sft"] and calls == []  # all done: nothing runs

    with pytest.raises(ConfigError, match=r"stage sft .* was done with other settings; --overwrite redoes it"):
        run_pipeline(_pipeline(tmp_path, learning_rate=1e-3))
    assert calls == []
    run_pipeline(_pipeline(tmp_path, learning_rate=1e-3), overwrite=True)
    assert [name for name, _ in calls] == ["sft", "grpo"]  # GRPO starts from the new SFT model
    done = json.loads((tmp_path / "sft" / DONE).read_text())
    assert done["settings"]["learning_rate"] == 1e-3


def test_grpo_command_trains_from_a_config_file(tiny_qwen2_5_vl_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "squares"
    data.mkdir()
    image = Image.new("RGB", (224, 168), "white")
    ImageDraw.Draw(image).rectangle([40, 40, 80, 80], fill="red")
    image.save(data / "0.png")
    (data / "test.jsonl").write_text(json.dumps({"image": "0.png", "question": "Where?", "boxes": [[40, 40, 80, 80]]}))
    settings = tmp_path / "grpo.yaml"
    settings.write_text(yaml.safe_dump({
        "task": "generic", "task_options": {"image": "image", "question": "question", "boxes": "boxes",
                                            "answer_kind": "point"},
        "max_completion_length": 16, "report_to": "tensorboard", "save_strategy": "no",
        "num_generations": 5,  # overridden by the flag
    }))  # no use_cpu: on a machine without a GPU, GRPO runs in fp32 by default
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "grpo", "--model", str(tiny_qwen2_5_vl_dir), "--data-dir", str(data), "--out", str(out),
        "--num-generations", "2", "--max-steps", "1", "--config", str(settings), "--split", "test",
        "--max-pixels", "40000", "-o", "box_format=xyxy",
    ])
    assert result.exit_code == 0, result.output
    run = json.loads((out / RUN_FILE).read_text())["config"]
    assert (run["num_generations"], run["max_steps"], run["task"]) == (2, 1, "generic")
    assert (run["split"], run["max_pixels"]) == ("test", 40000)
    assert run["task_options"] == {"image": "image", "question": "question", "boxes": "boxes",
                                   "answer_kind": "point", "box_format": "xyxy"}  # flags add to the file's
    assert (out / "model.safetensors").is_file()
    assert list((out / "runs").rglob("events.out.tfevents.*")), "no TensorBoard log"

    if importlib.util.find_spec("vllm") is None:
        bad = CliRunner().invoke(app, ["grpo", "--task", "vstar", "--out", str(tmp_path / "v"), "--use_vllm"])
        assert isinstance(bad.exception, ConfigError) and bad.exception.exit_code == 2
        assert "use_vllm needs vLLM: install the extra, `uv sync --extra vllm`" in str(bad.exception)


@pytest.mark.slow
def test_demo_pipeline_end_to_end(tmp_path: Path) -> None:
    """``grounded-rl train --config demo.yaml`` from nothing: tiny model, sim traces, SFT, GRPO, eval; then a
    second run skips every stage."""
    config = yaml.safe_load((CONFIGS / "demo.yaml").read_text())
    config["out"] = str(tmp_path / "demo")
    config["traces"]["data_dir"] = config["grpo"]["data_dir"] = config["eval"]["data_dir"] = str(
        REPO / "data" / "samples" / "vstar"
    )
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    result = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "demo"
    for stage in ("base", "traces", "sft", "grpo", "eval"):
        assert (out / stage / DONE).is_file(), stage
    assert (out / "grpo" / "model.safetensors").is_file()
    assert json.loads((out / "eval" / "summary.json").read_text())["task"] == "vstar"
    marker = (out / "sft" / DONE).stat().st_mtime_ns
    again = CliRunner().invoke(app, ["train", "--config", str(path)])
    assert again.exit_code == 0 and (out / "sft" / DONE).stat().st_mtime_ns == marker
    # Every skip is said, naming the marker that made it; the stage folders are the result, on stdout.
    for stage in ("base", "traces", "sft", "grpo", "eval"):
        assert f"stage {stage}: skipped: finished earlier ({out / stage / DONE})" in " ".join(again.stderr.split())
        assert f"{stage}: {out / stage}" in again.stdout
