"""Our chat templates through the real processors: image tokens, assistant-only masks, prefixes, TRL's checks."""

from __future__ import annotations

import copy
from importlib.resources import files

import pytest
from jinja2 import TemplateError
from PIL import Image

from grounded_rl.models import install_templates
from grounded_rl.templates import chat_template, response_template
from trace_forge.grounding.format import ZOOM_TOOL_SPEC, render_answer_turn, render_zoom_turn

FAMILIES = ["qwen2_5_vl", "qwen3_vl"]
SYSTEM = "Reason step by step; anchor each step to a point (x, y)."
QUESTION = "What does the sign say?"
ZOOM_TURN = render_zoom_turn("The sign is small (403, 97).", (403, 97))
CROP_NOTE = "Crop around (403, 97)."
ANSWER_TURN = render_answer_turn("It reads EXIT (60, 50).", "EXIT")


@pytest.fixture(scope="module")
def processors(tiny_model_dir):
    from transformers import AutoProcessor

    return {f: AutoProcessor.from_pretrained(tiny_model_dir(f)) for f in FAMILIES}


def _text(text):
    return {"type": "text", "text": text}


def zoom_dialog():
    """system, user (image + question), assistant zoom, tool (crop + note), assistant answer."""
    image = Image.new("RGB", (517, 389), (200, 180, 160))
    crop = Image.new("RGB", (160, 120), (90, 90, 90))
    return [
        {"role": "system", "content": [_text(SYSTEM)]},
        {"role": "user", "content": [{"type": "image", "image": image}, _text(QUESTION)]},
        {"role": "assistant", "content": [_text(ZOOM_TURN)]},
        {"role": "tool", "name": "zoom", "content": [{"type": "image", "image": crop}, _text(CROP_NOTE)]},
        {"role": "assistant", "content": [_text(ANSWER_TURN)]},
    ]


def _render(processor, messages, **kwargs):
    return processor.apply_chat_template(copy.deepcopy(messages), **kwargs)


def _tokenize(processor, messages, **kwargs):
    return _render(processor, messages, tokenize=True, return_dict=True, **kwargs)


def _runs(mask):
    """(start, end) of each run of 1s in a 0/1 list."""
    runs, start = [], None
    for i, m in enumerate([*mask, 0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


@pytest.mark.parametrize("family", FAMILIES)
def test_rendered_dialog(family, processors):
    text = _render(processors[family], zoom_dialog(), tokenize=False)
    expected_tail = (
        f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{QUESTION}<|im_end|>\n"
        f"<|im_start|>assistant\n{ZOOM_TURN}<|im_end|>\n"
        f"<|im_start|>user\n<tool_response>\n<|vision_start|><|image_pad|><|vision_end|>{CROP_NOTE}\n"
        f"</tool_response><|im_end|>\n"
        f"<|im_start|>assistant\n{ANSWER_TURN}<|im_end|>\n"
    )
    assert text == f"<|im_start|>system\n{SYSTEM}<|im_end|>\n" + expected_tail


@pytest.mark.parametrize("family", FAMILIES)
def test_image_pads_match_image_features(family, processors):
    processor = processors[family]
    out = _tokenize(processor, zoom_dialog(), return_tensors="pt")
    ids, grid = out["input_ids"][0], out["image_grid_thw"]
    merge = processor.image_processor.merge_size
    assert grid.shape == (2, 3)  # the question image and the crop
    features = [int(g.prod()) // merge**2 for g in grid]
    assert int((ids == processor.image_token_id).sum()) == sum(features)
    # Each image's pads sit in one contiguous run between its vision_start/end tokens, in order.
    pad_runs = _runs((ids == processor.image_token_id).tolist())
    assert [end - start for start, end in pad_runs] == features
    tokenizer = processor.tokenizer
    for start, end in pad_runs:
        assert tokenizer.convert_ids_to_tokens([int(ids[start - 1]), int(ids[end])]) == [
            "<|vision_start|>",
            "<|vision_end|>",
        ]


@pytest.mark.parametrize("family", FAMILIES)
def test_assistant_mask_covers_exactly_the_assistant_turns(family, processors):
    processor = processors[family]
    out = _tokenize(processor, zoom_dialog(), return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"][0], out["assistant_masks"][0]
    assert len(mask) == len(ids)
    decode = processor.tokenizer.decode
    runs = _runs(mask)
    # Token by token: the masked runs are exactly each assistant text plus its end-of-turn token ...
    assert [decode(ids[s:e]) for s, e in runs] == [ZOOM_TURN + "<|im_end|>", ANSWER_TURN + "<|im_end|>"]
    for start, end in runs:
        assert decode(ids[:start]).endswith("<|im_start|>assistant\n")  # the header is not trained
        assert end == len(ids) or decode(ids[end : end + 1]) == "\n"  # nor the newline after <|im_end|>
    # ... and nothing from the system, user or tool turns is masked.
    unmasked = decode([t for t, m in zip(ids, mask, strict=True) if not m])
    for visible in (SYSTEM, QUESTION, CROP_NOTE, "<tool_response>"):
        assert visible in unmasked
    assert "The sign is small" not in unmasked and "EXIT" not in unmasked


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_preserving(family, processors):
    """Rendering messages[:k] (and its generation prompt) is a prefix of rendering all messages: text and ids."""
    processor = processors[family]
    messages = zoom_dialog()
    full_text = _render(processor, messages, tokenize=False)
    full_ids = _tokenize(processor, messages)["input_ids"][0]
    for k in range(1, len(messages) + 1):
        assert full_text.startswith(_render(processor, messages[:k], tokenize=False)), k
        ids = _tokenize(processor, messages[:k])["input_ids"][0]
        assert full_ids[: len(ids)] == ids, k
        if k < len(messages) and messages[k]["role"] == "assistant":
            prompt = _render(processor, messages[:k], tokenize=False, add_generation_prompt=True)
            assert prompt.endswith("<|im_start|>assistant\n")
            assert full_text.startswith(prompt), k


@pytest.mark.parametrize("family", FAMILIES)
def test_trl_accepts_the_template(family, processors):
    from trl.chat_template_utils import (
        has_generation_markers,
        is_chat_template_prefix_preserving,
        is_chat_template_stop_token_trained,
        supports_tool_calling,
    )

    processor = processors[family]
    assert supports_tool_calling(processor)
    assert is_chat_template_prefix_preserving(processor)
    assert is_chat_template_stop_token_trained(processor)
    assert has_generation_markers(processor.chat_template)


@pytest.mark.parametrize("family", FAMILIES)
def test_structured_tool_calls_render_like_inline_calls(family, processors):
    """An assistant turn with ``tool_calls`` (how TRL's tool loop records it) renders as render_zoom_turn does."""
    processor = processors[family]
    inline = zoom_dialog()
    thought = ZOOM_TURN.split("\n<tool_call>")[0]
    for arguments in ({"point": [403, 97]}, '{"point": [403, 97]}'):
        structured = zoom_dialog()
        structured[2] = {
            "role": "assistant",
            "content": [_text(thought)],
            "tool_calls": [{"type": "function", "function": {"name": "zoom", "arguments": arguments}}],
        }
        assert _render(processor, structured, tokenize=False) == _render(processor, inline, tokenize=False)
    # A call with no text opens the turn directly.
    bare = [
        {"role": "user", "content": "hi"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": "zoom", "arguments": {"point": [1, 2]}}}
            ],
        },
    ]
    text = processor.apply_chat_template(bare, tokenize=False)
    assert text.endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "zoom", "arguments": {"point": [1, 2]}}\n'
        "</tool_call><|im_end|>\n"
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_response_template_parses_turns_back(family, processors):
    tokenizer = processors[family].tokenizer
    zoom = tokenizer.parse_response(ZOOM_TURN + "<|im_end|>", prefix="")
    assert zoom["content"] == ZOOM_TURN.split("\n<tool_call>")[0]
    assert zoom["tool_calls"] == [
        {"type": "function", "function": {"name": "zoom", "arguments": {"point": [403, 97]}}}
    ]
    answer = tokenizer.parse_response(ANSWER_TURN + "<|im_end|>", prefix="")
    assert answer == {"role": "assistant", "content": ANSWER_TURN}
    # The parsed turn renders back to the same text, so re-rendered conversations keep their tokens.
    messages = zoom_dialog()
    reparsed = copy.deepcopy(messages)
    reparsed[2] = zoom
    assert _render(processors[family], reparsed, tokenize=False) == _render(
        processors[family], messages, tokenize=False
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_system_prompt_ignores_tools_and_generation_prompt(family, processors):
    processor = processors[family]
    user = [{"role": "user", "content": [_text(QUESTION)]}]
    plain = processor.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    if family == "qwen2_5_vl":  # Qwen2.5-VL's default system turn; Qwen3-VL has none
        assert plain.startswith(
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        )
    else:
        assert plain.startswith("<|im_start|>user\n")
    assert "# Tools" not in plain and plain.endswith("<|im_start|>assistant\n")
    # The zoom tool lives in the student system prompt, so passing `tools` (as TRL's GRPO loop does) must not
    # change a single token: SFT, GRPO and evaluation see the same prompt.
    with_tools = processor.apply_chat_template(user, tools=[ZOOM_TOOL_SPEC], tokenize=False, add_generation_prompt=True)
    assert with_tools == plain


@pytest.mark.parametrize("family", FAMILIES)
def test_string_content_and_unknown_roles(family, processors):
    processor = processors[family]
    text = processor.apply_chat_template(
        [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER_TURN}], tokenize=False
    )
    assert f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{ANSWER_TURN}<|im_end|>\n" in text
    with pytest.raises(TemplateError, match="unknown message role: critic"):
        processor.apply_chat_template([{"role": "critic", "content": "no"}], tokenize=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_templates_ship_and_install(family, tiny_model_dir):
    from transformers import AutoProcessor

    package = files("grounded_rl.templates")
    for name in ("qwen2_5_vl.jinja", "qwen3_vl.jinja", "response.json"):
        assert package.joinpath(name).is_file()
    processor = AutoProcessor.from_pretrained(tiny_model_dir(family))
    assert processor.chat_template == chat_template(family)  # saved with the tiny checkpoint
    assert processor.tokenizer.response_template == response_template(family)
    # Put a stock template back, as a real checkpoint would load with.
    processor.chat_template = processor.tokenizer.chat_template = "{{ messages[0].content }}"
    processor.tokenizer.response_template = None
    install_templates(processor)  # family read from the processor class
    assert processor.chat_template == processor.tokenizer.chat_template == chat_template(family)
    assert processor.tokenizer.response_template == response_template(family)


@pytest.mark.parametrize("family", FAMILIES)
def test_trl_tool_suffix_is_the_tool_turn(family, processors):
    """TRL's tool loop appends tool results as the tokens the template adds after an assistant's <|im_end|>."""
    from trl.data_utils import prepare_multimodal_messages

    processor = processors[family]
    call = {"type": "function", "function": {"name": "zoom", "arguments": {"point": [1, 2]}}}
    history = prepare_multimodal_messages(
        [{"role": "user", "content": "q"}, {"role": "assistant", "content": "", "tool_calls": [call]}]
    )
    crop = Image.new("RGB", (100, 80))
    result = [
        {"role": "tool", "name": "zoom", "content": [{"type": "image", "image": crop}, _text(CROP_NOTE)]}
    ]
    prefix = processor.apply_chat_template(history, tokenize=True, return_dict=False)[0]
    full = processor.apply_chat_template(
        history + result, tokenize=True, return_dict=False, add_generation_prompt=True
    )[0]
    prefix = prefix[
        : len(prefix) - prefix[::-1].index(processor.tokenizer.eos_token_id)
    ]  # cut after <|im_end|>
    assert full[: len(prefix)] == prefix
    suffix = processor.tokenizer.decode(full[len(prefix) :])
    n_pads = suffix.count("<|image_pad|>")
    assert n_pads > 0
    assert suffix == (
        "\n<|im_start|>user\n<tool_response>\n<|vision_start|>" + "<|image_pad|>" * n_pads + "<|vision_end|>"
        f"{CROP_NOTE}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
