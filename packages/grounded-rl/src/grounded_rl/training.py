"""What every grounded-rl training command shares (``sft``, ``dpo``, ``grpo``).

- **Configs the TRL way.** A command's settings are one dataclass that subclasses TRL's config (``SFTConfig``,
  ``DPOConfig``, ``GRPOConfig``) and adds our fields. :func:`parse_command_line` and :func:`config_from_mapping` read it with TRL's
  own parser (:class:`trl.TrlParser`, an ``HfArgumentParser``), so every TRL field is a flag and a YAML key under
  TRL's name; :data:`ALIASES` lists the few short names we add. Paths in a YAML file are read relative to that file.
- **Output folders that never lose a run.** :func:`claim_output` decides what a run may do with its ``output_dir``:
  start in an empty folder, continue the run it holds (``--resume``, only with the same settings:
  :func:`run_settings`) or replace it (``--overwrite``); anything else is refused with one line. The folder's run is
  recorded in :data:`RUN_FILE`; :class:`~trace_forge.durable.OutputLock` keeps a second process out.
- **Resume that restores everything.** :func:`last_checkpoint` skips a checkpoint a kill left incomplete;
  :class:`TrainerMixin` restores the weights strictly (transformers' own resume drops most of a Qwen-VL checkpoint:
  its files use the Hub key layout, the live model another), and TRL/transformers restore optimizer, scheduler, RNG
  and data position.
- **Hardware defaults** (:func:`prepare_config`): bf16 autocast with a GPU that has it, fp32 on CPU;
  weights stay fp32 (updates of lr 1e-6 would round away in bf16 weights).
- **Errors before work**: a local model or dataset path that does not exist, a missing extra (``vllm``,
  ``deepspeed``) or reporter package is one line (exit 2), found before torch is imported (:func:`precheck`).
- **A model card** (:func:`model_card`) naming the base model, the data, the method and how to run it on an image.

Torch, transformers and TRL are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import difflib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from trace_forge.durable import write_json
from trace_forge.errors import ConfigError, DataError

__all__ = [
    "ALIASES",
    "CommonFields",
    "PATHS",
    "RUN_FILE",
    "RunOptions",
    "TrainerMixin",
    "check_extras",
    "check_source",
    "claim_output",
    "claimed_output",
    "config_from_mapping",
    "held_out_evaluation",
    "is_hub_id",
    "last_checkpoint",
    "load_policy",
    "model_card",
    "output_lock",
    "parameter_counts",
    "parse_command_line",
    "precheck",
    "prepare_config",
    "read_run",
    "resolve_path",
    "run_settings",
    "write_run",
]

logger = logging.getLogger(__name__)

RUN_FILE = "grounded_rl_run.json"  # what an output folder holds: command, settings, versions, data, progress

# Short names of fields, as flags and as YAML keys: field -> aliases. TRL's script names (model_name_or_path,
# dataset_name) are accepted too, so a TRL-style YAML file reads unchanged.
ALIASES: dict[str, tuple[str, ...]] = {
    "output_dir": ("out",),
    "model": ("model_name_or_path",),
    "data": ("dataset_name",),
    "use_peft": ("lora",),
    # transformers 5 folded warmup_ratio into warmup_steps: a float below 1 is a share of the total steps.
    "warmup_steps": ("warmup_ratio",),
}

# Path-valued fields of every command and how a relative value in a file is resolved: LOCAL always names a file or
# folder; SOURCE may also be a Hub id.
LOCAL, SOURCE = "local", "source"
PATHS = {"model": SOURCE, "data": SOURCE, "val_data": SOURCE, "data_dir": LOCAL, "output_dir": LOCAL,
         "resume_from_checkpoint": LOCAL, "deepspeed": LOCAL, "chat_template_path": SOURCE}

# "org/name" as the Hub spells a repository id.
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+")


# ---------------------------------------------------------------------------------------------------------------
# Sources: local paths and Hub ids
# ---------------------------------------------------------------------------------------------------------------


def is_hub_id(value: str, base: Path | None = None) -> bool:
    """True when ``value`` names a Hub repository (``org/name``) rather than a local path.

    A value is a local path when it exists, is absolute, starts with ``.`` or ``~``, has no slash or more than
    one, or its first part is a local folder (``runs/sft-typo`` next to ``runs/``): a mistyped path then fails
    at once as a missing folder instead of a long Hub lookup.

    Example:
        >>> is_hub_id("Qwen/Qwen2.5-VL-3B-Instruct"), is_hub_id("./runs/sft"), is_hub_id("tiny")
        (True, False, False)
    """
    base = Path.cwd() if base is None else base
    if not _HUB_ID.fullmatch(value) or ".." in value:
        return False
    return not (base / value).exists() and not (base / value.split("/")[0]).exists()


def resolve_path(value: Any, kind: str, base: Path) -> Any:
    """A path-valued setting read from a file in ``base``: relative paths are relative to that file."""
    if not isinstance(value, str) or not value:
        return value
    if kind == SOURCE and is_hub_id(value, base):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def check_source(value: str | None, what: str, *, model: bool = False) -> None:
    """Raise one line when ``value`` (a model or dataset) is a local path that does not exist.

    Hub ids pass (see :func:`is_hub_id`). A model folder must hold a ``config.json``.

    Raises:
        ConfigError: a missing model folder, or a folder that is no checkpoint.
        DataError: a missing dataset folder.
    """
    if not value or is_hub_id(value):
        return
    path = Path(value).expanduser()
    if not path.exists():
        hint = "; a Hub model is named org/name" if model else "; a Hub dataset is named org/name"
        error = ConfigError if model else DataError
        raise error(f"{what} {value}: no such file or folder{hint}")
    if model and not (path / "config.json").is_file():
        raise ConfigError(f"{what} {value}: not a model checkpoint (no config.json)")


# ---------------------------------------------------------------------------------------------------------------
# Extras and hardware
# ---------------------------------------------------------------------------------------------------------------

# report_to name -> the modules transformers' integration imports (any one suffices).
_REPORTERS: dict[str, tuple[str, ...]] = {
    "tensorboard": ("tensorboard", "tensorboardX"),
    "wandb": ("wandb",),
    "trackio": ("trackio",),
    "mlflow": ("mlflow",),
    "comet_ml": ("comet_ml",),
    "clearml": ("clearml",),
    "dvclive": ("dvclive",),
    "neptune": ("neptune",),
    "swanlab": ("swanlab",),
    "codecarbon": ("codecarbon",),
}


def _wants_deepspeed(deepspeed: Any) -> bool:
    return bool(deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")


def check_extras(*, use_vllm: bool = False, deepspeed: Any = None, report_to: Iterable[str] | str | None = ()) -> None:
    """Raise one line naming what to install when a setting needs a package that is missing.

    Raises:
        ConfigError: vLLM rollouts without the ``vllm`` extra, DeepSpeed without the ``deepspeed`` extra, or a
            reporter whose package is absent.
    """
    if use_vllm and find_spec("vllm") is None:
        raise ConfigError("use_vllm needs vLLM: install the extra, `uv sync --extra vllm` "
                          "(or `pip install 'grounded-rl[vllm]'`), on a GPU machine")
    if _wants_deepspeed(deepspeed) and find_spec("deepspeed") is None:
        raise ConfigError("DeepSpeed (--deepspeed, or an accelerate config with ZeRO) needs the deepspeed extra: "
                          "`uv sync --extra deepspeed` (or `pip install 'grounded-rl[deepspeed]'`)")
    names = [report_to] if isinstance(report_to, str) else list(report_to or ())
    for name in names:
        modules = _REPORTERS.get(name)
        if modules and not any(find_spec(m) for m in modules):
            raise ConfigError(f"report_to {name} needs the {modules[0]} package: pip install {modules[0]}")


@dataclass
class CommonFields:
    """Fields every training config changes the same way; put before TRL's config class in the bases
    (``class GroundedSFTConfig(CommonFields, SFTConfig)``): a field declared here replaces TRL's in place."""

    report_to: None | str | list[str] = dataclasses.field(default="tensorboard", metadata={
        "help": "Where to log: tensorboard, wandb, trackio, mlflow, ... (a comma list), or none."})
    bf16: bool | None = dataclasses.field(default=None, metadata={
        "help": "bf16 autocast (weights stay fp32); default: on with a GPU that supports it, off on CPU."})
    dataloader_pin_memory: bool | None = dataclasses.field(default=None, metadata={
        "help": "Pin dataloader memory; default: with a GPU."})


def prepare_config(config: Any) -> None:
    """What every training config does first in ``__post_init__`` (before TRL's): require ``output_dir``, split a
    comma list of reporters (``--report_to tensorboard,wandb``), check extras, fill hardware defaults.

    Hardware defaults fill the settings left unset (``None``): bf16 autocast where a GPU supports it, fp32 on CPU
    (TRL would default to bf16 and fail on CPU); pinned dataloader memory only with a GPU (on CPU, torch warns
    that pinning does nothing).

    Raises:
        ConfigError: no output folder, or a missing extra (see :func:`check_extras`).
    """
    import torch

    if config.output_dir is None:
        raise ConfigError("output_dir is required (--out, --output_dir, or the config file)")
    if isinstance(config.report_to, str) and "," in config.report_to:
        config.report_to = [r.strip() for r in config.report_to.split(",") if r.strip()]
    check_extras(use_vllm=getattr(config, "use_vllm", False), deepspeed=config.deepspeed, report_to=config.report_to)
    gpu = torch.cuda.is_available() and not config.use_cpu
    if config.bf16 is None and not config.fp16:
        config.bf16 = bool(gpu and torch.cuda.is_bf16_supported())
    if config.dataloader_pin_memory is None:
        config.dataloader_pin_memory = gpu


def held_out_evaluation(config: Any, held_out: str | None, what: str) -> None:
    """Evaluation follows the held-out data (before TRL's ``__post_init__``): with it, every ``eval_steps``
    (default ``save_steps``) unless ``eval_strategy`` says otherwise; without it, no evaluation can be asked for.

    Raises:
        ConfigError: ``eval_strategy`` set with no held-out data (``what`` names the setting that gives it).
    """
    strategy = getattr(config.eval_strategy, "value", config.eval_strategy)
    if held_out is None:
        if strategy not in ("no", None):
            raise ConfigError(f"eval_strategy {strategy} needs {what}")
        return
    if strategy in ("no", None):
        config.eval_strategy = "steps"
    if config.eval_steps is None:
        config.eval_steps = config.save_steps


# ---------------------------------------------------------------------------------------------------------------
# Parsing configs: TRL's parser, YAML files, aliases
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """How a run treats its output folder, and the command-line options that are not settings."""

    resume: bool = False
    overwrite: bool = False
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _key_names(config_cls: type) -> dict[str, str]:
    """Every accepted key (field names, and their aliases) -> field name."""
    names = {f.name: f.name for f in dataclasses.fields(config_cls) if f.init}
    for name, aliases in ALIASES.items():
        if name in names:
            names.update({alias: name for alias in aliases})
    return names


def _normalize(config_cls: type, values: Mapping[str, Any], *, base: Path | None, where: str) -> dict[str, Any]:
    """Settings from a file or a mapping: keys to field names (dashes, aliases), paths resolved against ``base``.

    Raises:
        ConfigError: an unknown key (with the nearest known names), or a field given twice under two names.
    """
    names = _key_names(config_cls)
    out: dict[str, Any] = {}
    for key, value in values.items():
        spelled = str(key).replace("-", "_")
        if spelled not in names:
            near = difflib.get_close_matches(spelled, list(names), n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else " (settings are the command's flags: see its --help)"
            raise ConfigError(f"{where}: unknown setting {key!r}{hint}")
        name = names[spelled]
        if name in out:
            raise ConfigError(f"{where}: {name} is given twice ({key!r} is another name for it)")
        out[name] = resolve_path(value, PATHS[name], base) if base is not None and name in PATHS else value
    return out


def _parser(config_cls: type, prog: str, epilog: str | None = None, description: str | None = None) -> Any:
    """TRL's parser for ``config_cls`` with our aliases, and errors as one-line :class:`ConfigError`."""
    from trl import TrlParser

    class Parser(TrlParser):
        @staticmethod
        def _parse_dataclass_field(parser: argparse.ArgumentParser, field: dataclasses.Field) -> None:
            aliases = ALIASES.get(field.name)
            if aliases:
                field = copy.copy(field)
                flags = [f"--{a}" for a in aliases] + [f"--{a.replace('_', '-')}" for a in aliases if "_" in a]
                field.metadata = {**field.metadata, "aliases": [*field.metadata.get("aliases", []), *flags]}
            TrlParser._parse_dataclass_field(parser, field)

        def error(self, message: str) -> None:  # argparse would print the usage and exit
            raise ConfigError(f"{self.prog}: {message} (see --help)")

    return Parser(config_cls, prog=prog, epilog=epilog, description=description,
                  formatter_class=argparse.RawDescriptionHelpFormatter)


def _build(parser: Any, argv: list[str]) -> tuple[Any, argparse.Namespace]:
    """Parse ``argv`` into the config (its ``__post_init__`` runs) and the namespace of the other options."""
    try:
        config, *rest, unknown = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False,
                                                                    return_remaining_strings=True)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a config's own checks (TrainingArguments raises ValueError)
        raise ConfigError(" ".join(str(e).split())) from e
    if unknown:
        flags = [a for a in unknown if a.startswith("-")] or unknown
        known = [o for action in parser._actions for o in action.option_strings]
        near = difflib.get_close_matches(flags[0], known, n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ConfigError(f"{parser.prog}: unknown arguments {' '.join(unknown)}{hint} (see --help)")
    return config, (rest[0] if rest else argparse.Namespace())


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"--config {path}: no such file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    return values


def _apply_env(values: dict[str, Any], where: str) -> None:
    """TRL's ``env:`` section of a config file: environment variables set before anything reads them."""
    env = values.pop("env", None) or {}
    if not isinstance(env, dict):
        raise ConfigError(f"{where}: env must be a mapping of environment variables")
    for key, value in env.items():
        os.environ[str(key)] = str(value)


def parse_command_line(
    config_cls: type,
    argv: list[str],
    *,
    prog: str,
    epilog: str | None = None,
    description: str | None = None,
    add_options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[Any, RunOptions]:
    """A command's config from its flags and an optional ``--config`` YAML file (flags win), TRL-style.

    Every field of ``config_cls`` is a flag (``--learning_rate`` or ``--learning-rate``) and a YAML key
    (``learning_rate``); :data:`ALIASES` add short names. ``--resume``, ``--overwrite`` and ``--config`` are
    options of the run, not settings. ``--help`` prints every flag and exits.

    Args:
        config_cls: the command's config dataclass.
        argv: the command's arguments.
        prog: the command as typed (``grounded-rl sft``), for help and errors.
        epilog: examples shown after the help.
        description: shown before the flags.
        add_options: adds command-specific options that are not settings (returned in ``RunOptions.extra``).

    Raises:
        ConfigError: an unknown flag or key, a bad value, or settings that contradict each other.
    """
    parser = _parser(config_cls, prog, epilog, description)
    run = parser.add_argument_group("run options")
    run.add_argument("--config", metavar="YAML", help="Settings file (any flag as a key; TRL's names); flags win.")
    run.add_argument("--resume", action="store_true",
                     help="Continue the run in the output folder from its last complete checkpoint (same settings).")
    run.add_argument("--overwrite", action="store_true", help="Replace the run the output folder holds.")
    if add_options is not None:
        add_options(run)
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config")
    known, _ = first.parse_known_args(argv)
    if known.config:
        path = Path(known.config)
        values = _read_yaml(path)
        _apply_env(values, str(path))
        parser.set_defaults_with_config(**_normalize(config_cls, values, base=path.resolve().parent, where=str(path)))
    config, extras = _build(parser, argv)
    options = {k: v for k, v in vars(extras).items() if k not in ("config", "resume", "overwrite")}
    return config, RunOptions(extras.resume, extras.overwrite, options)


def config_from_mapping(config_cls: type, values: Mapping[str, Any], *, base: Path | None, where: str) -> Any:
    """A config from a mapping (a section of a pipeline YAML file), read exactly as :func:`parse_command_line`
    reads a ``--config`` file: same names, same conversions, same checks."""
    parser = _parser(config_cls, where)
    parser.set_defaults_with_config(**_normalize(config_cls, values, base=base, where=where))
    config, _ = _build(parser, [])
    return config


def precheck(argv: list[str], config_cls_fields: Iterable[tuple[str, bool]]) -> None:
    """Check the model and data paths of a command line before anything heavy is imported.

    Args:
        argv: the command's arguments (flags and ``--config``).
        config_cls_fields: ``(field, is_model)`` of the fields naming a model or a dataset.

    Raises:
        ConfigError, DataError: see :func:`check_source`.
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config")
    for name, _ in config_cls_fields:
        spellings = {name, name.replace("_", "-"), *ALIASES.get(name, ())}
        spellings |= {s.replace("_", "-") for s in spellings}
        parser.add_argument(*sorted(f"--{s}" for s in spellings), dest=name)
    known, _ = parser.parse_known_args(argv)
    from_file: dict[str, Any] = {}
    if known.config:
        path = Path(known.config)
        values = _read_yaml(path)
        for name, _ in config_cls_fields:
            for key in (name, *ALIASES.get(name, ())):
                if key in values:
                    from_file[name] = resolve_path(values[key], SOURCE, path.resolve().parent)
    for name, is_model in config_cls_fields:
        value = getattr(known, name) or from_file.get(name)
        check_source(value, f"--{name.replace('_', '-')}", model=is_model)


# ---------------------------------------------------------------------------------------------------------------
# The output folder: what it holds, and what a new run may do with it
# ---------------------------------------------------------------------------------------------------------------

# Settings that may change between a run and its resumption: where and how often it logs and saves, the hardware
# it runs on, when it stops. Every other setting changes what is learned and must match.
_OPERATIONAL = frozenset({
    "output_dir", "resume_from_checkpoint", "run_name", "project", "report_to", "disable_tqdm", "max_steps",
    "num_train_epochs", "push_to_hub", "skip_memory_metrics", "include_num_input_tokens_seen", "local_rank",
    "debug", "accelerator_config", "deepspeed", "fsdp", "fsdp_config", "parallelism_config", "use_cpu", "bf16",
    "fp16", "tf32", "half_precision_backend", "gradient_checkpointing", "gradient_checkpointing_kwargs",
    "torch_empty_cache_steps", "enable_jit_checkpoint", "restore_callback_states_from_checkpoint",
    "per_device_eval_batch_size", "prediction_loss_only", "batch_eval_metrics", "include_for_metrics",
    "metric_for_best_model", "greater_is_better", "load_best_model_at_end", "use_vllm", "vllm_mode",
    "vllm_enable_sleep_mode", "vllm_server_base_url", "vllm_server_host", "vllm_server_port", "vllm_server_timeout",
    "vllm_group_port", "vllm_gpu_memory_utilization", "vllm_tensor_parallel_size", "ds3_gather_for_generation",
    "use_transformers_continuous_batching", "transformers_continuous_batching_config", "use_transformers_paged",
    "cache_implementation", "log_completions", "log_multimodal", "num_completions_to_print", "log_unique_prompts",
    "log_completions_hub_repo", "dataset_num_proc", "zoom_rate_floor", "zoom_rate_patience", "trust_remote_code",
})
_OPERATIONAL_PREFIXES = ("logging_", "log_level", "log_on_each_node", "save_", "hub_", "eval_", "dataloader_",
                         "ddp_", "trackio_", "torch_compile")


def run_settings(config: Any) -> dict[str, Any]:
    """The settings that define what a run learns (JSON values): the config less :data:`_OPERATIONAL` fields.

    ``--resume`` is allowed only when these equal the recorded ones.
    """
    values = json.loads(json.dumps(config.to_dict(), default=str))
    return {k: v for k, v in sorted(values.items())
            if k not in _OPERATIONAL and not k.startswith(_OPERATIONAL_PREFIXES) and not k.endswith("_token")}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for package in ("grounded-rl", "trace-forge", "torch", "transformers", "trl", "accelerate", "peft", "datasets",
                    "deepspeed", "vllm"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def read_run(out: str | Path) -> dict[str, Any] | None:
    """The run record of an output folder, or ``None`` when it holds none.

    Raises:
        DataError: the record is not valid JSON.
    """
    path = Path(out) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"corrupt run record ({e}); delete the folder or use --overwrite", path=path) from e


def write_run(out: str | Path, command: str, config: Any, settings: dict[str, Any], **fields: Any) -> dict[str, Any]:
    """Write (atomically) the run record of ``out``: command, ``settings`` (:func:`run_settings` of ``config`` when
    the run claimed its folder), full config, versions, git commit, plus ``fields`` (data, parameters, progress).
    An existing record keeps its ``started`` time."""
    previous = read_run(out) or {}
    record = {
        "command": command,
        "settings": settings,
        "config": json.loads(config.to_json_string()),
        "versions": _versions(),
        "git_commit": _git_commit(),
        "started": previous.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **fields,
    }
    write_json(Path(out) / RUN_FILE, record)
    return record


def _differences(recorded: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(recorded) | set(now))
    return [f"{k} ({recorded.get(k)!r} then, {now.get(k)!r} now)" for k in keys if recorded.get(k) != now.get(k)]


def _is_complete(checkpoint: Path) -> bool:
    """A checkpoint is complete when its trainer state (written last) reads back and its weights are present."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    weights = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
               "pytorch_model.bin", "pytorch_model.bin.index.json")
    return any((checkpoint / w).is_file() for w in weights) or any(checkpoint.glob("pytorch_model_fsdp*")) or \
        any(checkpoint.glob("global_step*"))


def _checkpoints(out: Path) -> list[Path]:
    found = [p for p in out.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def last_checkpoint(out: str | Path, *, remove_incomplete: bool = False) -> Path | None:
    """The newest complete ``checkpoint-N`` of ``out``; newer incomplete ones (a kill while saving) are skipped
    with a warning, and deleted with ``remove_incomplete`` so the resumed run can save there again cleanly."""
    chosen = None
    for checkpoint in reversed(_checkpoints(Path(out))):
        if _is_complete(checkpoint):
            chosen = checkpoint
            break
        logger.warning("%s is incomplete (the run stopped while saving it): skipped%s", checkpoint,
                       ", deleted" if remove_incomplete else "")
        if remove_incomplete:
            shutil.rmtree(checkpoint)
    return chosen


def _clear(out: Path) -> None:
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def output_lock(config: Any, command: str) -> Any:
    """One writer per output folder: :class:`~trace_forge.durable.OutputLock` on the main process (the other
    processes of the same launch write through it)."""
    from trace_forge.durable import OutputLock

    return OutputLock(config.output_dir, command) if config.process_index == 0 else contextlib.nullcontext()


def _decide(out: Path, command: str, settings: dict[str, Any], options: RunOptions,
            checkpoint: str | None) -> str | None:
    """What a run may do with ``out``; returns the checkpoint to resume from (``None``: start at step 0)."""
    record = read_run(out)
    occupied = out.is_dir() and any(out.iterdir())
    same = record is not None and record.get("command") == command and record.get("settings") == settings
    if options.overwrite and occupied and not (options.resume and same):
        if record is None:
            raise ConfigError(f"{out} holds files that are no grounded-rl run; --overwrite replaces only a run's "
                              "folder: choose an empty or new output folder")
        logger.warning("--overwrite: deleting the %s run in %s", record.get("command"), out)
        _clear(out)
        return checkpoint
    if checkpoint is not None:  # an explicit checkpoint (resume_from_checkpoint): into a new or the same run
        if not _is_complete(Path(checkpoint)):
            raise ConfigError(f"resume_from_checkpoint {checkpoint}: not a complete checkpoint (its trainer state or "
                              "weights are missing)")
        if occupied and record is not None and not options.resume:
            raise ConfigError(f"{out} holds a {record.get('command')} run; add --resume to continue it from "
                              f"{checkpoint}, or choose another output folder")
        recorded = (read_run(checkpoint) or read_run(Path(checkpoint).parent) or {}).get("settings")
        if recorded is not None and recorded != settings:
            raise ConfigError(f"{checkpoint} was trained with other settings: "
                              f"{'; '.join(_differences(recorded, settings))}")
        return checkpoint
    if not occupied:
        if options.resume:
            raise ConfigError(f"--resume: {out} holds no run to resume; drop --resume to start one")
        return None
    if record is None:
        raise ConfigError(f"{out} is not empty and holds no grounded-rl run; choose an empty or new output folder")
    what = f"a {record.get('command')} run of {record.get('settings', {}).get('model')}"
    if not options.resume:
        raise ConfigError(f"{out} holds {what}: add --resume to continue it (same settings), --overwrite to "
                          "replace it, or choose another output folder")
    if record.get("command") != command:
        raise ConfigError(f"--resume: {out} holds {what}, not a {command} run")
    if record.get("settings") != settings:
        raise ConfigError(f"--resume: {out} was trained with other settings: "
                          f"{'; '.join(_differences(record.get('settings', {}), settings))}; "
                          "use the same settings, --overwrite, or another output folder")
    found = last_checkpoint(out, remove_incomplete=True)
    if found is None:
        logger.info("--resume: %s has no complete checkpoint yet; training restarts at step 0", out)
    return None if found is None else str(found)


def claim_output(out: str | Path, command: str, config: Any, settings: dict[str, Any], options: RunOptions) -> str | None:
    """Decide, on the main process, what this run does with its output folder; every process gets the answer.

    - empty or new folder: a new run (``--resume`` there is an error: nothing to resume);
    - a folder holding a run: refused, unless ``--resume`` (same command and :func:`run_settings`, else refused
      naming the differences; continues from :func:`last_checkpoint`) or ``--overwrite`` (the run is deleted);
    - ``resume_from_checkpoint`` names a checkpoint: the run starts from it (its run's settings must match);
    - a folder holding anything else: refused, even with ``--overwrite`` (it deletes runs only).

    Returns:
        The checkpoint to resume from, or ``None`` to start at step 0.

    Raises:
        ConfigError: the folder may not be used this way (one line: what it holds, what to do).
    """
    from accelerate.utils import broadcast_object_list

    state = config.distributed_state if config.device is not None else None  # set up as the trainer will be
    answer: list[Any] = [None]
    if state.is_main_process:
        try:
            answer = [("ok", _decide(Path(out), command, settings, options,
                                     getattr(config, "resume_from_checkpoint", None)))]
        except ConfigError as e:
            answer = [("error", str(e))]
    if state.num_processes > 1:
        broadcast_object_list(answer)
    status, value = answer[0]
    if status == "error":
        raise ConfigError(value)
    Path(out).mkdir(parents=True, exist_ok=True)
    return value


@contextlib.contextmanager
def claimed_output(config: Any, command: str, options: RunOptions) -> Iterator[tuple[Path, dict[str, Any], str | None]]:
    """``config.output_dir`` held for ``command`` (:func:`output_lock`, then :func:`claim_output`) while the block
    trains; yields the folder, the run's :func:`run_settings` and the checkpoint to resume from (None: step 0)."""
    out = Path(config.output_dir)
    settings = run_settings(config)
    with output_lock(config, command):
        yield out, settings, claim_output(out, command, config, settings, options)


# ---------------------------------------------------------------------------------------------------------------
# The policy: loaded the same way by every command
# ---------------------------------------------------------------------------------------------------------------


def load_policy(config: Any) -> tuple[Any, Any, Any, int]:
    """The model to train and its processor: ``(model, processor, family, frozen parameters)``.

    Weights stay fp32 even with bf16 (bf16 is autocast only, so lr-1e-6 updates are not rounded away);
    ``config.max_pixels`` is set on the processor before anything reads its resize (it defines the model frame);
    with ``config.freeze_vision`` the vision tower is frozen (ViGoRL trains the merger and the LLM).
    """
    import torch

    from grounded_rl.data import set_max_pixels
    from grounded_rl.models import family_of, freeze_vision_tower, load_model_and_processor

    model, processor = load_model_and_processor(config.model, dtype=torch.float32,
                                                trust_remote_code=config.trust_remote_code)
    if config.max_pixels is not None:
        set_max_pixels(processor, config.max_pixels)
    frozen = freeze_vision_tower(model) if config.freeze_vision else 0
    return model, processor, family_of(model.config), frozen


def parameter_counts(model: Any, frozen: int) -> dict[str, int]:
    """What a run record says of the model's parameters."""
    return {"total": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad), "vision_frozen": frozen}


# ---------------------------------------------------------------------------------------------------------------
# Trainers: strict restore, quiet logs, our model card
# ---------------------------------------------------------------------------------------------------------------


def restore_weights(model: Any, checkpoint: str | Path) -> None:
    """Load a checkpoint's weights into ``model``, every tensor or an error.

    The checkpoint is read with ``from_pretrained`` (which maps the Hub key layout of the files onto the model's
    modules), then copied in with a strict ``load_state_dict``; costs one extra copy of the weights in CPU memory
    while it runs.

    Raises:
        DataError: a tensor is missing, unexpected or of another shape: the checkpoint cannot be restored.
    """
    import torch

    dtype = next(model.parameters()).dtype
    try:
        # Mismatched shapes are reported in the loading info (below) rather than raised after a printed report.
        loaded, info = type(model).from_pretrained(str(checkpoint), dtype=dtype, use_safetensors=True,
                                                   output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise DataError(f"cannot restore the weights ({' '.join(str(e).split())})", path=checkpoint) from e
    problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    with torch.no_grad():
        result = model.load_state_dict(loaded.state_dict(), strict=False)
    problems.update({k: v for k, v in (("missing_keys", result.missing_keys),
                                       ("unexpected_keys", result.unexpected_keys)) if v and k not in problems})
    if problems:
        summary = "; ".join(f"{len(v)} {k.replace('_', ' ')} (e.g. {', '.join(map(str, list(v)[:2]))})"
                            for k, v in problems.items())
        raise DataError(f"cannot restore the weights: {summary}", path=checkpoint)
    del loaded
    logger.info("restored every weight from %s", checkpoint)


class TrainerMixin:
    """Put before TRL's trainer class: ``class GroundedSFTTrainer(TrainerMixin, SFTTrainer)``.

    - resuming restores every weight or fails (:func:`restore_weights`); PEFT adapters, FSDP and DeepSpeed
      checkpoints keep transformers' own loaders, which read their files in the model's layout;
    - every checkpoint carries the run record (attribute ``run_record``), so a copy of it can be resumed with
      its settings checked;
    - the model card is :func:`model_card`, from the attribute ``card`` (a dict of its arguments) set by the
      command.
    """

    card: dict[str, Any] | None = None
    run_record: dict[str, Any] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # One progress display, the toolkit's: transformers' tqdm bar and printed dicts would interleave with it,
        # write carriage returns into log files and put log lines on stdout, where a command's result goes.
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        for callback in list(self.callback_handler.callbacks):
            if type(callback) in (PrinterCallback, ProgressCallback):
                self.callback_handler.remove_callback(callback)
        self.callback_handler.add_callback(training_progress(self.progress_label))

    progress_label = "train"

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from transformers.trainer_utils import is_peft_available

        target = self.model if model is None else model
        peft = False
        if is_peft_available():
            from peft import PeftModel

            peft = isinstance(target, PeftModel)
        if peft or self.is_fsdp_enabled:
            super()._load_from_checkpoint(resume_from_checkpoint, model)
            return
        restore_weights(target, resume_from_checkpoint)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if self.run_record is not None and self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            write_json(folder / RUN_FILE, self.run_record)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        if self.card is None or not self.is_world_process_zero():
            return
        out = Path(self.args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        from trace_forge.durable import write_atomic

        write_atomic(out / "README.md", model_card(**self.card))


def training_progress(label: str) -> Any:
    """A ``TrainerCallback`` that shows training progress on stderr through :class:`trace_forge.cli.Progress`: a
    live bar at a terminal, a plain line every 30 s in a log file, each with the latest logged values (loss,
    learning rate, reward, ...); the end-of-training summary (runtime, mean loss) as one line. Only the main process
    of a launch draws. (Built on call: transformers is imported by the commands that train, not with this module.)
    """
    from transformers import TrainerCallback

    from trace_forge.cli import Progress

    shown_keys = ("loss", "eval_loss", "reward", "grad_norm", "learning_rate", "epoch")

    class TrainingProgress(TrainerCallback):
        def __init__(self) -> None:
            self.progress: Progress | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self.progress = Progress(label, state.max_steps).__enter__()
                self.progress.update(state.global_step)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.progress is not None:
                self.progress.update(state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
                   **kwargs: Any) -> None:
            if self.progress is None or not logs:
                return
            if "train_runtime" in logs:  # the end-of-training summary: after the last progress line
                console = self.progress.console
                self.on_train_end(args, state, control)
                summary = ", ".join(f"{k} {_short(v)}" for k, v in logs.items())
                console.print(f"{label}: {summary}", highlight=False, markup=False, soft_wrap=True)
                return
            shown = [f"{k} {_short(logs[k])}" for k in shown_keys if k in logs]
            if shown:
                self.progress.update(state.global_step, status=" · ".join(shown))

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self.progress is not None:
                self.progress.__exit__(None, None, None)
                self.progress = None

    return TrainingProgress()


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _lineage(model: str) -> str:
    """How to name a base model: a Hub id as a link; a local folder with what it was trained from."""
    if is_hub_id(model):
        return f"[{model}](https://huggingface.co/{model})"
    record = read_run(model) if Path(model).is_dir() else None
    if record is None:
        return f"`{model}`"
    base = record.get("settings", {}).get("model") or "?"
    return f"`{model}` ({record.get('command', '?').upper()} of {_lineage(base)})"


def model_card(*, name: str, base: str, method: str, multi_turn: bool, datasets: list[str],
               settings: Mapping[str, Any], path: str | None = None, command_line: str | None = None) -> str:
    """The README.md of a trained model: base model, data, method, how to load it and run it on an image.

    Example:
        >>> card = model_card(name="sft", base="Qwen/Qwen2.5-VL-3B-Instruct", method="SFT", multi_turn=False,
        ...                   datasets=["traces/sat2"], settings={"learning_rate": 1e-6})
        >>> "base_model: Qwen/Qwen2.5-VL-3B-Instruct" in card and "single-turn" in card
        True
    """
    hub_data = [d for d in datasets if is_hub_id(d)]
    front = ["---", "library_name: transformers", "pipeline_tag: image-text-to-text",
             f"tags: [grounded-rl, vigorl, {method.lower()}, trl]"]
    if is_hub_id(base):
        front.append(f"base_model: {base}")
    if hub_data:
        front.append(f"datasets: [{', '.join(hub_data)}]")
    front.append("---")
    mode = "multi-turn (zoom tool)" if multi_turn else "single-turn"
    what = {"SFT": "supervised fine-tuning on grounded reasoning traces (ViGoRL's warm start)",
            "DPO": "direct preference optimisation on pairs of correct and wrong continuations from search trees",
            "GRPO": "GRPO with grounded rewards (ViGoRL's RL stage)"}.get(method, method)
    data = ", ".join(f"[{d}](https://huggingface.co/datasets/{d})" if d in hub_data else f"`{d}`"
                     for d in datasets) or "-"
    zoom = ("\nIt answers in zoom dialogs: each turn names a point and asks for a close-up crop. "
            "`grounded-rl demo` and `grounded-rl eval --multi-turn` serve the crops.\n") if multi_turn else ""
    table = "\n".join(f"| {k} | {v} |" for k, v in settings.items())
    command = f"\n```bash\n{command_line}\n```\n" if command_line else ""
    return "\n".join(front) + f"""

# {name}

A vision-language model trained from {_lineage(base)} by {what}, {mode}, with
[grounded-rl](https://arxiv.org/abs/2505.23678) on {data}. Every reasoning step names a point `(x, y)` on the
image; the final answer follows in `<answer> ... </answer>`.
{zoom}
## Quick start

```python
from transformers import AutoModelForImageTextToText, AutoProcessor

path = "{path or name}"  # this folder, or its Hub id
model = AutoModelForImageTextToText.from_pretrained(path)
processor = AutoProcessor.from_pretrained(path)
messages = [{{"role": "user", "content": [
    {{"type": "image", "path": "photo.jpg"}},
    {{"type": "text", "text": "What is the color of the cup?"}},
]}}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                       return_tensors="pt")
output = model.generate(**inputs, max_new_tokens=1024)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

The prompt it was trained with (system prompt, question wording) comes from trace-forge; `grounded-rl eval --model
PATH --task vstar --data-dir DIR --out OUT` asks a benchmark exactly that way and scores it.

## Training
{command}
| setting | value |
|---|---|
{table}
"""
