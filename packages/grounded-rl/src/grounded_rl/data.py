"""Trace datasets in, model-ready batches out: loading, coordinate rewriting, and the image-token alignment guard.

A trace-forge dataset (see :mod:`trace_forge.dataset`) stores chats whose points are in the *pixel* frame of the
canvas. Before a model sees them:

1. :func:`load_traces` reads the dataset (a trace-forge output dir, a parquet dir, or a Hub id) and checks its
   columns against the contract.
2. :func:`prepare_example` rewrites every point of the assistant and tool texts into the model family's frame,
   using the exact resize the processor applies, and words the system prompt for that frame.
3. :func:`fit_turns` keeps a chat within ``max_length`` by dropping *whole* trailing turns (an assistant turn with
   the tool turn and crop that follow it), never cutting through an image. :func:`drop_unfit` applies it to a
   whole dataset before training, so no batch can end up empty.
4. :class:`GroundedCollator` renders a batch with our chat template, labels only assistant tokens, and checks per
   sample that image placeholder tokens and image features agree before the batch reaches the model: the
   "Image features and image tokens do not match" crash cannot happen.

SFT uses all four; GRPO reuses 1-2 (its prompts are the system and user turns of a prepared row).
Torch and transformers are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import TYPE_CHECKING, Any

from grounded_rl.models import Family, geometry_for
from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import Frame, Point, Resize, Step, format_point
from trace_forge.tasks.prompts import NORM1000_HINT, TEMPLATES

if TYPE_CHECKING:
    from datasets import Dataset
    from PIL import Image
    from transformers import ProcessorMixin

__all__ = [
    "GroundedCollator",
    "check_features",
    "drop_unfit",
    "fit_turns",
    "image_token_count",
    "load_traces",
    "prepare_example",
    "set_max_pixels",
    "with_images",
]

logger = logging.getLogger(__name__)

# An inline point literal "(x, y)" with integer coordinates (the only form trace-forge writes).
_LITERAL_RE = re.compile(r"\(\s*(-?\d+)\s*,\s*(-?\d+)\s*\)")
# The zoom call's JSON argument: "point": [x, y].
_CALL_POINT_RE = re.compile(r'("point"\s*:\s*\[\s*)(-?\d+)(\s*,\s*)(-?\d+)(\s*\])')
_PIXEL_WORDING = TEMPLATES["pixel_coordinates"]


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def load_traces(path_or_hub_id: str | Path, split: str = "train") -> Dataset:
    """Load one split of a trace-forge dataset and check its columns against the contract.

    Accepted sources, tried in this order:

    - a trace-forge output dir holding ``hf/`` (``DatasetDict.save_to_disk``), or such an ``hf`` dir itself;
    - a dir holding ``parquet/{split}-*.parquet`` shards (or the ``parquet`` dir itself);
    - anything else that is not an existing path is read as a Hub dataset id (``load_dataset``).

    Args:
        path_or_hub_id: the dataset location.
        split: ``"train"`` or ``"validation"`` (or any split the dataset has).

    Returns:
        The split as a :class:`datasets.Dataset`.

    Raises:
        DataError: the path holds no trace dataset, the split is absent, or columns of the contract are missing
            (all of them are named).
    """
    from datasets import DatasetDict, load_dataset, load_from_disk

    path = Path(path_or_hub_id)
    if path.exists():
        hf_dir = path / "hf" if (path / "hf").is_dir() else path
        parquet_dir = path / "parquet" if (path / "parquet").is_dir() else path
        if (hf_dir / "dataset_dict.json").is_file() or (hf_dir / "state.json").is_file():
            loaded = load_from_disk(str(hf_dir))
            if isinstance(loaded, DatasetDict):
                if split not in loaded:
                    raise DataError(f"no split {split!r} (splits: {sorted(loaded)})", path=hf_dir)
                loaded = loaded[split]
            dataset = loaded
        elif any(parquet_dir.glob("*.parquet")):
            files = sorted(parquet_dir.glob(f"{split}-*.parquet"))
            if not files:
                raise DataError(f"no parquet shards {split}-*.parquet", path=parquet_dir)
            dataset = load_dataset("parquet", data_files={split: [str(f) for f in files]}, split=split)
        else:
            raise DataError("not a trace dataset: expected hf/ (save_to_disk) or parquet/ shards", path=path)
        where: object = path
    else:
        dataset = load_dataset(str(path_or_hub_id), split=split)
        where = path_or_hub_id
    check_features(dataset, where)
    logger.info("loaded %d %s rows from %s", len(dataset), split, where)
    return dataset


def check_features(dataset: Dataset, where: object = None) -> None:
    """Raise :class:`DataError` naming every contract column ``dataset`` lacks or stores with another type."""
    from datasets import Image as ImageFeature

    from trace_forge.dataset import FEATURES

    missing = [name for name in FEATURES if name not in dataset.features]
    if missing:
        raise DataError(f"not a trace-forge dataset: missing columns {missing}", path=where)
    images = dataset.features["images"]
    if not isinstance(getattr(images, "feature", None), ImageFeature):
        raise DataError(f"column 'images' must be a list of Image(), got {images}", path=where)


def set_max_pixels(processor: ProcessorMixin, max_pixels: int) -> None:
    """Cap the pixels the processor resizes an image to (fewer visual tokens); saved with the processor.

    The ``model`` frame follows (:meth:`~trace_forge.grounding.Resize.of_processor` reads the same bounds), so points are
    rewritten for the size the model really sees.
    """
    image_processor = processor.image_processor
    min_pixels = Resize.of_processor(processor).min_pixels
    if max_pixels < min_pixels:
        raise ConfigError(f"max_pixels {max_pixels} is below the processor's min_pixels {min_pixels}")
    image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    if hasattr(image_processor, "max_pixels"):
        image_processor.max_pixels = max_pixels


# ---------------------------------------------------------------------------------------------------------------
# Coordinate rewriting
# ---------------------------------------------------------------------------------------------------------------


def prepare_example(row: Mapping[str, Any], processor: ProcessorMixin | Any, family: Family | str) -> dict[str, Any]:
    """A dataset row with its messages rewritten for ``family``: points in the family's frame, matching wording.

    Every inline literal ``(x, y)`` of the assistant and tool texts (steps, point answers, zoom observations) and
    every zoom call's ``"point": [x, y]`` is a pixel point of the canvas; each is converted with the geometry of
    the canvas under ``processor`` (:func:`~grounded_rl.models.geometry_for`, the exact resize the processor
    applies). A literal that names a step is converted from the step's unrounded point (``Step.to``), so its
    rounding is the one trace-forge would write; other literals are converted as written. All literals of a text
    are rewritten in one pass, not one ``move_anchor`` per step: a step's new literal may equal another step's old
    one, and sequential rewrites would then move it twice. Crops (images after the first) keep their own pixels:
    points always refer to the full image. User texts are left as they are.

    For ``norm1000`` families the system prompt's "pixel coordinates" wording becomes
    :data:`~trace_forge.tasks.prompts.NORM1000_HINT`, the wording the model is evaluated with.

    Args:
        row: a row of a trace dataset (``messages``, ``steps``, ``image_size`` are read).
        processor: the model's processor (its resize bounds define the ``model`` frame).
        family: the model family.

    Returns:
        A shallow copy of ``row`` with new ``messages``; the input is not modified.

    Raises:
        DataError: a step is not in the pixel frame.

    Example:
        >>> from types import SimpleNamespace
        >>> ip = SimpleNamespace(size={"shortest_edge": 3136, "longest_edge": 200704}, patch_size=14, merge_size=2)
        >>> row = {"image_size": [1000, 500], "steps": [], "messages": [
        ...     {"role": "assistant", "content": [{"type": "text", "text": "<answer> (500, 250) </answer>"}]}]}
        >>> prepare_example(row, ip, "qwen3_vl")["messages"][0]["content"][0]["text"]
        '<answer> (500, 500) </answer>'
    """
    family = Family(family)
    geometry = geometry_for(processor, *row["image_size"])
    frame = family.frame
    by_literal: dict[tuple[int, int], tuple[int, int]] = {}
    for raw in row["steps"]:
        step = Step.from_dict(raw)
        if step.point.frame is not Frame.PIXEL:
            raise DataError(f"step point of {row.get('question_id')!r} is in the {step.point.frame} frame, not pixel")
        by_literal.setdefault(step.point.rounded(), step.to(frame, geometry).point.rounded())

    def convert(x: str, y: str) -> tuple[int, int]:
        xy = (int(x), int(y))
        return by_literal.get(xy) or Point(*xy).to(frame, geometry).rounded()

    def call_point(m: re.Match[str]) -> str:
        x, y = convert(m[2], m[4])
        return f"{m[1]}{x}{m[3]}{y}{m[5]}"

    def rewrite(text: str) -> str:
        text = _LITERAL_RE.sub(lambda m: format_point(convert(m[1], m[2])), text)
        return _CALL_POINT_RE.sub(call_point, text)

    messages = []
    for message in row["messages"]:
        role = message["role"]
        if role in ("assistant", "tool"):
            edit = rewrite
        elif role == "system" and frame is Frame.NORM1000:
            edit = _norm1000_wording
        else:
            messages.append(message)
            continue
        content = [{**part, "text": edit(part["text"])} if part["type"] == "text" else part
                   for part in message["content"]]
        messages.append({**message, "content": content})
    return {**row, "messages": messages}


def _norm1000_wording(text: str) -> str:
    return text.replace(_PIXEL_WORDING, NORM1000_HINT)


def with_images(messages: Sequence[Mapping[str, Any]], images: Sequence[Image.Image]) -> list[dict[str, Any]]:
    """Messages whose image parts carry their image (``{"type": "image", "image": img}``), in order of appearance.

    Raises:
        DataError: the number of image parts differs from the number of images.
    """
    remaining = iter(images)
    out = []
    for message in messages:
        content = []
        for part in message["content"]:
            if part["type"] == "image":
                image = next(remaining, None)
                if image is None:
                    raise DataError(f"{_count_images(messages)} image parts but {len(images)} images")
                part = {"type": "image", "image": image}
            else:
                part = {"type": part["type"], "text": part["text"]}
            content.append(part)
        out.append({"role": message["role"], "content": content})
    if next(remaining, None) is not None:
        raise DataError(f"{_count_images(messages)} image parts but {len(images)} images")
    return out


def _count_images(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(part["type"] == "image" for m in messages for part in m["content"])


# ---------------------------------------------------------------------------------------------------------------
# Fitting chats into max_length
# ---------------------------------------------------------------------------------------------------------------


def image_token_count(processor: ProcessorMixin | Any, width: int, height: int) -> int:
    """Visual tokens the processor makes of a ``width x height`` image: ``grid_thw.prod() / merge_size**2``.

    Example:
        >>> from types import SimpleNamespace
        >>> ip = SimpleNamespace(size={"shortest_edge": 3136, "longest_edge": 200704}, patch_size=14, merge_size=2)
        >>> image_token_count(ip, 517, 389)  # resized to 504 x 392: 18 x 14 tokens of 28 x 28 px
        252
    """
    resize = Resize.of_processor(processor)
    geometry = resize.geometry(width, height)
    return (geometry.model_width // resize.factor) * (geometry.model_height // resize.factor)


def fit_turns(
    messages: Sequence[Mapping[str, Any]],
    image_sizes: Sequence[tuple[int, int]],
    processor: ProcessorMixin,
    max_length: int | None,
) -> int | None:
    """How many leading messages to keep so the rendered chat fits ``max_length`` tokens, cutting whole turns.

    The chat is rendered with the processor's chat template and tokenized with each image placeholder counted as
    the image's visual tokens (:func:`image_token_count`), which is exactly the length the processor produces.
    A cut is only made right after an assistant turn, so what is dropped is whole trailing turns: an assistant
    turn together with the tool turn (and its crop) after it. The shortest allowed chat is everything up to and
    including the first assistant turn.

    Args:
        messages: the chat (image parts need no payload).
        image_sizes: ``(width, height)`` of each image, in order of appearance.
        processor: the model's processor, with our chat template.
        max_length: the token budget; ``None`` keeps everything.

    Returns:
        The number of messages to keep (``len(messages)`` when it fits), or ``None`` when even the shortest
        allowed chat is too long.

    Raises:
        DataError: the texts contain chat control tokens (``<|im_start|>``, image placeholders), or the number
            of image parts differs from the number of images.
    """
    if _count_images(messages) != len(image_sizes):
        raise DataError(f"{_count_images(messages)} image parts but {len(image_sizes)} images")
    if max_length is None:
        return len(messages)
    tokenizer = processor.tokenizer
    text = processor.apply_chat_template(list(messages), tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    im_start, image_pad = tokenizer.convert_tokens_to_ids(["<|im_start|>", processor.image_token])
    roles = ([] if messages[0]["role"] == "system" else ["system"]) + [m["role"] for m in messages]
    starts = [i for i, t in enumerate(ids) if t == im_start]
    pads = sum(t == image_pad for t in ids)
    if len(starts) != len(roles) or pads != len(image_sizes):
        raise DataError(
            f"rendered chat has {len(starts)} turn starts and {pads} image placeholders for {len(roles)} turns and "
            f"{len(image_sizes)} images: a message text contains chat control tokens"
        )
    # Each placeholder becomes its image's visual tokens; ends[j]: model tokens up to and including turn j.
    per_image = iter([image_token_count(processor, w, h) for w, h in image_sizes])
    lengths = [0, *accumulate(next(per_image) if t == image_pad else 1 for t in ids)]
    ends = [lengths[b] for b in [*starts[1:], len(ids)]]
    offset = len(roles) - len(messages)  # a default system turn the template adds
    first_assistant = roles.index("assistant") if "assistant" in roles else len(roles) - 1
    for turn in range(len(roles) - 1, first_assistant - 1, -1):
        if (turn == len(roles) - 1 or roles[turn] == "assistant") and ends[turn] <= max_length:
            return turn + 1 - offset
    return None


def drop_unfit(
    dataset: Dataset, processor: ProcessorMixin, family: Family | str, max_length: int | None
) -> tuple[Dataset, Counter[str]]:
    """Drop rows that cannot fit ``max_length`` even with only their first assistant turn; count the truncations.

    Run before training so the collator never meets a batch whose every sample must be dropped. Images are read
    undecoded (only their headers, for the size), so this pass is cheap.

    Returns:
        ``(kept rows, counts)`` with counts ``rows``, ``dropped`` and ``truncated`` (rows the collator will cut).
    """
    from datasets import Image as ImageFeature
    from datasets import List
    from PIL import Image as PILImage

    counts = Counter(rows=len(dataset))
    if max_length is None:
        return dataset, counts
    raw = dataset.select_columns(["messages", "steps", "image_size", "images", "question_id"])
    raw = raw.cast_column("images", List(ImageFeature(decode=False)))
    keep = []
    for i, row in enumerate(raw):
        sizes = []
        for image in row["images"]:
            source = io.BytesIO(image["bytes"]) if image["bytes"] is not None else image["path"]
            with PILImage.open(source) as opened:
                sizes.append(opened.size)
        messages = prepare_example(row, processor, family)["messages"]
        kept = fit_turns(messages, sizes, processor, max_length)
        if kept is None:
            counts["dropped"] += 1
            logger.warning("row %d (%s) cannot fit max_length=%d even with one assistant turn: dropped",
                           i, row["question_id"], max_length)
            continue
        counts["truncated"] += kept < len(messages)
        keep.append(i)
    logger.info("fit to max_length=%d: %s", max_length, json.dumps(counts))
    return (dataset if len(keep) == len(dataset) else dataset.select(keep)), counts


# ---------------------------------------------------------------------------------------------------------------
# Collator
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class GroundedCollator:
    """Turn trace rows into a padded training batch with assistant-only labels, guarding image-token alignment.

    Per row: :func:`prepare_example` (family frame), :func:`fit_turns` (drop whole trailing turns over
    ``max_length``; a row that cannot fit is dropped), images attached to their parts. The batch is rendered by
    the processor with our chat template; ``labels`` are ``-100`` except on assistant tokens (the template's
    ``{% generation %}`` span: assistant text and its ``<|im_end|>``), so system, user, tool observations and
    image placeholders carry no loss. Then, per sample, the guard checks that the image placeholder tokens number
    exactly the features of that sample's images (``image_grid_thw.prod() / merge_size**2`` summed) and that the
    sample fits ``max_length``; a violation raises instead of reaching the model.

    Args:
        processor: the model's processor, with our chat template installed.
        family: the model family (target frame of the points).
        max_length: token budget per sample; ``None``: no limit.

    Attributes:
        stats: running counts: ``samples``, ``truncated``, ``turns_dropped``, ``images_dropped``, ``dropped``.
    """

    processor: Any
    family: Family | str
    max_length: int | None = None
    stats: Counter[str] = field(default_factory=Counter)

    def __call__(self, rows: list[Mapping[str, Any]]) -> dict[str, Any]:
        chats, kept_ids = [], []
        for row in rows:
            messages = prepare_example(row, self.processor, self.family)["messages"]
            images = list(row["images"])
            self.stats["samples"] += 1
            keep = fit_turns(messages, [im.size for im in images], self.processor, self.max_length)
            if keep is None:
                self.stats["dropped"] += 1
                logger.warning("%s: too long for max_length=%s even with one assistant turn: dropped from the "
                               "batch", row["question_id"], self.max_length)
                continue
            if keep < len(messages):
                n_images = _count_images(messages[:keep])
                self.stats["truncated"] += 1
                self.stats["turns_dropped"] += len(messages) - keep
                self.stats["images_dropped"] += len(images) - n_images
                logger.info("%s: dropped the last %d turns (%d images) to fit max_length=%s",
                            row["question_id"], len(messages) - keep, len(images) - n_images, self.max_length)
                messages, images = messages[:keep], images[:n_images]
            chats.append(with_images(messages, images))
            kept_ids.append(row["question_id"])
        if not chats:
            raise DataError(f"every sample of a batch exceeds max_length={self.max_length}; filter the dataset "
                            "with grounded_rl.data.drop_unfit first")
        batch = self.processor.apply_chat_template(
            chats,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
            return_assistant_tokens_mask=True,
            processor_kwargs={"padding": True, "padding_side": "right", "add_special_tokens": False},
        )
        labels = batch["input_ids"].clone()
        labels[batch.pop("assistant_masks") == 0] = -100
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        self.check_alignment(batch, kept_ids)
        return dict(batch)

    def check_alignment(self, batch: Mapping[str, Any], sample_ids: Sequence[str]) -> None:
        """Raise :class:`DataError` unless every sample's placeholder count equals its images' feature count.

        Images belong to samples in order: sample ``i`` owns as many consecutive ``image_grid_thw`` rows as it has
        ``<|vision_start|>`` tokens.
        """
        tokenizer = self.processor.tokenizer
        image_pad, vision_start = tokenizer.convert_tokens_to_ids([self.processor.image_token, "<|vision_start|>"])
        merge = self.processor.image_processor.merge_size
        grids = batch.get("image_grid_thw")
        features = [] if grids is None else (grids.prod(dim=-1) // merge**2).tolist()
        first = 0
        for ids, mask, sample_id in zip(batch["input_ids"], batch["attention_mask"], sample_ids, strict=True):
            n_images = int((ids == vision_start).sum())
            expected = sum(features[first : first + n_images])
            tokens = int((ids == image_pad).sum())
            first += n_images
            if tokens != expected:
                raise DataError(f"{sample_id}: {tokens} image placeholder tokens for {expected} image features")
            if self.max_length is not None and int(mask.sum()) > self.max_length:
                raise DataError(f"{sample_id}: {int(mask.sum())} tokens after fitting to max_length={self.max_length}")
        if first != len(features):
            raise DataError(f"batch has {len(features)} images but {first} <|vision_start|> tokens")
