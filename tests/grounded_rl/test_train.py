"""``grounded-rl grpo`` / ``grounded-rl train``: CLI wiring, stage skipping and resumption, the demo pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from grounded_rl.cli import app
from grounded_rl.train import DONE, PipelineConfig, run_pipeline
from trace_forge.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "data" / "configs"


def test_cli_help_does_not_import_torch() -> None:
    code = (
        "import sys; from typer.testing import CliRunner; from grounded_rl.cli import app; "
        "r = CliRunner().invoke(app, ['grpo', '--help']); assert r.exit_code == 0, r.output; "
        "r = CliRunner().invoke(app, ['train', '--help']); assert r.exit_code == 0, r.output; "
        "assert 'torch' not in sys.modules and 'trl' not in sys.modules, 'heavy import'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("name", ["vigorl_3b_single", "vigorl_3b_multi", "vigorl_7b_single", "vigorl_7b_multi"])
def test_recipes_parse_with_the_paper_values(name: str) -> None:
    config = PipelineConfig.from_yaml(CONFIGS / f"{name}.yaml")
    multi = name.endswith("multi")
    assert config.multi_turn is multi and config.model.startswith("Qwen/Qwen2.5-VL-")
    assert config.grpo["num_generations"] == (8 if multi else 5)
    assert config.grpo["max_grad_norm"] == (0.2 if multi else 1.0)
    assert (config.grpo["learning_rate"], config.grpo["beta"], config.grpo["epsilon_high"]) == (1e-6, 0.01, 0.28)
    assert config.sft["lr"] == 1e-6 and config.eval["temperature"] == 0.5
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


def test_sft_stage_resumes_after_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun after a crash mid-SFT (no DONE marker) continues from the stage's checkpoints."""
    import grounded_rl.sft

    seen = []
    monkeypatch.setattr(grounded_rl.sft, "train", seen.append)
    (tmp_path / "grpo").mkdir()
    (tmp_path / "grpo" / DONE).write_text("{}")
    run_pipeline(PipelineConfig(out=str(tmp_path), model="m", data="d", sft={"max_steps": 3}))
    (args,) = seen
    assert args.resume and args.out == str(tmp_path / "sft") and args.max_steps == 3


def test_traces_stage_searches_with_the_task_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A generic task's column map reaches ``trace-forge search`` (and so run.json and every dataset row)."""
    import grounded_rl.sft

    rows = [{"img": str(p), "q": "What colour is the shape?", "choices": ["red", "blue"], "gold": "red"}
            for p in sorted((REPO / "data" / "samples" / "vstar" / "direct_attributes").glob("*.jpg"))[:2]]
    bench = tmp_path / "bench.jsonl"
    bench.write_text("".join(json.dumps(r) + "\n" for r in rows))
    options = {"image": "img", "question": "q", "options": "choices", "answer": "gold"}
    monkeypatch.setattr(grounded_rl.sft, "train", lambda args: None)  # stop after the traces
    (tmp_path / "out" / "grpo").mkdir(parents=True)
    (tmp_path / "out" / "grpo" / DONE).write_text("{}")
    config = PipelineConfig(out=str(tmp_path / "out"), model="m", traces={
        "task": "generic", "data_dir": str(bench), "task_options": options, "mode": "single",
        "search_args": ["--simulations", "1"]})
    run_pipeline(config)
    run = json.loads((tmp_path / "out" / "traces" / "run.json").read_text())
    assert run["task"] == {"name": "generic", "options": options}


def test_pipeline_config_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one of model"):
        PipelineConfig(out=str(tmp_path), data="x")
    with pytest.raises(ConfigError, match="exactly one of data"):
        PipelineConfig(out=str(tmp_path), model="m")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"out": "x", "model": "m", "data": "d", "rlhf": {}}))
    with pytest.raises(ConfigError, match="unknown keys \\['rlhf'\\]"):
        PipelineConfig.from_yaml(bad)


def test_finished_stages_are_skipped(tmp_path: Path) -> None:
    """With every DONE marker in place, nothing runs: no tiny model is built, no trace mined, no training."""
    config = PipelineConfig.from_yaml(CONFIGS / "demo.yaml")
    config.out, config.eval = str(tmp_path), None
    for stage in ("base", "traces", "sft", "grpo"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / DONE).write_text("{}")
    dirs = run_pipeline(config)
    assert sorted(dirs) == ["base", "grpo", "sft", "traces"]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [DONE] * 4


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
        "max_completion_length": 16, "use_cpu": True, "report_to": ["tensorboard"], "save_strategy": "no",
        "num_generations": 5,  # overridden by the flag
    }))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [
        "grpo", "--model", str(tiny_qwen2_5_vl_dir), "--data-dir", str(data), "--out", str(out),
        "--num-generations", "2", "--max-steps", "1", "--config", str(settings), "--split", "test",
        "--max-pixels", "40000", "-o", "box_format=xyxy",
    ])
    assert result.exit_code == 0, result.output
    run = json.loads((out / "grpo_run.json").read_text())["config"]
    assert (run["num_generations"], run["max_steps"], run["task"]) == (2, 1, "generic")
    assert (run["split"], run["max_pixels"]) == ("test", 40000)
    assert run["task_options"] == {"image": "image", "question": "question", "boxes": "boxes",
                                   "answer_kind": "point", "box_format": "xyxy"}  # flags add to the file's
    assert (out / "model.safetensors").is_file()
    assert list((out / "runs").rglob("events.out.tfevents.*")), "no TensorBoard log"

    bad = CliRunner().invoke(app, ["grpo", "--model", "m", "--task", "vstar", "--out", str(out), "--vllm-mode", "x"])
    assert bad.exit_code != 0 and "colocate or server" in str(bad.exception)


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
