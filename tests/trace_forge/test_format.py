import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trace_forge.grounding import (
    DEFAULT_CONNECTOR,
    ZOOM_TOOL_NAME,
    ZOOM_TOOL_SPEC,
    Frame,
    ImageGeometry,
    Point,
    ProblemCode,
    Resize,
    Step,
    Trajectory,
    parse_response,
    render_answer,
    render_answer_turn,
    render_backtracking,
    render_single_turn,
    render_step,
    render_zoom_turn,
)
from trace_forge.grounding import format as fmt

C = ProblemCode
GEO = ImageGeometry(width=640, height=480, model_width=644, model_height=476)


def codes(parsed):
    return {p.code for p in parsed.problems}


# --- Step literals ------------------------------------------------------------------------------------------


def test_step_render_appends_literal_only_when_missing():
    assert Step("The mug", Point(411.6, 230.4)).render() == "The mug (412, 230)"
    inline = "At (412, 230) there is a mug."
    assert Step(inline, Point(412, 230)).render() == inline
    # Tolerant of spacing in the existing literal, but a different point's literal does not count.
    assert Step("Mug (412,230).", Point(412, 230)).render() == "Mug (412,230)."
    assert Step("Mug (41, 230).", Point(412, 230)).render() == "Mug (41, 230). (412, 230)"


def test_step_to_rewrites_literal_and_round_trips():
    g = Resize(max_pixels=1_003_520).geometry(3840, 2160)
    step = Step("The sign (1920, 1080) reads EXIT; the sign (1920, 1080) is red.", Point(1920, 1080))
    moved = step.to(Frame.MODEL, g)
    x, y = moved.point.rounded()
    assert (x, y) != (1920, 1080)
    assert moved.text == f"The sign ({x}, {y}) reads EXIT; the sign ({x}, {y}) is red."
    assert moved.to(Frame.PIXEL, g).text == step.text
    assert step.to(Frame.PIXEL, g) is step


def test_trajectory_to_keeps_texts_consistent():
    g = Resize().geometry(1000, 500)
    traj = Trajectory((Step("A cat (100, 50).", Point(100, 50)), Step("A dog", Point(900, 400))), Point(5, 5))
    out = traj.to(Frame.NORM1000, g)
    for s in out.steps:
        assert fmt.format_point(s.point) in s.render()
    assert fmt.format_point(out.steps[0].point) in out.steps[0].text
    assert out.steps[1].text == "A dog"  # no literal to rewrite; render() adds the new one
    assert out.answer == Point(5, 5).to(Frame.NORM1000, g)


# --- rendering ----------------------------------------------------------------------------------------------


def test_render_forms_are_exact():
    traj = Trajectory((Step("The mug (412, 230).", Point(412, 230)), Step("The cup", Point(10, 20))), "B")
    assert render_single_turn(traj) == (
        "<think>\nThe mug (412, 230). The cup (10, 20)\n</think>\n<answer> B </answer>"
    )
    assert render_answer(Point(3.4, 5.6)) == "<answer> (3, 6) </answer>"
    assert render_step(Step("The cup", Point(10, 20))) == "<think> The cup (10, 20) </think>"
    assert render_zoom_turn("Look (7, 8).", Point(7.2, 7.9)) == (
        '<think> Look (7, 8). </think>\n<tool_call>\n{"name": "zoom", "arguments": {"point": [7, 8]}}\n'
        "</tool_call>"
    )
    assert render_answer_turn("Done.", "red") == "<think> Done. </think>\n<answer> red </answer>"
    with pytest.raises(ValueError):
        render_single_turn(Trajectory(traj.steps))


def test_zoom_tool_spec_matches_rendered_call():
    fn = ZOOM_TOOL_SPEC["function"]
    assert ZOOM_TOOL_SPEC["type"] == "function" and fn["name"] == ZOOM_TOOL_NAME
    point = fn["parameters"]["properties"]["point"]
    assert (point["type"], point["items"]["type"], point["minItems"], point["maxItems"]) == (
        "array",
        "integer",
        2,
        2,
    )
    call = json.loads(render_zoom_turn("x", (1, 2)).split("<tool_call>\n")[1].split("\n</tool_call>")[0])
    assert set(call["arguments"]) == set(fn["parameters"]["required"])
    json.dumps(ZOOM_TOOL_SPEC)  # chat templates need it serializable


# --- round trips --------------------------------------------------------------------------------------------


def test_single_turn_round_trip():
    steps = (
        Step("The red mug sits on the left shelf (412, 230).", Point(412, 230)),
        Step("At (100, 20) there is a blue cup.", Point(100, 20)),
        Step("The lamp, unlit", Point(600, 50)),
    )
    parsed = parse_response(render_single_turn(Trajectory(steps, "A")), geometry=GEO)
    assert parsed.ok, parsed.problems
    assert [s.text for s in parsed.steps] == [s.render() for s in steps]
    assert [s.point for s in parsed.steps] == [s.point for s in steps]
    assert parsed.points == [s.point for s in steps]
    assert parsed.answer == "A" and parsed.answer_point is None


def test_single_turn_point_answer_round_trip_in_model_frame():
    traj = Trajectory((Step("The button (30, 40).", Point(30, 40, Frame.MODEL)),), Point(31, 41, Frame.MODEL))
    parsed = parse_response(render_single_turn(traj), geometry=GEO, frame="model")
    assert parsed.ok
    assert parsed.answer == "(31, 41)" and parsed.answer_point == Point(31, 41, Frame.MODEL)
    assert parsed.steps[0].point.frame is Frame.MODEL


def test_backtracking_round_trip():
    wrong = Trajectory((Step("Maybe the door (10, 10).", Point(10, 10)), Step("No sign here (20, 20).", Point(20, 20))), "A")
    right = Trajectory((Step("The window (300, 200).", Point(300, 200)),), "C")
    parsed = parse_response(render_backtracking(wrong, right), geometry=GEO)
    assert parsed.ok, parsed.problems
    assert parsed.answer == "C"
    assert [s.point.rounded() for s in parsed.steps] == [(10, 10), (20, 20), (300, 200)]
    # The connector opens the first step of the right path.
    assert parsed.steps[2].text == f"{DEFAULT_CONNECTOR} The window (300, 200)."
    assert DEFAULT_CONNECTOR in parsed.think[0]


def test_teacher_step_and_answer_round_trip():
    parsed = parse_response(render_step(Step("The mug", Point(5, 6))), expect="step")
    assert parsed.ok and parsed.steps == [Step("The mug (5, 6)", Point(5, 6))] and parsed.answer is None
    parsed = parse_response(render_answer("left"), expect="step")
    assert parsed.ok and parsed.answer == "left" and parsed.think == []


def test_zoom_and_answer_turn_round_trip():
    parsed = parse_response(render_zoom_turn("The tiny sign (40, 12).", (40, 12)), expect="turn", geometry=GEO)
    assert parsed.ok, parsed.problems  # zooming on the point just named is not a repeat
    (call,) = parsed.tool_calls
    assert (call.name, call.arguments, call.point) == ("zoom", {"point": [40, 12]}, Point(40, 12))
    assert parsed.points == [Point(40, 12), Point(40, 12)] and parsed.answer is None
    parsed = parse_response(render_answer_turn("It reads EXIT.", "EXIT") + "<|im_end|>", expect="turn")
    assert parsed.ok and parsed.answer == "EXIT" and parsed.tool_calls == []


# --- tricky outputs -----------------------------------------------------------------------------------------

OK_THINK = "<think>The mug (10, 20).</think>"
ZOOM = '{"name": "zoom", "arguments": {"point": [5, 6]}}'

TRICKY = [
    ("text after answer", OK_THINK + "<answer>B</answer> because reasons", "single", {C.TEXT_AFTER_ANSWER}),
    ("text before think", "Sure! " + OK_THINK + "<answer>B</answer>", "single", {C.TEXT_OUTSIDE_TAGS}),
    ("nested think", "<think>a (1, 2) <think>b</think></think><answer>B</answer>", "single", {C.NESTED_TAG}),
    (
        "duplicated think",
        OK_THINK + "<think>again (3, 4)</think><answer>B</answer>",
        "single",
        {C.DUPLICATE_TAG},
    ),
    ("duplicated answer", OK_THINK + "<answer>B</answer><answer>C</answer>", "single", {C.DUPLICATE_TAG}),
    ("unclosed answer", OK_THINK + "<answer>B", "single", {C.UNCLOSED_TAG}),
    ("unclosed think", "<think>The mug (10, 20).", "single", {C.UNCLOSED_TAG, C.MISSING_ANSWER}),
    ("prefilled think", "The mug (10, 20).</think><answer>B</answer>", "single", {C.UNOPENED_TAG}),
    ("answer first", "<answer>B</answer>" + OK_THINK, "single", {C.MISORDERED_TAGS}),
    ("missing think", "<answer>B</answer>", "single", {C.MISSING_THINK}),
    ("missing answer", OK_THINK, "single", {C.MISSING_ANSWER}),
    ("empty answer", OK_THINK + "<answer>  </answer>", "single", {C.MISSING_ANSWER}),
    ("no point", "<think>I see a mug.</think><answer>B</answer>", "single", {C.NO_POINT}),
    ("float point", "<think>The mug (12.5, 30).</think><answer>B</answer>", "single", {C.FLOAT_COORDINATE}),
    ("negative point", "<think>The mug (-3, 30).</think><answer>B</answer>", "single", {
        C.NEGATIVE_COORDINATE,
        C.POINT_OUTSIDE_IMAGE,  # with a geometry, a negative point is also off the image
    }),
    ("outside image", "<think>The mug (640, 30).</think><answer>B</answer>", "single", {C.POINT_OUTSIDE_IMAGE}),
    ("answer outside", OK_THINK + "<answer>(10, 480)</answer>", "single", {C.POINT_OUTSIDE_IMAGE}),
    ("float answer", OK_THINK + "<answer>[10.0, 4]</answer>", "single", {C.FLOAT_COORDINATE}),
    (
        "repeated point",
        "<think>The mug (10, 20). Again the mug (10,20).</think><answer>B</answer>",
        "single",
        {C.REPEATED_POINT},
    ),
    ("answer in think", "<think>The mug (10, 20). <answer>B</answer></think>", "single", {C.ANSWER_IN_THINK}),
    ("uppercase tags", "<THINK>The mug (10, 20).</THINK><answer>B</answer>", "single", {
        C.MISSING_THINK,
        C.TEXT_OUTSIDE_TAGS,
    }),
    ("spaced tags", "< think >The mug (10, 20).</ think >\n< answer >B</answer >", "single", set()),
    ("tool call in single", OK_THINK + f"<tool_call>{ZOOM}</tool_call><answer>B</answer>", "single", {
        C.UNEXPECTED_TAG
    }),
    ("step with two points", "<think>The mug (10, 20) and cup (30, 40).</think>", "step", {C.MULTIPLE_POINTS}),
    ("step without point", "<think>Hmm.</think>", "step", {C.NO_POINT}),
    ("step empty", "nothing", "step", {C.MISSING_THINK, C.TEXT_OUTSIDE_TAGS}),
    ("step think then answer", "<think>So (1, 2) and (3, 4).</think> <answer>B</answer>", "step", set()),
    ("turn extra keys", OK_THINK + '<tool_call>{"name": "zoom", "arguments": {"point": [5, 6], "zoom": 2}}'
     "</tool_call>", "turn", {C.BAD_TOOL_ARGUMENTS}),
    ("turn float tool point", OK_THINK + '<tool_call>{"name": "zoom", "arguments": {"point": [5.5, 6]}}'
     "</tool_call>", "turn", {C.BAD_TOOL_ARGUMENTS}),
    ("turn short tool point", OK_THINK + '<tool_call>{"name": "zoom", "arguments": {"point": [5]}}'
     "</tool_call>", "turn", {C.BAD_TOOL_ARGUMENTS}),
    ("turn missing arguments", OK_THINK + '<tool_call>{"name": "zoom"}</tool_call>', "turn", {
        C.BAD_TOOL_ARGUMENTS
    }),
    ("turn malformed json", OK_THINK + '<tool_call>{"name": "zoom", "arguments": {</tool_call>', "turn", {
        C.MALFORMED_TOOL_CALL
    }),
    ("turn unknown tool", OK_THINK + '<tool_call>{"name": "crop", "arguments": {"point": [5, 6]}}</tool_call>',
     "turn", {C.UNKNOWN_TOOL}),
    ("turn tool point outside", OK_THINK + '<tool_call>{"name": "zoom", "arguments": {"point": [5, 900]}}'
     "</tool_call>", "turn", {C.POINT_OUTSIDE_IMAGE}),
    ("turn deep json", OK_THINK + "<tool_call>" + "[" * 5000 + "</tool_call>", "turn", {C.MALFORMED_TOOL_CALL}),
    ("turn not an object", OK_THINK + "<tool_call>[1, 2]</tool_call>", "turn", {C.MALFORMED_TOOL_CALL}),
    ("turn huge tool point", OK_THINK + '<tool_call>{"name": "zoom", "arguments": {"point": [1' + "0" * 40
     + ", 6]}}</tool_call>", "turn", {C.BAD_TOOL_ARGUMENTS}),
    ("turn negative tool point", OK_THINK + '<tool_call>{"name": "zoom", "arguments": {"point": [-5, 6]}}'
     "</tool_call>", "turn", {C.NEGATIVE_COORDINATE, C.POINT_OUTSIDE_IMAGE}),
    ("turn both", OK_THINK + f"<tool_call>{ZOOM}</tool_call><answer>B</answer>", "turn", {
        C.TOOL_CALL_AND_ANSWER
    }),
    ("turn two calls", OK_THINK + f"<tool_call>{ZOOM}</tool_call><tool_call>{ZOOM}</tool_call>", "turn", {
        C.DUPLICATE_TAG,
        C.REPEATED_POINT,
    }),
    ("turn neither", OK_THINK, "turn", {C.MISSING_ANSWER}),
    ("turn call before think", f"<tool_call>{ZOOM}</tool_call>" + OK_THINK, "turn", {C.MISORDERED_TAGS}),
]


@pytest.mark.parametrize(("text", "expect", "expected"), [t[1:] for t in TRICKY], ids=[t[0] for t in TRICKY])
def test_tricky_outputs(text, expect, expected):
    parsed = parse_response(text, geometry=GEO, expect=expect)
    assert codes(parsed) == expected, parsed.problems
    assert parsed.ok is (not expected)
    assert all(parsed.has(c) for c in expected)


def test_lenient_extraction_alongside_problems():
    parsed = parse_response("The mug (12.5, 30).</think>\n<answer>B")
    assert parsed.has("unopened_tag") and parsed.has(C.UNCLOSED_TAG) and parsed.has(C.FLOAT_COORDINATE)
    assert parsed.think == ["The mug (12.5, 30)."] and parsed.answer == "B"
    assert parsed.steps[0].point == Point(12.5, 30.0)
    parsed = parse_response(OK_THINK + '<tool_call>{"name": "crop", "arguments": {"box": [1]}}</tool_call>',
                            expect="turn")
    assert parsed.tool_calls[0].name == "crop" and parsed.tool_calls[0].point is None


def test_steps_take_the_sentence_around_each_literal():
    think = "First a look. The mug (1, 2) is red, and (3, 4), (5, 6) too. Then (7, 8) and (9, 9) Done."
    parsed = parse_response(f"<think>{think}</think><answer>B</answer>")
    assert [s.text for s in parsed.steps] == [
        "First a look. The mug (1, 2) is red,",
        "and (3, 4),",
        "(5, 6) too.",
        "Then (7, 8)",
        "and (9, 9) Done.",
    ]
    assert [s.point.rounded() for s in parsed.steps] == [(1, 2), (3, 4), (5, 6), (7, 8), (9, 9)]


def test_pathological_inputs_parse_in_linear_time():
    # Each of these took seconds to minutes with a quadratic scan. Timed against a benign text of the same length
    # parsed on the same machine in the same run, so the bound holds on a slow or busy machine: linear parsing
    # stays within a small factor of it, a quadratic scan is thousands of times slower at this length.
    n = 100_000
    texts = [
        "<think>" * (n // 7),
        "</answer>" * (n // 9),
        "<think>(1, 2)" + "." * n + "(3, 4)</think>",
        " " * n + "x",
        "<answer>x</answer>" + "<|im_end|> " * (n // 11),
    ]
    benign = "<think>" + "The mug on the left shelf (120, 340). " * (n // 38) + "</think>"

    def seconds(text: str) -> float:
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            parse_response(text, expect="turn")
            best = min(best, time.perf_counter() - start)
        return best

    for text in texts:
        assert not parse_response(text, expect="turn").ok
    baseline = max(seconds(benign), 1e-3)
    for text in texts:
        assert seconds(text) < 50 * baseline, text[:40]


def test_an_answer_point_is_read_leniently_but_whole():
    def point(answer: str, frame: Frame = Frame.PIXEL) -> Point | None:
        return parse_response(f"<think> (1, 1) </think><answer> {answer} </answer>", frame=frame).answer_point

    assert point("(3, 4)") == Point(3, 4)
    assert point(" [3,4] ") == Point(3, 4)
    assert point("3, 4.") == Point(3, 4)
    assert point("(-1.5, 2)", Frame.NORM1000) == Point(-1.5, 2, Frame.NORM1000)
    for bad in ("3 4", "(3, 4) and (5, 6)", "point (3, 4)", ""):
        assert point(bad) is None

def test_bad_expect_is_a_programming_error():
    with pytest.raises(ValueError):
        parse_response("x", expect="multi")  # type: ignore[arg-type]


# --- fuzzing ------------------------------------------------------------------------------------------------

FRAGMENTS = [
    "<think>", "</think>", "<answer>", "</answer>", "<tool_call>", "</tool_call>", "< think >", "</ answer>",
    "(1, 2)", "(12.5, -3)", "(-0, 0)", "[4, 5]", "(" + "9" * 30 + ", 1)", "(1.5e3, 2)", ".", " ", "\n", "text",
    ZOOM, '{"name": "zoom", "arguments": {"point": [1e400, 2]}}', '{"name": "zoom", "arguments": 3}',
    '{"name": "zoom", "arguments": {"point": [' + "9" * 5000 + ", 1]}}", "[" * 3000, "{", "<|im_end|>",
    "\\u0000", "١٢",
]


def _check_invariants(parsed, frame):
    assert parsed.ok is (not parsed.problems)
    assert all(p.frame is frame for p in parsed.points)
    assert all(isinstance(p.code, ProblemCode) for p in parsed.problems)
    for s in parsed.steps:
        s.render()


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.text(), st.sampled_from(["single", "step", "turn"]))
def test_fuzz_arbitrary_text_never_raises(text, expect):
    _check_invariants(parse_response(text, geometry=GEO, expect=expect), Frame.PIXEL)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=5), max_size=25),
    st.sampled_from(["single", "step", "turn"]),
    st.sampled_from(list(Frame)),
)
def test_fuzz_fragment_text_never_raises(parts, expect, frame):
    parsed = parse_response("".join(parts), geometry=GEO, frame=frame, expect=expect)
    _check_invariants(parsed, frame)
