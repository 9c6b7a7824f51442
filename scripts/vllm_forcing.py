"""A vLLM logits processor (V1 API) that makes a random tiny model write well-formed grounded replies.

A random model writes junk, so against it the search and the multi-turn eval would only ever see dead nodes. This
processor reads each prompt and forces the reply our parsers expect, leaving a few choices to the model's own
sampling (so temperature, seeds and ``n`` still matter): the digits of every point and which option to answer.

- teacher (MCTS) prompts: a grounded step ``<think>... (x, y) ...</think>`` while fewer than two previous steps
  are in the prompt, then (or when the answer is forced) ``<answer>OPTION</answer>``;
- single-turn student prompts: ``<think>... (x, y) ...</think>`` then the answer;
- multi-turn student prompts: a ``<think>`` and a zoom ``<tool_call>`` on the same point until two crops came
  back (or zooms are used up), then the answer;
- anything else (``teacher check``): ``The red dot is at (x, y).``

Point digits are two-digit numbers 10..99, inside any image the tokenizer's processor keeps. Answers are one of the
question's ``(A) ...`` options, or a point for point questions. It relies on the tiny byte-level tokenizer of
``grounded_rl.tiny`` (token id = byte value, tags as added tokens).

Serve with ``PYTHONPATH=scripts python -m vllm.entrypoints.openai.api_server ... --logits-processors
vllm_forcing:ForceGroundedReplies`` (see ``scripts/real_vllm_check.sh``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

_DIGITS = tuple(b"0123456789")
_FIRST_DIGITS = tuple(b"123456789")


def _lit(text: str) -> tuple[str, bytes]:
    return ("lit", text.encode())


def _point(tag: str) -> list[tuple]:
    """``(x, y)`` with model-chosen two-digit numbers, remembered under ``tag`` for a later copy."""
    return [_lit("("), ("digit", _FIRST_DIGITS, tag + "x"), ("digit", _DIGITS, tag + "x"), _lit(", "),
            ("digit", _FIRST_DIGITS, tag + "y"), ("digit", _DIGITS, tag + "y"), _lit(")")]


def _answer(options: list[str]) -> list[tuple]:
    body = [("choice", [o.encode() for o in options])] if options else _point("a")
    return [_lit("<answer>"), *body, _lit("</answer>")]


def plan(prompt: str) -> list[tuple]:
    """The reply template for a prompt: literal bytes, digit slots, copies of earlier slots, option choices."""
    options = re.findall(r"^\([A-Z]\) (.+)$", prompt, flags=re.M)
    if "ONE reasoning step per response" in prompt:  # the MCTS teacher
        if "maximum number of reasoning steps" in prompt or prompt.count("Previous step ") >= 2:
            return _answer(options)
        return [_lit("<think>I look at the object at "), *_point("s"), _lit(" closely.</think>")]
    if "zoom tool call" in prompt:  # multi-turn student
        if "You have used all your zooms" in prompt or prompt.count("<tool_response>") >= 2:
            return [_lit("<think>I have seen enough to answer.</think>\n"), *_answer(options)]
        return [_lit("<think>The object may be near "), *_point("z"), _lit(".</think>\n<tool_call>\n"),
                _lit('{"name": "zoom", "arguments": {"point": ['), ("copy", "zx"), _lit(", "), ("copy", "zy"),
                _lit("]}}\n</tool_call>")]
    if "First think inside <think>" in prompt:  # single-turn student
        return [_lit("<think>I look at "), *_point("s"), _lit(".</think>\n"), *_answer(options)]
    return [_lit("The red dot is at "), *_point("d"), _lit(".")]


def next_allowed(segments: list[tuple], out: bytes) -> tuple[int, ...] | None:
    """Tokens allowed after output ``out`` (byte tokens), or None once the template is complete."""
    cursor, slots = 0, {}
    for kind, value, *rest in segments:
        if kind == "lit" or kind == "copy":
            text = value if kind == "lit" else slots.get(value, b"")
            if len(out) < cursor + len(text):
                return (text[len(out) - cursor],)
            cursor += len(text)
        elif kind == "digit":
            if len(out) == cursor:
                return value
            slots[rest[0]] = slots.get(rest[0], b"") + out[cursor:cursor + 1]
            cursor += 1
        else:  # choice: the model picks the first byte, the rest of that option follows
            if len(out) == cursor:
                return tuple(sorted({o[0] for o in value}))
            chosen = next((o for o in value if o[0] == out[cursor]), value[0])
            if len(out) < cursor + len(chosen):
                return (chosen[len(out) - cursor],)
            cursor += len(chosen)
    return None


class ForceGroundedReplies(LogitsProcessor):
    """Masks every token but the allowed ones; the end-of-turn token once the template is complete."""

    def __init__(self, vllm_config, device: torch.device, is_pin_memory: bool) -> None:
        tokenizer = json.loads((Path(vllm_config.model_config.tokenizer) / "tokenizer.json").read_text())
        self._added = {t["id"]: t["content"] for t in tokenizer["added_tokens"]}
        self._eos = next(i for i, t in self._added.items() if t == "<|im_end|>")
        self._state: dict[int, tuple[list[tuple], list[int]]] = {}

    def is_argmax_invariant(self) -> bool:
        return False  # it changes greedy replies too

    def _decode(self, ids: list[int]) -> str:
        parts = []
        for i in ids:
            if i < 256:
                parts.append(bytes((i,)).decode("latin-1"))
            elif self._added.get(i) not in ("<|image_pad|>", "<|video_pad|>"):
                parts.append(self._added.get(i, ""))
        return "".join(parts).encode("latin-1", "replace").decode("utf-8", "replace")

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self._state, batch_update,
                             lambda params, prompt, out: (plan(self._decode(prompt or [])), out))

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        for row, (segments, out) in self._state.items():
            if any(t >= 256 for t in out):
                allowed: tuple[int, ...] | None = None
            else:
                allowed = next_allowed(segments, bytes(out))
            keep = list(allowed) if allowed is not None else [self._eos]
            mask = torch.full_like(logits[row], float("-inf"))
            mask[keep] = 0.0
            logits[row] += mask
        return logits
