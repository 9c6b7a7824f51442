"""Trace datasets in, model-ready batches out: the model's view of a row, whole-turn fitting, and the image-token
alignment guard.

A trace-forge dataset (:mod:`trace_forge.dataset`) stores each row with the frame of its points. Before a model
sees a row:

1. :func:`model_chat` takes a row's chat as stored when it is written in the model's frame and resize (a dataset
   linearized for this model: exactly what plain TRL trains on), and otherwise re-renders it for the model from
   its structured steps (:meth:`~trace_forge.dataset.TraceRow.in_view`: points converted with the processor's
   exact resize, the system prompt worded for the frame, crops cut where the model's zoom tool would cut them).
2. :func:`fit_turns` keeps a chat within ``max_length`` by dropping *whole* trailing turns (an assistant turn with
   the crop turn that follows it), never cutting through an image. :func:`drop_unfit` applies it to a whole
   dataset before training, so no batch can end up empty.
3. :class:`GroundedCollator` renders a batch with our chat template, labels only assistant tokens, and checks per
   sample that image placeholder tokens and image features agree before the batch reaches the model: the
   "Image features and image tokens do not match" crash cannot happen.

Images are placed into their parts by TRL's own ``prepare_multimodal_messages``, as stock ``SFTTrainer`` does.
Torch and transformers are imported inside functions: importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from grounded_rl.models import Family
from trace_forge.dataset import TraceRow
from trace_forge.errors import ConfigError, DataError
from trace_forge.grounding import Resize, View

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import ProcessorMixin

__all__ = [
    "GroundedCollator",
    "drop_unfit",
    "fit_turns",
    "image_token_count",
    "model_chat",
    "model_view",
    "set_max_pixels",
]

logger = logging.getLogger(__name__)


def set_max_pixels(processor: ProcessorMixin, max_pixels: int) -> None:
    """Cap the pixels the processor resizes an image to (fewer visual tokens); saved with the processor.

    The ``model`` frame follows (:meth:`~trace_forge.grounding.Resize.of_processor` reads the same bounds), so
    points are rewritten for the size the model really sees.
    """
    image_processor = processor.image_processor
    min_pixels = Resize.of_processor(processor).min_pixels
    if max_pixels < min_pixels:
        raise ConfigError(f"max_pixels {max_pixels} is below the processor's min_pixels {min_pixels}")
    image_processor.size = {"shortest_edge": min_pixels, "longest_edge": max_pixels}
    if hasattr(image_processor, "max_pixels"):
        image_processor.max_pixels = max_pixels


def model_view(processor: ProcessorMixin | Any, family: Family | str) -> View:
    """How a model of ``family`` with ``processor`` sees images: its frame, under its processor's resize."""
    return View(Family(family).frame, Resize.of_processor(processor))


def model_chat(
    row: Mapping[str, Any], view: View, *, crops: bool = True
) -> tuple[list[dict[str, Any]], list[Any], list[tuple[int, int]]]:
    """A stored row's chat as the model of ``view`` reads it: ``(messages, images, image sizes)``.

    A row written in ``view`` is used as stored; any other is re-rendered from its structure (see the module
    docstring). With ``crops=False`` no crop is cut (None stands in for each re-cut one): for measuring lengths,
    the sizes are exact without them.
    """
    trace = TraceRow.from_row(row)
    if trace.view != view:
        trace = trace.in_view(view) if crops else trace.in_view(view, cut=None)
        return trace.messages(), list(trace.images), trace.image_sizes()
    return list(row["messages"]), list(row["images"]), trace.image_sizes()


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

    Run before training so the collator never meets a batch whose every sample must be dropped. No image is
    decoded: image sizes are read from the rows.

    Returns:
        ``(kept rows, counts)`` with counts ``rows``, ``dropped`` and ``truncated`` (rows the collator will cut).
    """
    from datasets import Image as ImageFeature
    from datasets import List

    counts = Counter(rows=len(dataset))
    if max_length is None:
        return dataset, counts
    view = model_view(processor, family)
    raw = dataset.cast_column("images", List(ImageFeature(decode=False)))
    keep = []
    for i, row in enumerate(raw):
        messages, _, sizes = model_chat(row, view, crops=False)
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

    Per row: :func:`model_chat` (the model's frame), :func:`fit_turns` (drop whole trailing turns over
    ``max_length``; a row that cannot fit is dropped), images attached to their parts by TRL's
    ``prepare_multimodal_messages`` (as stock ``SFTTrainer`` does). The batch is rendered by
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
        from trl.data_utils import prepare_multimodal_messages

        view = model_view(self.processor, self.family)
        chats, kept_ids = [], []
        for row in rows:
            messages, images, sizes = model_chat(row, view)
            self.stats["samples"] += 1
            keep = fit_turns(messages, sizes, self.processor, self.max_length)
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
            chats.append(prepare_multimodal_messages(messages, images))
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
