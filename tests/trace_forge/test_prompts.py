import hashlib
import json
import re

import pytest

from trace_forge.grounding.format import render_zoom_turn
from trace_forge.tasks import prompts
from trace_forge.tasks.prompts import (
    NORM1000_HINT,
    PROMPT_VERSION,
    TEMPLATES,
    TEMPLATES_SHA256,
    PromptSet,
    prompts_for,
)
from trace_forge.tasks.sample import AnswerKind, Sample

# Every released prompt version and the hash of its wording. Changing any wording changes the hash: bump
# PROMPT_VERSION, update TEMPLATES_SHA256 and add a line here. Editing the hash of a released version is the bug
# this table exists to catch.
RELEASED = {
    "1": "bbf0eeed7e3d80afbfd702021719d9f6bcd4f87420fb539f619e62bb480ec4e5",
    "2": "7c44b01b8b707cd9a0cad8f13437b9243c32fd7cf976fb83ea9be8dbdf9120f2",  # multi-line tool call example; student force-answer and closing-thought wording
}


def _sample(kind: AnswerKind, options: list[str] | None = None) -> Sample:
    return Sample("s1", "t", [], "  Which mug is closer to the camera?  ", kind, options=options or [])


def test_templates_hash_is_pinned_to_the_version():
    recomputed = hashlib.sha256(json.dumps(dict(TEMPLATES), sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert recomputed == TEMPLATES_SHA256 == prompts.templates_sha256()
    assert RELEASED.get(PROMPT_VERSION) == TEMPLATES_SHA256


def test_hash_sees_a_one_character_change():
    changed = dict(TEMPLATES, teacher_force_answer=TEMPLATES["teacher_force_answer"] + " ")
    assert prompts.templates_sha256(changed) != TEMPLATES_SHA256


def test_templates_use_real_newlines_and_fill_every_placeholder():
    for name, text in TEMPLATES.items():
        assert "\\n" not in text, name
    ps = prompts_for(AnswerKind.OPTION)
    rendered = [
        ps.teacher_system(),
        ps.teacher_system(NORM1000_HINT, min_steps=4),
        ps.student_system(False),
        ps.student_system(True, NORM1000_HINT),
        ps.zoom_observation((1, 2), dot=True),
        ps.teacher_user(_sample(AnswerKind.OPTION, ["a", "b"]), ["x"]),
    ]
    for text in rendered:
        assert "$" not in text
        assert "\\n" not in text


def test_question_text_lists_options_with_letters_then_the_format():
    text = prompts_for(AnswerKind.OPTION).question_text(_sample(AnswerKind.OPTION, ["left mug", "right mug", "same"]))
    assert text.splitlines() == [
        "Which mug is closer to the camera?",
        "(A) left mug",
        "(B) right mug",
        "(C) same",
        "Answer with the exact text of the chosen option, without its letter.",
    ]


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        (AnswerKind.OPTION, "exact text of the chosen option"),
        (AnswerKind.POINT, "integer coordinates (x, y)"),
        (AnswerKind.TEXT, "short phrase"),
    ],
)
def test_answer_format_by_kind(kind, needle):
    ps = prompts_for(kind)
    assert ps.kind is kind and prompts_for(kind.value) is ps
    options = ["near", "far"] if kind is AnswerKind.OPTION else []
    question = ps.question_text(_sample(kind, options))
    assert question.endswith(ps.answer_format) and needle in ps.answer_format
    assert ("(A) near" in question) == bool(options)
    assert sum(p.answer_format == ps.answer_format for p in map(prompts_for, AnswerKind)) == 1


def test_question_text_rejects_mismatched_samples():
    with pytest.raises(ValueError, match="s1"):
        prompts_for(AnswerKind.POINT).question_text(_sample(AnswerKind.OPTION, ["a"]))
    with pytest.raises(ValueError, match="no options"):
        prompts_for(AnswerKind.OPTION).question_text(_sample(AnswerKind.OPTION))
    with pytest.raises(ValueError, match="letters"):
        prompts_for(AnswerKind.OPTION).question_text(_sample(AnswerKind.OPTION, [str(i) for i in range(27)]))


def test_teacher_system_asks_for_one_grounded_step_or_the_answer():
    text = prompts_for(AnswerKind.OPTION).teacher_system()
    for needle in ("ONLY ONE reasoning step", "<think> ... </think>", "<answer> ... </answer>", "(x, y)",
                   "exactly one specific point", "integer pixel coordinates of the image as shown",
                   "Never repeat coordinates", "different regions", "verify"):
        assert needle in text, needle
    assert "at least" not in text
    assert prompts_for(AnswerKind.OPTION).teacher_system(min_steps=5).endswith(
        "Write at least 5 reasoning steps before giving the final answer."
    )


def test_coordinate_hint_replaces_the_pixel_wording():
    ps = prompts_for(AnswerKind.POINT)
    for text in (ps.teacher_system(NORM1000_HINT), ps.student_system(True, NORM1000_HINT),
                 ps.student_system(False, NORM1000_HINT)):
        assert "0-1000 grid" in text and "pixel" not in text
    assert "0-1000" not in ps.student_system(False)


def test_teacher_user_appends_steps_after_a_stable_prefix():
    ps = prompts_for(AnswerKind.OPTION)
    sample = _sample(AnswerKind.OPTION, ["left mug", "right mug"])
    root = ps.teacher_user(sample, [])
    assert root == ps.question_text(sample)
    deeper = ps.teacher_user(sample, [" The left mug at (40, 80) is large. ", "The right mug at (300, 90)."])
    assert deeper.startswith(root)
    assert deeper[len(root):] == (
        "\n\nPrevious step 1: The left mug at (40, 80) is large.\n\nPrevious step 2: The right mug at (300, 90)."
    )


def test_student_system_single_and_multi_turn():
    ps = prompts_for(AnswerKind.OPTION)
    single = ps.student_system(multi_turn=False)
    assert "<think>" in single and "<answer>" in single and "(x, y)" in single and "tool_call" not in single
    multi = ps.student_system(multi_turn=True)
    call = re.search(r"<tool_call>(.*)</tool_call>", multi, re.DOTALL)
    assert call is not None
    assert json.loads(call.group(1).replace("[x, y]", "[1, 2]")) == {"name": "zoom", "arguments": {"point": [1, 2]}}
    # The example is written exactly as training data writes a zoom turn's call.
    rendered = render_zoom_turn("t", (1, 2))
    assert call.group(0).replace("[x, y]", "[1, 2]") == rendered[rendered.index("<tool_call>"):]
    assert "exactly one <think>" in multi and "centred" in multi and "different" in multi


def test_zoom_observation_and_forced_answer():
    ps = prompts_for(AnswerKind.TEXT)
    plain, dotted = ps.zoom_observation((12, 34), dot=False), ps.zoom_observation((12, 34), dot=True)
    assert "(12, 34)" in plain and "red dot" not in plain
    assert "(12, 34)" in dotted and "red dot" in dotted
    prefix = ps.forced_answer_prefix()
    assert prefix.startswith("<think>") and prefix.endswith("<answer>") and "</think>" in prefix
    assert "<answer>" in ps.teacher_force_answer()
    assert "<answer>" in ps.student_force_answer() and ps.closing_thought()


def test_prompt_sets_are_frozen():
    with pytest.raises(AttributeError):
        prompts_for(AnswerKind.TEXT).answer_format = "x"  # type: ignore[misc]
    assert isinstance(prompts_for(AnswerKind.TEXT), PromptSet)
