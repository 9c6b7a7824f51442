"""The whole ViGoRL pipeline from one YAML file: (tiny model) -> traces -> SFT -> GRPO -> evaluation.

    grounded-rl train --config data/configs/demo.yaml          # tiny model, sim teacher, CPU, a few minutes
    grounded-rl train --config data/configs/vigorl_3b_single.yaml

Every stage writes into ``OUT/<stage>/`` and finishes by writing ``OUT/<stage>/DONE`` (JSON: what ran, when). A
stage whose ``DONE`` exists is skipped, so a rerun after a crash resumes at the first unfinished stage (SFT and GRPO
also resume from their own trainer checkpoints). Stages:

- ``base``: make the random tiny model (only when the config has ``tiny_model``; else ``model`` is the base);
- ``traces``: ``trace-forge search`` with the configured teacher, then ``trace-forge linearize`` for multi-turn
  (only when the config has ``traces``; else ``data`` names an existing trace dataset);
- ``sft``: :func:`grounded_rl.sft.train` on the traces (ViGoRL's warm start);
- ``grpo``: :func:`grounded_rl.grpo.run_grpo` from the SFT checkpoint;
- ``eval``: :func:`grounded_rl.eval.evaluate` of the GRPO checkpoint (only when the config has ``eval``).

The YAML keys ``sft``, ``grpo`` and ``eval`` hold the fields of :class:`~grounded_rl.sft.SFTArgs`,
:class:`~grounded_rl.grpo.GroundedGRPOConfig` and :class:`~grounded_rl.eval.EvalConfig`; the pipeline fills in
the model and data paths that link the stages. A config whose GRPO questions are its evaluation questions (same
task, data folder and split) is refused unless it sets ``allow_eval_overlap: true``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from trace_forge.errors import ConfigError

__all__ = ["PipelineConfig", "DONE", "run_pipeline"]

logger = logging.getLogger(__name__)

DONE = "DONE"  # per-stage completion marker, written last


@dataclass
class PipelineConfig:
    """A ``grounded-rl train`` YAML file."""

    out: str = field(metadata={"help": "Run root; each stage writes OUT/<stage>/."})
    model: str | None = field(default=None, metadata={"help": "Base checkpoint (unless tiny_model makes one)."})
    tiny_model: dict[str, Any] | None = field(
        default=None, metadata={"help": "Make a random tiny model first: {family, seed} (CPU demos)."}
    )
    traces: dict[str, Any] | None = field(
        default=None,
        metadata={"help": "Mine traces first: {task, data_dir, task_options, teacher, mode, search_args: [extra "
                          "trace-forge search flags]}."},
    )
    data: str | None = field(default=None, metadata={"help": "An existing trace dataset (unless traces mines one)."})
    sft: dict[str, Any] = field(default_factory=dict, metadata={"help": "SFTArgs fields."})
    grpo: dict[str, Any] = field(default_factory=dict, metadata={"help": "GroundedGRPOConfig fields."})
    eval: dict[str, Any] | None = field(default=None, metadata={"help": "EvalConfig fields; no eval stage if unset."})
    allow_eval_overlap: bool = field(
        default=False, metadata={"help": "Allow GRPO on the evaluation questions (demos on the bundled samples)."}
    )

    def __post_init__(self) -> None:
        if (self.model is None) == (self.tiny_model is None):
            raise ConfigError("set exactly one of model (a checkpoint) and tiny_model ({family, seed})")
        if (self.data is None) == (self.traces is None):
            raise ConfigError("set exactly one of data (a trace dataset) and traces (mine one)")
        if self.traces is not None and not {"task", "data_dir"} <= set(self.traces):
            raise ConfigError("traces needs at least task and data_dir")
        shared = _questions(self.grpo) if self.eval is not None and not self.allow_eval_overlap else None
        if shared is not None and shared == _questions(self.eval):
            task, data_dir, split = shared
            raise ConfigError(
                f"grpo and eval use the same questions (task {task!r}, data_dir {data_dir!r}, split {split!r}): "
                "RL on the evaluation set inflates its score; set grpo.split (e.g. train) or another data_dir, "
                "or allow_eval_overlap: true for a demo"
            )

    @classmethod
    def from_yaml(cls, path: str | Path) -> PipelineConfig:
        """Read a config file; unknown top-level keys are an error naming the known ones."""
        import yaml

        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known) if isinstance(values, dict) else ["<not a mapping>"]
        if unknown:
            raise ConfigError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**values)

    @property
    def multi_turn(self) -> bool:
        return bool(self.grpo.get("multi_turn", False))


def _questions(stage: dict[str, Any]) -> tuple[str, str | None, str] | None:
    """(task, data folder, split) a stage's questions come from; the split defaults as the task's loader does.

    ``None`` for GRPO on a trace dataset's questions, which no benchmark stage reads.
    """
    from trace_forge.tasks import get_task

    task = stage.get("task")
    if task is None:
        return None
    data_dir = stage.get("data_dir")
    split = stage.get("split") or get_task(task, **(stage.get("task_options") or {})).default_split
    return (task, str(Path(data_dir).resolve()) if data_dir else None, split)


StageNote = Callable[[str, str, Path], None]
"""Told ``(stage, "skipped" | "running" | "done", its folder)`` as the pipeline goes (the CLI prints it)."""


def _stage(out: Path, name: str, run: Callable[[Path], Any], note: StageNote) -> Path:
    """Run one stage into ``out/name`` unless its ``DONE`` marker exists; write the marker last."""
    stage_dir = out / name
    marker = stage_dir / DONE
    if marker.is_file():
        note(name, "skipped", stage_dir)
        return stage_dir
    note(name, "running", stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    run(stage_dir)
    marker.write_text(json.dumps({"stage": name, "seconds": round(time.time() - start, 1)}) + "\n", encoding="utf-8")
    note(name, "done", stage_dir)
    return stage_dir


def _trace_forge(*argv: str) -> None:
    """Run a ``trace-forge`` command in this process (its own CLI is the stable interface); errors propagate."""
    import typer

    from trace_forge.cli import app

    typer.main.get_command(app).main(args=list(argv), prog_name="trace-forge", standalone_mode=False)


def run_pipeline(config: PipelineConfig, on_stage: StageNote | None = None) -> dict[str, Path]:
    """Run every stage of ``config`` in order, skipping finished ones.

    Args:
        config: the pipeline.
        on_stage: told when a stage is skipped (its ``DONE`` exists), starts and finishes; default: logged.

    Returns:
        ``{stage: output directory}`` of the stages that are part of this config.
    """
    note = on_stage or (lambda name, what, where: logger.info("stage %s: %s (%s)", name, what, where))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    dirs: dict[str, Path] = {}

    # ---- base model ---------------------------------------------------------------------------------------------
    base = config.model
    if config.tiny_model is not None:
        from grounded_rl.tiny import make_tiny_model

        dirs["base"] = _stage(out, "base", lambda d: make_tiny_model(d, **config.tiny_model), note)
        base = str(dirs["base"])

    # ---- traces: MCTS with the teacher, linearized into a trace dataset -----------------------------------------
    data = config.data
    if config.traces is not None:
        t = config.traces
        mode = t.get("mode", "multi" if config.multi_turn else "single")

        def mine(d: Path) -> None:
            resume = ["--resume"] if (d / "run.json").exists() else []  # a crashed search continues
            options = [f"-o{key}={json.dumps(value)}" for key, value in (t.get("task_options") or {}).items()]
            _trace_forge(
                "search", "--task", t["task"], "--data-dir", str(t["data_dir"]), *options, "--out", str(d),
                "--teacher", t.get("teacher", "sim"), "--quiet", *resume, *map(str, t.get("search_args", [])),
            )
            if mode == "multi":
                _trace_forge("linearize", str(d), "--mode", "multi", "--overwrite")

        dirs["traces"] = _stage(out, "traces", mine, note)
        data = str(dirs["traces"] / f"dataset-{mode}")

    # ---- SFT: the warm start ------------------------------------------------------------------------------------
    from grounded_rl.sft import SFTArgs
    from grounded_rl.sft import train as run_sft

    def sft(d: Path) -> None:
        # resume: a crashed SFT continues from its last checkpoint (from scratch, with a warning, when none).
        run_sft(SFTArgs.from_sources(None, {**config.sft, "model": base, "data": data, "out": str(d), "resume": True}))

    dirs["sft"] = _stage(out, "sft", sft, note)

    # ---- GRPO from the SFT checkpoint ---------------------------------------------------------------------------
    from grounded_rl.grpo import GroundedGRPOConfig, run_grpo

    def grpo(d: Path) -> None:
        run_grpo(GroundedGRPOConfig(**{**config.grpo, "model": str(dirs["sft"]), "output_dir": str(d)}))

    dirs["grpo"] = _stage(out, "grpo", grpo, note)

    # ---- evaluation ---------------------------------------------------------------------------------------------
    if config.eval is not None:
        from grounded_rl.eval import EvalConfig, evaluate

        settings = {"multi_turn": config.multi_turn, **config.eval, "model": str(dirs["grpo"])}
        dirs["eval"] = _stage(out, "eval", lambda d: evaluate(EvalConfig(**settings), d), note)
    return dirs
