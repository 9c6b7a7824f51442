"""A random-init tiny Qwen2.5-VL / Qwen3-VL with a locally built tokenizer and processor, for tests and smoke runs.

Nothing is downloaded: the config, the byte-level tokenizer, the image/video processors and our chat template are
all built here, then written with ``save_pretrained`` so ``AutoModelForImageTextToText`` and ``AutoProcessor``
load the directory offline, exactly like a Hub checkpoint::

    grounded-rl make-tiny-model /tmp/tiny-qwen2_5_vl
    grounded-rl make-tiny-model /tmp/tiny-qwen3_vl --family qwen3_vl

Sizes (about 0.35M parameters for Qwen2.5-VL, 0.45M for Qwen3-VL): text hidden 64, 2 layers, 4 query / 2 key-value heads (head_dim 16, so the
M-RoPE sections ``[2, 3, 3]`` sum to head_dim / 2); vision depth 2, hidden 64, merged into the text width 64.

The tokenizer has no merges: its vocabulary is the 256 byte-level symbols (token id = byte value), so any text
round-trips and every byte is one token. On top sit the Qwen special tokens and the tags of our grounded format
as single tokens (``<think>``, ``<tool_call>``, ...): a random model learns one token per tag during SFT instead
of a byte sequence, so short CPU runs already produce well-formed turns.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from grounded_rl.models import Family
from grounded_rl.templates import chat_template, response_template

if TYPE_CHECKING:
    from transformers import PreTrainedModel, ProcessorMixin

__all__ = [
    "SPECIAL_TOKENS",
    "FORMAT_TOKENS",
    "TINY_MAX_VISUAL_TOKENS",
    "TINY_MIN_VISUAL_TOKENS",
    "build_tiny_tokenizer",
    "build_tiny_processor",
    "build_tiny_model",
    "make_tiny_model",
]

logger = logging.getLogger(__name__)

# Control tokens of the Qwen2-VL family, in Qwen's order. <|endoftext|> pads; <|im_end|> ends a chat turn (eos).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Tags of the grounded format and the tool protocol: ordinary (non-special) added tokens, as in Qwen's own
# tokenizers, so ``decode(skip_special_tokens=True)`` keeps them and the response parsers still see them.
FORMAT_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<answer>",
    "</answer>",
)
# Images are resized to at most 256 visual tokens (448 x 448 px for Qwen2.5-VL, 512 x 512 for Qwen3-VL): a processor
# call and a forward pass then stay well under a second on CPU, while a 4:3 photo still keeps ~15 x 11 tokens of
# detail, enough for a dot drawn on it to stay visible. At least 4 tokens (2 x 2 merged patches), as Qwen ships.
TINY_MAX_VISUAL_TOKENS = 256
TINY_MIN_VISUAL_TOKENS = 4
_TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
)
_MROPE_SECTION = [2, 3, 3]  # temporal, height, width halves of the rotary dims: sum = head_dim / 2 = 8


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes, indexed by byte value.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, ...) are shifted to code points
    from 256 upward, in byte order. The ``tokenizers`` ByteLevel pre-tokenizer uses the same table.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    symbols, shifted = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + shifted))
            shifted += 1
    return symbols


def build_tiny_tokenizer():
    """A byte-level ``Qwen2Tokenizer`` (no merges) with Qwen's special tokens and our format tags.

    Returns:
        ``Qwen2Tokenizer`` with ``eos_token="<|im_end|>"`` (what a chat model emits to end its turn, and what
        TRL's tool loop trims on) and ``pad_token="<|endoftext|>"``.
    """
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab = {symbol: i for i, symbol in enumerate(_byte_symbols())}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[],
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]}
    )
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in FORMAT_TOKENS])
    return tokenizer


def build_tiny_processor(family: Family | str = Family.QWEN2_5_VL, tokenizer=None) -> ProcessorMixin:
    """The family's processor around the tiny tokenizer, with small CPU-friendly image bounds and our template.

    Args:
        family: ``qwen2_5_vl`` (patch 14, CLIP normalisation) or ``qwen3_vl`` (patch 16, mean/std 0.5).
        tokenizer: reuse this tokenizer; a new :func:`build_tiny_tokenizer` otherwise.

    Returns:
        ``Qwen2_5_VLProcessor`` or ``Qwen3VLProcessor``; images become at most :data:`TINY_MAX_VISUAL_TOKENS`
        visual tokens.
    """
    from transformers import Qwen2VLImageProcessor

    family = Family(family)
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    tokenizer.chat_template = chat_template(family)
    tokenizer.response_template = response_template(family)
    patch, merge, temporal = (14, 2, 2) if family is Family.QWEN2_5_VL else (16, 2, 2)
    token_area = (patch * merge) ** 2  # pixels covered by one visual token
    size = {
        "shortest_edge": TINY_MIN_VISUAL_TOKENS * token_area,
        "longest_edge": TINY_MAX_VISUAL_TOKENS * token_area,
    }
    common = dict(size=size, patch_size=patch, merge_size=merge, temporal_patch_size=temporal)
    if family is Family.QWEN2_5_VL:
        from transformers import Qwen2_5_VLProcessor, Qwen2VLVideoProcessor

        image_processor = Qwen2VLImageProcessor(**common)
        video_processor = Qwen2VLVideoProcessor(**common)
        cls = Qwen2_5_VLProcessor
    else:
        from transformers import Qwen3VLProcessor, Qwen3VLVideoProcessor

        half = [0.5, 0.5, 0.5]
        image_processor = Qwen2VLImageProcessor(**common, image_mean=half, image_std=half)
        video_processor = Qwen3VLVideoProcessor(**common, image_mean=half, image_std=half)
        cls = Qwen3VLProcessor
    return cls(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=chat_template(family),
    )


def _tiny_config(family: Family, tokenizer):
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    # Exactly the tokenizer's size (real checkpoints pad it): a random model then never samples an id that
    # decodes to nothing.
    vocab_size = len(tokenizer)
    token_ids = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    vision = dict(depth=2, hidden_size=64, intermediate_size=128, num_heads=4, out_hidden_size=64)
    vision.update(spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
    if family is Family.QWEN2_5_VL:
        from transformers import Qwen2_5_VLConfig

        text = dict(
            _TEXT,
            vocab_size=vocab_size,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1_000_000.0,
                "mrope_section": _MROPE_SECTION,
            },
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        )
        # Window attention over 112 px windows (4 x 4 patches); block 1 attends to the full image.
        vision.update(patch_size=14, window_size=112, fullatt_block_indexes=[1])
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **token_ids)
    from transformers import Qwen3VLConfig

    text = dict(
        _TEXT,
        vocab_size=vocab_size,
        head_dim=16,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": _MROPE_SECTION,
            "mrope_interleaved": True,
        },
        pad_token_id=ids["<|endoftext|>"],
    )
    # 16 x 16 learned position embeddings (bilinearly resized to each image's grid); features of vision block 1
    # are also added into the first text layer ("deepstack").
    vision.update(patch_size=16, num_position_embeddings=256, deepstack_visual_indexes=[1])
    return Qwen3VLConfig(text_config=text, vision_config=vision, **token_ids)


def build_tiny_model(
    family: Family | str = Family.QWEN2_5_VL, tokenizer=None, seed: int = 0
) -> PreTrainedModel:
    """A random-init tiny model of ``family`` whose vocabulary and special ids match ``tokenizer``.

    Args:
        family: model family.
        tokenizer: the tokenizer whose ids the config must use; a new tiny one otherwise.
        seed: torch seed for the random weights.

    Returns:
        ``Qwen2_5_VLForConditionalGeneration`` or ``Qwen3VLForConditionalGeneration`` in float32, with a
        ``generation_config`` that stops on ``<|im_end|>`` or ``<|endoftext|>``.
    """
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    family = Family(family)
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    config = _tiny_config(family, tokenizer)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    im_end, endoftext = (tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>"))
    # Greedy by default: rollouts set their own sampling parameters explicitly.
    model.generation_config = GenerationConfig(
        eos_token_id=[im_end, endoftext], pad_token_id=endoftext, bos_token_id=endoftext, do_sample=False
    )
    return model


def make_tiny_model(out: str | Path, family: Family | str = Family.QWEN2_5_VL, seed: int = 0) -> Path:
    """Build the tiny model, tokenizer and processor of ``family`` and save them to ``out`` (safetensors).

    Args:
        out: output directory (created; existing files of the same names are overwritten).
        family: ``qwen2_5_vl`` or ``qwen3_vl``.
        seed: seed of the random weights; the same seed gives identical weights.

    Returns:
        The output directory.

    Example:
        >>> from transformers import AutoModelForImageTextToText, AutoProcessor  # doctest: +SKIP
        >>> path = make_tiny_model("/tmp/tiny")  # doctest: +SKIP
        >>> model = AutoModelForImageTextToText.from_pretrained(path)  # doctest: +SKIP
    """
    family = Family(family)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    processor = build_tiny_processor(family)
    model = build_tiny_model(family, processor.tokenizer, seed=seed)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("wrote tiny %s (%d parameters) to %s", family.value, n_params, out)
    return out
