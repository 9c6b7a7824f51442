"""Model families, the coordinate frame each one speaks, and loading a model with its processor.

trace-forge stores points in the ``pixel`` frame of the original image. What a model reads and writes depends on
its family:

- Qwen2.5-VL uses absolute pixels of the image *as its processor resized it* (``model`` frame): the size comes
  from ``smart_resize`` with factor ``patch_size * merge_size`` (28) and the processor's min/max pixels.
- Qwen3-VL uses a 0-1000 grid over the image (``norm1000`` frame), independent of resizing.

:meth:`~trace_forge.grounding.Resize.of_processor` reads the resize bounds from the real processor, so the ``model``
frame is always the one the processor actually produces (tests check this by reconstructing the resized image from ``pixel_values``). Torch and
transformers are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from trace_forge.errors import ConfigError
from trace_forge.grounding import MODEL_TYPE_FRAMES, Frame, ImageGeometry, Point, Resize, Trajectory

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel, ProcessorMixin

__all__ = [
    "Family",
    "family_of",
    "geometry_for",
    "to_model_frame",
    "freeze_vision_tower",
    "install_templates",
    "load_model_and_processor",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T", Point, Trajectory)


class Family(StrEnum):
    """A supported model family; :attr:`frame` is the coordinate frame its text uses."""

    QWEN2_5_VL = "qwen2_5_vl"
    QWEN3_VL = "qwen3_vl"

    @property
    def frame(self) -> Frame:
        return MODEL_TYPE_FRAMES[self.value]


# config.json "model_type" -> family (MoE variants share the dense model's prompt format and frame).
_MODEL_TYPES = {
    "qwen2_5_vl": Family.QWEN2_5_VL,
    "qwen3_vl": Family.QWEN3_VL,
    "qwen3_vl_moe": Family.QWEN3_VL,
}


def family_of(config_or_path: PretrainedConfig | PreTrainedModel | str | Path) -> Family:
    """The family of a model, from its config, the model itself, or a checkpoint directory.

    A directory is read from its ``config.json`` directly, so this works without importing transformers.

    Raises:
        ValueError: if the ``model_type`` is not a supported family.
        FileNotFoundError: if a path has no ``config.json``.

    Example:
        >>> from types import SimpleNamespace
        >>> family_of(SimpleNamespace(model_type="qwen3_vl")).frame.value
        'norm1000'
    """
    if isinstance(config_or_path, (str, Path)):
        config_file = Path(config_or_path) / "config.json"
        if not config_file.is_file():
            raise FileNotFoundError(f"no config.json in {config_or_path}")
        model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    else:
        config = getattr(config_or_path, "config", config_or_path)
        model_type = getattr(config, "model_type", None)
    if model_type not in _MODEL_TYPES:
        raise ValueError(
            f"unsupported model_type {model_type!r}; supported: {sorted(_MODEL_TYPES)} "
            f"(families {[f.value for f in Family]})"
        )
    return _MODEL_TYPES[model_type]


def geometry_for(processor: ProcessorMixin | Any, width: int, height: int) -> ImageGeometry:
    """The :class:`~trace_forge.grounding.ImageGeometry` of a ``width x height`` image under ``processor``.

    Example:
        >>> from types import SimpleNamespace
        >>> ip = SimpleNamespace(size={"shortest_edge": 3136, "longest_edge": 200704}, patch_size=14, merge_size=2)
        >>> g = geometry_for(ip, 517, 389)
        >>> (g.model_width, g.model_height)
        (504, 392)
    """
    return Resize.of_processor(processor).geometry(width, height)


def to_model_frame(
    traj_or_point: _T, width: int, height: int, processor: ProcessorMixin | Any, family: Family | str
) -> _T:
    """Convert a trace-forge point or trajectory (any frame, usually ``pixel``) into ``family``'s frame.

    Args:
        traj_or_point: a :class:`~trace_forge.grounding.Point` or :class:`~trace_forge.grounding.Trajectory`.
        width: width of the original image in pixels.
        height: height of the original image in pixels.
        processor: the model's processor; its resize bounds define the ``model`` frame.
        family: the model family, which picks the target frame (``model`` or ``norm1000``).

    Returns:
        The same kind of object with every point in the family's frame (floats; text rendering rounds them).

    Example:
        >>> from types import SimpleNamespace
        >>> ip = SimpleNamespace(size={"shortest_edge": 3136, "longest_edge": 200704}, patch_size=14, merge_size=2)
        >>> p = to_model_frame(Point(258.0, 194.0), 517, 389, ip, "qwen2_5_vl")
        >>> p.frame.value, round(p.x, 2), round(p.y, 2)
        ('model', 251.5, 195.5)
    """
    geometry = geometry_for(processor, width, height)
    return traj_or_point.to(Family(family).frame, geometry)


def install_templates(processor: ProcessorMixin, family: Family | str | None = None) -> ProcessorMixin:
    """Put our chat template (and the response template for tool-call parsing) on a processor and its tokenizer.

    Stock Qwen2.5-VL templates cannot render tool calls, so SFT, GRPO and eval all use ours instead; the same
    string is set on the tokenizer so text-only paths render identically.

    Args:
        processor: a Qwen-VL processor.
        family: the family whose template to use; read from the processor class name when omitted.

    Returns:
        The same processor, modified in place.
    """
    from grounded_rl.templates import chat_template, response_template

    if family is None:
        family = Family.QWEN3_VL if "Qwen3VL" in type(processor).__name__ else Family.QWEN2_5_VL
    template = chat_template(family)
    processor.chat_template = template
    processor.tokenizer.chat_template = template
    processor.tokenizer.response_template = response_template(family)
    return processor


def load_model_and_processor(
    path: str | Path,
    *,
    dtype: Any = None,
    trust_remote_code: bool = False,
    use_our_templates: bool = True,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load an image-text-to-text model and its processor from a local directory or Hub id.

    Weights load from safetensors only (``use_safetensors=True``: no pickle files are ever unpickled), and remote
    code runs only when ``trust_remote_code`` is asked for.

    Args:
        path: checkpoint directory or Hub id.
        dtype: torch dtype (or ``"auto"``); transformers' default when ``None``.
        trust_remote_code: allow code from the checkpoint; off by default.
        use_our_templates: install our chat/response templates (see :func:`install_templates`).

    Returns:
        ``(model, processor)``.

    Raises:
        ValueError: if the model is not of a supported family.
        ConfigError: a local path that is no checkpoint (no Hub lookup for it), or a model that cannot be loaded.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from grounded_rl.training import check_source

    check_source(str(path), "model", model=True)
    kwargs: dict[str, Any] = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
        processor = AutoProcessor.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    except OSError as e:  # not found on the Hub, offline, no safetensors weights: transformers' message says which
        raise ConfigError(f"cannot load model {path}: {' '.join(str(e).split())}") from e
    family = family_of(model.config)
    if use_our_templates:
        install_templates(processor, family)
    logger.info("loaded %s (%s) from %s", type(model).__name__, family.value, path)
    return model, processor


def freeze_vision_tower(model: PreTrainedModel) -> int:
    """Freeze the vision encoder of a Qwen-VL model, keeping its merger (the projector into the LLM) trainable.

    ViGoRL: "vision tower frozen, projector and LLM trained". The merger is ``visual.merger`` (and, for Qwen3-VL,
    the ``deepstack_merger_list`` that feeds intermediate vision features into the LLM).

    Returns:
        The number of parameters frozen.
    """
    visual = model.model.visual
    frozen = 0
    for name, param in visual.named_parameters():
        if not name.startswith(("merger.", "deepstack_merger_list.")):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen
