"""Our chat templates, one per model family, and the response template that parses assistant turns back.

One message convention is used everywhere (SFT data, GRPO's tool loop, evaluation):

- ``content`` is a string or a list of parts ``{"type": "text", "text": ...}`` / ``{"type": "image", ...}``;
  an image renders as ``<|vision_start|><|image_pad|><|vision_end|>`` and the processor expands the pad to the
  image's visual tokens.
- An assistant zoom turn is either plain text already holding the call (``render_zoom_turn``'s output) or text
  plus structured ``tool_calls``; both render to the same string
  ``<think> ... </think>\\n<tool_call>\\n{"name": "zoom", "arguments": {"point": [x, y]}}\\n</tool_call>``.
- The zoom result is a ``{"role": "tool", "content": [image part, text part, ...]}`` message. It renders as
  Qwen's tool-response user turn, one turn per tool message:
  ``<|im_start|>user\\n<tool_response>\\n{parts}\\n</tool_response><|im_end|>\\n``.
- Assistant text and its ``<|im_end|>`` are wrapped in ``{% generation %}`` (assistant-only loss); the newline
  after ``<|im_end|>`` and every other role's tokens are not.
- A ``tools`` list is rendered into the system turn; ``add_generation_prompt`` appends ``<|im_start|>assistant\\n``.

The templates are prefix-preserving: rendering ``messages[:k]`` gives a prefix of rendering ``messages``, which
TRL's multi-turn tool loop relies on. The response template (transformers' declarative response parsing) turns a
generated assistant turn back into ``{"role": "assistant", "content": ..., "tool_calls": [...]}``; the
``<think>`` block stays in ``content``, where trace-forge's parser reads it.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any

from grounded_rl.models import Family

__all__ = ["chat_template", "response_template"]


@cache
def _read(name: str) -> str:
    return files(__package__).joinpath(name).read_text(encoding="utf-8")


def chat_template(family: Family | str) -> str:
    """The Jinja chat template of ``family`` (``qwen2_5_vl`` or ``qwen3_vl``).

    Example:
        >>> "{%- generation -%}" in chat_template("qwen2_5_vl")
        True
    """
    return _read(f"{Family(family).value}.jinja")


def response_template(family: Family | str) -> dict[str, Any]:
    """The response template (``tokenizer.response_template``) that parses an assistant turn of ``family``.

    Both families write Hermes-style ``<tool_call>`` JSON and end turns with ``<|im_end|>``, so they share it.
    A fresh dict is returned each time, since tokenizers keep (and may mutate) what they are given.

    Example:
        >>> response_template("qwen3_vl")["fields"]["tool_calls"]["open"]
        '<tool_call>'
    """
    Family(family)  # validates the name
    return json.loads(_read("response.json"))
