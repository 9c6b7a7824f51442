"""Reward tables: each reward on well-formed and adversarial rollouts, single- and multi-turn (no torch)."""

from __future__ import annotations

import json

import pytest

from grounded_rl.rewards import (
    DEFAULT_WEIGHTS,
    RAW_TEXT,
    accuracy_reward,
    build_rewards,
    format_reward,
    get_zoom_diversity_reward,
    grounding_reward,
)

# A V*-style option question on a 640 x 480 image that the processor resizes to 644 x 476 (model frame).
OPTION = dict(
    task="vstar", answer_kind="option", options=["red", "blue"], answer="red", target_boxes=[[10, 10, 50, 50]],
    image_size=[640, 480], model_size=[644, 476], frame="model",
)
# A ScreenSpot-style point question on a 1000 x 1000 image shown to the model at 500 x 500: target box in pixels.
POINT = dict(
    task="screenspot", answer_kind="point", options=[], answer=None, target_boxes=[[100, 100, 200, 200]],
    image_size=[1000, 1000], model_size=[500, 500], frame="model",
)


def columns(row: dict, n: int, mode: str = "single") -> dict[str, list]:
    """Reward kwargs for ``n`` rollouts of one prompt, as TRL passes dataset columns."""
    return {**{k: [v] * n for k, v in row.items()}, "mode": [mode] * n}


def score(reward, completions: list, row: dict, mode: str = "single") -> list:
    return reward(completions, **columns(row, len(completions), mode))


GOOD = "<think>\nThe cup is on the left (40, 30). Its colour is red (42, 33).\n</think>\n<answer> red </answer>"

# text -> (format, grounding, accuracy) on the option question.
SINGLE_TABLE = [
    (GOOD, 1.0, 1.0, 1.0),
    (GOOD + "<|im_end|>", 1.0, 1.0, 1.0),  # end-of-turn token is not text
    (GOOD.replace("red </answer>", "blue </answer>"), 1.0, 1.0, 0.0),  # well formed, wrong
    (GOOD + " Trust me.", 0.0, 1.0, 1.0),  # text after </answer>
    ("Sure! " + GOOD, 0.0, 1.0, 1.0),  # text before <think>
    ("<think> a (40, 30) <think> b (41, 31) </think> </think><answer> red </answer>", 0.0, 1.0, 1.0),  # nested
    (GOOD + "\n<answer> blue </answer>", 0.0, 1.0, 1.0),  # duplicated answer: the first one is read
    ("<think> (40, 30) </think><think> (50, 30) </think><answer> red </answer>", 0.0, 1.0, 1.0),  # two thinks
    ("<think> The cup (40.5, 30). </think>\n<answer> red </answer>", 0.0, 0.0, 1.0),  # float point
    ("<think> The cup (-4, 30). </think>\n<answer> red </answer>", 0.0, 0.0, 1.0),  # negative point
    ("<think> The cup (700, 30). </think>\n<answer> red </answer>", 1.0, 0.0, 1.0),  # outside the 644-wide image
    ("<think> The cup (643, 475). </think>\n<answer> red </answer>", 1.0, 1.0, 1.0),  # last pixel is inside
    ("<think> The cup is red. </think>\n<answer> red </answer>", 0.0, None, 1.0),  # no point at all
    ("<think> The cup (40, 30). <answer> red </answer> </think>", 0.0, 1.0, 1.0),  # answer inside think
    ("<think> The cup (40, 30). </think>", 0.0, 1.0, 0.0),  # no answer
    ("<think> The cup (40, 30). </think>\n<answer>  </answer>", 0.0, 1.0, 0.0),  # empty answer
    ("<think> The cup (40, 30). </think>\n<answer> not red </answer>", 1.0, 1.0, 0.0),  # no substring credit
    ("<think> The cup (40, 30). </think>\n<answer> (A) red </answer>", 1.0, 1.0, 1.0),  # letter + option text
    ('<think> (40, 30) </think><tool_call>{"name": "zoom", "arguments": {"point": [1, 2]}}</tool_call>'
     "<answer> red </answer>", 0.0, 1.0, 1.0),  # a tool call in a single-turn answer
]


@pytest.mark.parametrize(("text", "fmt", "grounded", "acc"), SINGLE_TABLE)
def test_single_turn_table(text: str, fmt: float, grounded: float | None, acc: float) -> None:
    for completion in (text, [{"role": "assistant", "content": text}]):  # plain and conversational rollouts
        assert score(format_reward, [completion], OPTION) == [fmt]
        assert score(grounding_reward, [completion], OPTION) == [grounded]
        assert score(accuracy_reward, [completion], OPTION) == [acc]


# Point answers are in the model frame (500 x 500), the box in pixels (1000 x 1000): (75, 75) -> (151, 151) px.
POINT_TABLE = [
    ("<think> The button (75, 75). </think><answer> (75, 75) </answer>", 1.0, 1.0, 1.0),
    ("<think> The button (75, 75). </think><answer> [75, 75] </answer>", 1.0, 1.0, 1.0),
    ("<think> The button (150, 150). </think><answer> (150, 150) </answer>", 1.0, 1.0, 0.0),  # pixel-frame answer
    ("<think> The button (75, 75). </think><answer> (75.5, 75) </answer>", 0.0, 0.0, 1.0),  # float answer
    ("<think> The button (75, 75). </think><answer> (600, 75) </answer>", 1.0, 0.0, 0.0),  # answer off the image
    ("<think> The button (75, 75). </think><answer> the blue button </answer>", 0.0, 1.0, 0.0),  # not a point
]


@pytest.mark.parametrize(("text", "fmt", "grounded", "acc"), POINT_TABLE)
def test_point_answers_in_the_model_frame(text: str, fmt: float, grounded: float, acc: float) -> None:
    assert score(format_reward, [text], POINT) == [fmt]
    assert score(grounding_reward, [text], POINT) == [grounded]
    assert score(accuracy_reward, [text], POINT) == [acc]


def test_norm1000_frame_converts_answers_through_the_grid() -> None:
    row = {**POINT, "frame": "norm1000"}
    inside, outside = "<answer> (150, 150) </answer>", "<answer> (300, 300) </answer>"  # 0-1000 grid
    assert score(accuracy_reward, [inside, outside], row) == [1.0, 0.0]
    assert score(grounding_reward, ["<think> (1000, 1000) </think>", "<think> (1001, 5) </think>"], row) == [1.0, 0.0]


# ---------------------------------------------------------------------------------------------------------------
# Multi-turn dialogs (TRL messages: assistant, tool, assistant, ...)
# ---------------------------------------------------------------------------------------------------------------


def zoom_turn(x: int, y: int, extra: dict | None = None, inline: bool = False) -> dict:
    """An assistant zoom turn as GroundedGRPOTrainer hands it over (TRL's parse plus the text as generated), or
    plain inline text."""
    call = {"name": "zoom", "arguments": {"point": [x, y]}, **(extra or {})}
    think = f"<think> Something small near ({x}, {y}). </think>"
    raw = f"{think}\n<tool_call>\n{json.dumps(call)}\n</tool_call><|im_end|>"
    if inline:
        return {"role": "assistant", "content": raw}
    return parsed_turn(raw, think, call)


def parsed_turn(raw: str, content: str, call: dict) -> dict:
    """What TRL's response parser returns for ``raw`` (``content`` and the call), with the raw text kept."""
    return {"role": "assistant", "content": content, "tool_calls": [{"type": "function", "function": call}],
            RAW_TEXT: raw}


def observation() -> dict:
    return {"role": "tool", "name": "zoom", "content": [{"type": "image"}, {"type": "text", "text": "crop"}]}


def answer_turn(answer: str = "red") -> dict:
    return {"role": "assistant", "content": f"<think> Seen it. </think>\n<answer> {answer} </answer>"}


def dialog(*points: tuple[int, int], answer: str | None = "red") -> list[dict]:
    messages = [m for p in points for m in (zoom_turn(*p), observation())]
    return messages + [answer_turn(answer)] if answer is not None else messages[:-1]


diversity = get_zoom_diversity_reward()

# dialog -> (format, accuracy, diversity with the default "paid only when correct")
MULTI_TABLE = [
    ([answer_turn()], 1.0, 1.0, 0.0),  # answers at once: well formed, no zoom bonus
    (dialog((40, 30)), 1.0, 1.0, 0.2),
    (dialog((40, 30), (200, 100)), 1.0, 1.0, 0.4),
    (dialog((40, 30), (45, 33)), 1.0, 1.0, 0.2),  # second zoom within 10 px: no bonus
    (dialog((40, 30), (200, 100), answer="blue"), 1.0, 0.0, 0.0),  # wrong: diversity unpaid
    ([zoom_turn(40, 30, inline=True), observation(), answer_turn()], 1.0, 1.0, 0.2),  # call left inline
    (dialog((40, 30), (200, 100), answer=None), 0.0, 0.0, 0.0),  # stopped at the turn limit: no answer
    ([zoom_turn(40, 30, {"reason": "look"}), observation(), answer_turn()], 0.0, 1.0, 0.0),  # extra key: malformed
    ([zoom_turn(40, 30), observation(), zoom_turn(40, 30), observation(), answer_turn()], 1.0, 1.0, 0.2),
    ([answer_turn(), observation(), answer_turn()], 0.0, 1.0, 0.0),  # answered, then went on
    ([zoom_turn(40, 30), answer_turn()], 0.0, 0.0, 0.0),  # roles out of order: not a dialog
    ([{"role": "assistant", "content": "<think> (40, 30) </think><answer> red </answer> ok"}], 0.0, 1.0, 0.0),
    (dialog((700, 30)), 1.0, 1.0, 0.0),  # zoom off the image: grammar fine, no bonus
]


@pytest.mark.parametrize(("messages", "fmt", "acc", "div"), MULTI_TABLE)
def test_multi_turn_table(messages: list[dict], fmt: float, acc: float, div: float) -> None:
    assert score(format_reward, [messages], OPTION, "multi") == [fmt]
    assert score(accuracy_reward, [messages], OPTION, "multi") == [acc]
    assert score(diversity, [messages], OPTION, "multi") == [pytest.approx(div)]


CALL = {"name": "zoom", "arguments": {"point": [40, 30]}}
CALL_TEXT = f"<tool_call>\n{json.dumps(CALL)}\n</tool_call>"


@pytest.mark.parametrize(
    ("raw", "content"),
    [
        # TRL keeps the text after the call and drops the prose before it: the parse looks well formed.
        (f"blah blah {CALL_TEXT}\n<think> a (10, 20) </think>", "<think> a (10, 20) </think>"),
        # Call first, then think: the parse puts them back in the right order.
        (f"{CALL_TEXT}\n<think> a (10, 20) </think>", "<think> a (10, 20) </think>"),
        # Two think blocks around the call: only the second survives the parse.
        (f"<think> A </think>\n{CALL_TEXT}\n<think> B </think>", "<think> B </think>"),
    ],
)
def test_format_is_judged_on_the_turn_as_generated(raw: str, content: str) -> None:
    messages = [parsed_turn(raw, content, CALL), observation(), answer_turn()]
    assert score(format_reward, [messages], OPTION, "multi") == [0.0]
    rebuilt = [parsed_turn(f"{content}\n{CALL_TEXT}", content, CALL), observation(), answer_turn()]
    assert score(format_reward, [rebuilt], OPTION, "multi") == [1.0]  # the same parse, well formed as generated


def test_a_parsed_tool_call_without_its_raw_text_is_refused() -> None:
    turn = {k: v for k, v in zoom_turn(40, 30).items() if k != RAW_TEXT}
    with pytest.raises(ValueError, match="raw_text"):
        score(format_reward, [[turn, observation(), answer_turn()]], OPTION, "multi")


def test_zoom_distance_is_measured_in_pixels_of_the_original_image() -> None:
    """10 px in the image: on a 2000 px wide image, 6 units of Qwen3-VL's 0-1000 grid are 12 px, 4 units 8 px."""
    row = {**OPTION, "image_size": [2000, 2000], "model_size": [1000, 1000], "frame": "norm1000"}
    assert score(diversity, [dialog((100, 100), (106, 100))], row, "multi") == [pytest.approx(0.4)]
    assert score(diversity, [dialog((100, 100), (104, 100))], row, "multi") == [pytest.approx(0.2)]


def test_zoom_spam_is_capped_and_unpaid_when_wrong() -> None:
    spread = [(40 + 60 * i, 30 + 40 * i) for i in range(8)]  # 8 zooms, all far apart
    assert score(diversity, [dialog(*spread)], OPTION, "multi") == [pytest.approx(0.8)]  # 4 x 0.2, no more
    assert score(diversity, [dialog(*spread, answer="blue")], OPTION, "multi") == [0.0]
    unconditional = get_zoom_diversity_reward(requires_correct=False)
    assert score(unconditional, [dialog(*spread, answer="blue")], OPTION, "multi") == [pytest.approx(0.8)]
    assert score(unconditional, [dialog(*spread, answer=None)], OPTION, "multi") == [0.0]  # never for no answer


def test_grounding_checks_every_point_of_a_dialog() -> None:
    bad_zoom = dialog((40, 30), (900, 30))
    assert score(grounding_reward, [dialog((40, 30)), bad_zoom], OPTION, "multi") == [1.0, 0.0]
    assert score(diversity, [dialog((40, 30))], OPTION, "single") == [None]  # not a multi-turn rollout


def test_rewards_are_per_rollout_within_a_batch() -> None:
    texts = [GOOD, "nonsense", GOOD.replace("red </answer>", "blue </answer>")]
    assert score(format_reward, texts, OPTION) == [1.0, 0.0, 1.0]
    assert score(accuracy_reward, texts, OPTION) == [1.0, 0.0, 0.0]


def test_missing_columns_are_named() -> None:
    with pytest.raises(KeyError, match="model_size"):
        format_reward([GOOD], task=["vstar"], image_size=[[640, 480]], frame=["model"])


def test_registry_builds_weighted_components() -> None:
    funcs, weights = build_rewards(DEFAULT_WEIGHTS["multi"], diversity_requires_correct=False)
    names = [f.__name__ for f in funcs]
    assert names == ["format_reward", "zoom_diversity_reward", "accuracy_reward", "grounding_reward"]
    assert weights == [0.4, 0.4, 0.6, 0.0]
    # The flag reaches the diversity reward: a wrong answer with one zoom is paid.
    assert funcs[1]([dialog((40, 30), answer="blue")], **columns(OPTION, 1, "multi")) == [pytest.approx(0.2)]
    assert DEFAULT_WEIGHTS["single"] == {"format": 0.5, "accuracy": 0.5, "grounding": 0.0}
    with pytest.raises(KeyError, match="unknown rewards"):
        build_rewards({"style": 1.0})
