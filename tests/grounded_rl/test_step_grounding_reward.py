"""The optional step-grounding reward: the share of a rollout's reasoning and zoom points on a target box, in the
pixel frame, the answer left out; its registry entry and GRPO setting (no torch)."""

from __future__ import annotations

import pickle

import pytest

from grounded_rl.rewards import DEFAULT_WEIGHTS, REWARDS, build_rewards, get_step_grounding_reward
from tests.grounded_rl.test_rewards import OPTION, POINT, score
from trace_forge.errors import ConfigError

reward = get_step_grounding_reward()
CALL = '<think> {text} </think>\n<tool_call>\n{{"name": "zoom", "arguments": {{"point": [{x}, {y}]}}}}\n</tool_call>'


def test_share_of_reasoning_points_on_target_in_the_pixel_frame():
    # POINT: a 1000 x 1000 image seen at 500 x 500; the box [100, 200] in pixels is [50, 100) in the model's frame.
    texts = [
        "<think> The button (75, 75). </think>\n<answer> (75, 75) </answer>",  # pixel 150.5: on
        "<think> The button (75, 75). The menu (25, 25). </think>\n<answer> (75, 75) </answer>",  # one of two
        "<think> The menu (25, 25). </think>\n<answer> (75, 75) </answer>",  # a right answer does not count
        "<think> The edge (49, 75). </think>\n<answer> (75, 75) </answer>",  # pixel 98.5: 1.5 px outside
        "<answer> (75, 75) </answer>",  # no point to judge: nothing grounded
    ]
    assert score(reward, texts, POINT) == [1.0, 0.5, 0.0, 0.0, 0.0]
    assert score(get_step_grounding_reward(margin=2), texts[3:4], POINT) == [1.0]


def test_zoom_points_count_and_questions_without_boxes_do_not_apply():
    dialog = [
        {"role": "assistant", "content": CALL.format(text="The cup (30, 30).", x=30, y=30)},
        {"role": "tool", "content": "crop"},
        {"role": "assistant", "content": CALL.format(text="The table (300, 300).", x=300, y=300)},
        {"role": "tool", "content": "crop"},
        {"role": "assistant", "content": "<think> Red (31, 31). </think>\n<answer> red </answer>"},
    ]
    # reasoning (30, 30) on, zoom (30, 30) on, (300, 300) off twice, (31, 31) on: 3 of 5
    assert score(reward, [dialog], OPTION, "multi") == [pytest.approx(3 / 5)]
    assert score(reward, [dialog], {**OPTION, "target_boxes": []}, "multi") == [None]


def test_registered_off_the_defaults_with_its_margin_and_picklable():
    assert "step_grounding" in REWARDS and all("step_grounding" not in w for w in DEFAULT_WEIGHTS.values())
    funcs, weights = build_rewards({"accuracy": 1.0, "step_grounding": 0.2}, grounding_margin=2)
    assert [f.__name__ for f in funcs] == ["accuracy_reward", "step_grounding_reward"] and weights == [1.0, 0.2]
    edge = "<think> The edge (49, 75). </think>\n<answer> (75, 75) </answer>"
    assert score(funcs[1], [edge], POINT) == [1.0]
    again = pickle.loads(pickle.dumps(funcs[1]))
    assert score(again, [edge], POINT) == [1.0]


def test_grpo_config_carries_the_margin():
    from grounded_rl.grpo import GroundedGRPOConfig

    with pytest.raises(ConfigError, match="grounding_margin=-1"):
        GroundedGRPOConfig(output_dir="unused", model="m", task="vstar", grounding_margin=-1)
