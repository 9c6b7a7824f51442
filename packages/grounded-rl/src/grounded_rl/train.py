"""The whole ViGoRL pipeline from one YAML file: (tiny model) -> traces -> SFT -> GRPO -> evaluation.

    grounded-rl train --config data/configs/demo.yaml          # tiny model, sim teacher, CPU, a few minutes
    grounded-rl train --config data/configs/vigorl_3b_single.yaml

Every stage writes into ``OUT/<stage>/`` and finishes by writing ``OUT/<stage>/DONE`` (JSON: the stage's settings
and how long it took). Stages:

- ``base``: make the random tiny model (only when the config has ``tiny_model``; else ``model`` is the base);
- ``traces``: ``trace-forge search`` with the configured teacher, then ``trace-forge linearize`` for multi-turn
  (only when the config has ``traces``; else ``data`` names an existing trace dataset);
- ``sft``: :func:`grounded_rl.sft.train` on the traces (ViGoRL's warm start);
- ``grpo``: :func:`grounded_rl.grpo.run_grpo` from the SFT checkpoint;
- ``eval``: :func:`grounded_rl.eval.evaluate` of the GRPO checkpoint (only when the config has ``eval``).

A rerun skips the stages that are done with the same settings and resumes the first unfinished one (SFT and GRPO
from their last complete checkpoint). A stage done, or started, with other settings is refused unless
``overwrite``, which redoes it and every stage after it.

The YAML keys ``sft``, ``grpo`` and ``eval`` hold the settings of :class:`~grounded_rl.sft.GroundedSFTConfig`,
:class:`~grounded_rl.grpo.GroundedGRPOConfig` (TRL's names, as in ``grounded-rl sft --config``) and
:class:`~grounded_rl.eval.EvalConfig`; the pipeline fills in the model and data paths that link the stages. Paths are
relative to the YAML file. A config whose GRPO questions are its evaluation questions (same task, data folder and
split) is refused unless it sets ``allow_eval_overlap: true``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from grounded_rl.training import (
    ALIASES,
    LOCAL,
    PATHS,
    SOURCE,
    RunOptions,
    read_run,
    resolve_path,
    run_settings,
)
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
    sft: dict[str, Any] = field(default_factory=dict, metadata={"help": "GroundedSFTConfig settings."})
    grpo: dict[str, Any] = field(default_factory=dict, metadata={"help": "GroundedGRPOConfig settings."})
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
        """Read a config file; paths are relative to it. Unknown top-level keys are an error naming the known ones."""
        import yaml

        path = Path(path)
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known) if isinstance(values, dict) else ["<not a mapping>"]
        if unknown:
            raise ConfigError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**_resolved(values, path.resolve().parent))

    @property
    def multi_turn(self) -> bool:
        return bool(self.grpo.get("multi_turn", False))


def _resolved(values: dict[str, Any], base: Path) -> dict[str, Any]:
    """The file's values with every relative path made relative to ``base`` (the file's folder)."""
    def section(stage: Mapping[str, Any] | None) -> Any:
        if stage is None:
            return None
        names = {alias: name for name, aliases in ALIASES.items() for alias in aliases}
        out = {}
        for key, value in stage.items():
            name = names.get(str(key).replace("-", "_"), str(key).replace("-", "_"))
            out[key] = resolve_path(value, PATHS[name], base) if name in PATHS else value
        return out

    resolved = dict(values)
    resolved["out"] = resolve_path(values.get("out"), LOCAL, base)
    for key in ("model", "data"):
        resolved[key] = resolve_path(values.get(key), SOURCE, base)
    for key in ("traces", "sft", "grpo", "eval"):
        if key in values:
            resolved[key] = section(values[key])
    return {k: v for k, v in resolved.items() if k in values}


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


class _Stages:
    """Runs stages in order into ``out/<name>``, each at most once per settings; see the module docstring."""

    def __init__(self, out: Path, overwrite: bool, note: StageNote) -> None:
        self.out = out
        self.overwrite = overwrite
        self.note = note
        self.main = int(os.environ.get("RANK", "0")) == 0
        self.ran = False  # a stage ran: every later stage works on new inputs

    def run(self, name: str, settings: Any, work: Callable[[Path, RunOptions], Any], *, all_processes: bool = False
            ) -> Path:
        """Run ``work(stage_dir, options)`` unless the stage is done with ``settings``; write ``DONE`` last.

        Args:
            all_processes: the stage is a training command (every process of a launch takes part); other stages
                run on the main process while the others wait.
        """
        stage_dir = self.out / name
        marker = stage_dir / DONE
        settings = json.loads(json.dumps(settings, default=str))
        if marker.is_file():
            done = json.loads(marker.read_text(encoding="utf-8"))
            if done.get("settings") == settings and not self.ran:
                self.note(name, "skipped", stage_dir)
                return stage_dir
            why = "an earlier stage ran again" if done.get("settings") == settings else "other settings"
            if not self.overwrite:
                raise ConfigError(f"stage {name} ({stage_dir}) was done with {why}; --overwrite redoes it and the "
                                  "stages after it, or choose another out")
            if self.main:
                shutil.rmtree(stage_dir)
            self._barrier()
        self.note(name, "running", stage_dir)
        start = time.time()
        # A stage folder holding a run continues it (same settings, checked by the command) or, with overwrite,
        # replaces it.
        options = RunOptions(resume=read_run(stage_dir) is not None, overwrite=self.overwrite)
        if all_processes or self.main:
            stage_dir.mkdir(parents=True, exist_ok=True)
            work(stage_dir, options)
        self._barrier()
        if self.main:
            marker.write_text(json.dumps({"stage": name, "seconds": round(time.time() - start, 1),
                                          "settings": settings}) + "\n", encoding="utf-8")
        self.ran = True
        self.note(name, "done", stage_dir)
        return stage_dir

    @staticmethod
    def _barrier() -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def _trace_forge(*argv: str) -> None:
    """Run a ``trace-forge`` command in this process (its own CLI is the stable interface); errors propagate."""
    import typer

    from trace_forge.cli import app

    typer.main.get_command(app).main(args=list(argv), prog_name="trace-forge", standalone_mode=False)


def run_pipeline(
    config: PipelineConfig, on_stage: StageNote | None = None, *, overwrite: bool = False
) -> dict[str, Path]:
    """Run every stage of ``config`` in order, skipping those done with the same settings.

    Args:
        config: the pipeline.
        on_stage: told when a stage is skipped (done with the same settings), starts and finishes; default: logged.
        overwrite: redo a stage whose folder holds other settings, and every stage after it.

    Returns:
        ``{stage: output directory}`` of the stages that are part of this config.

    Raises:
        ConfigError: a stage's settings are invalid (checked before any stage runs), or a stage folder holds other
            settings and ``overwrite`` is off.
    """
    import contextlib

    from grounded_rl.grpo import GroundedGRPOConfig, run_grpo
    from grounded_rl.sft import GroundedSFTConfig
    from grounded_rl.sft import train as run_sft
    from grounded_rl.training import config_from_mapping
    from trace_forge.durable import OutputLock

    note = on_stage or (lambda name, what, where: logger.info("stage %s: %s (%s)", name, what, where))
    out = Path(config.out)
    stages = _Stages(out, overwrite, note)
    dirs = {name: out / name for name in ("base", "traces", "sft", "grpo", "eval")}
    mode = (config.traces or {}).get("mode", "multi" if config.multi_turn else "single")
    base = str(dirs["base"]) if config.tiny_model is not None else config.model
    data = str(dirs["traces"] / f"dataset-{mode}") if config.traces is not None else config.data

    # ---- every stage's settings, checked before anything runs -----------------------------------------------------
    sft_config = config_from_mapping(GroundedSFTConfig, {**config.sft, "model": base, "data": data,
                                                         "output_dir": str(dirs["sft"])}, base=None, where="sft")
    grpo_config = config_from_mapping(GroundedGRPOConfig, {**config.grpo, "model": str(dirs["sft"]),
                                                           "output_dir": str(dirs["grpo"])}, base=None, where="grpo")
    eval_settings = None
    if config.eval is not None:
        from grounded_rl.eval import EvalConfig, evaluate

        eval_settings = {"multi_turn": config.multi_turn, **config.eval, "model": str(dirs["grpo"])}
        EvalConfig(**eval_settings)

    done: dict[str, Path] = {}
    lock = OutputLock(out, "train") if stages.main else contextlib.nullcontext()
    with lock:
        # ---- base model -------------------------------------------------------------------------------------------
        if config.tiny_model is not None:
            from grounded_rl.tiny import make_tiny_model

            done["base"] = stages.run("base", config.tiny_model, lambda d, _: make_tiny_model(d, **config.tiny_model))

        # ---- traces: MCTS with the teacher, linearized into a trace dataset ---------------------------------------
        if config.traces is not None:
            t = config.traces

            def mine(d: Path, _: RunOptions) -> None:
                resume = ["--resume"] if (d / "run.json").exists() else []  # a crashed search continues
                options = [f"-o{key}={json.dumps(value)}" for key, value in (t.get("task_options") or {}).items()]
                _trace_forge(
                    "search", "--task", t["task"], "--data-dir", str(t["data_dir"]), *options, "--out", str(d),
                    "--teacher", t.get("teacher", "sim"), "--quiet", *resume, *map(str, t.get("search_args", [])),
                )
                if mode == "multi":
                    _trace_forge("linearize", str(d), "--mode", "multi", "--overwrite")

            done["traces"] = stages.run("traces", t, mine)

        # ---- SFT: the warm start, then GRPO from it ---------------------------------------------------------------
        done["sft"] = stages.run("sft", run_settings(sft_config), lambda d, o: run_sft(sft_config, o),
                                 all_processes=True)
        done["grpo"] = stages.run("grpo", run_settings(grpo_config), lambda d, o: run_grpo(grpo_config, o),
                                  all_processes=True)

        # ---- evaluation -------------------------------------------------------------------------------------------
        if eval_settings is not None:
            done["eval"] = stages.run("eval", eval_settings, lambda d, _: evaluate(EvalConfig(**eval_settings), d))
    return done
