
import pytest

from trace_forge.grounding import Box, Frame, Point
from trace_forge.tasks.scoring import choose_option, official_point, score_option, score_point, score_text

COLORS = ["red", "blue", "not red", "green"]  # "not red" contains the correct "red": the substring trap


@pytest.mark.parametrize(
    ("pred", "answer", "expected"),
    [
        # option text, case and trailing period ignored
        ("red", "red", 1.0),
        ("  RED. ", "red", 1.0),
        ("Red", "Red", 1.0),
        ("red", "RED", 1.0),  # ViGoRL's RL judge never matched an upper-case ground truth
        ("blue", "red", 0.0),
        # the substring trap, both ways
        ("not red", "red", 0.0),
        ("red", "not red", 0.0),
        ("not red", "not red", 1.0),
        ("the red one", "red", 0.0),
        # letters, resolved through the option order
        ("A", "red", 1.0),
        ("a", "red", 1.0),
        ("(A)", "red", 1.0),
        ("A.", "red", 1.0),
        ("A)", "red", 1.0),
        ("(A).", "red", 1.0),
        ("A. red", "red", 1.0),
        ("(A) red", "red", 1.0),
        ("C", "not red", 1.0),
        ("B", "red", 0.0),
        ("(B) blue", "red", 0.0),
        # letter and text disagree: ambiguous, so wrong
        ("A. blue", "red", 0.0),
        ("A. blue", "blue", 0.0),
        # lead-ins
        ("Answer: A", "red", 1.0),
        ("The answer is (A).", "red", 1.0),
        ("answer: red", "red", 1.0),
        ("Option D", "green", 1.0),
        # several options
        ("A and B", "red", 0.0),
        ("A, B", "red", 0.0),
        ("(A) (B)", "red", 0.0),
        ("red or blue", "red", 0.0),
        # out-of-range letter, a word starting with an option letter, nothing
        ("E", "red", 0.0),
        ("Blue", "blue", 1.0),
        ("Bred", "blue", 0.0),
        ("", "red", 0.0),
        ("   ", "red", 0.0),
        (None, "red", 0.0),
    ],
)
def test_score_option(pred, answer, expected):
    assert score_option(pred, COLORS, answer) == expected


def test_score_option_text_match_wins_over_letter():
    # When an option's text is itself a letter, the text reading is the one the prompt asked for.
    assert score_option("B", ["B", "A"], "B") == 1.0
    assert score_option("B", ["B", "A"], "A") == 0.0


def test_score_option_duplicate_texts_are_one_answer():
    assert score_option("B", ["yes", "yes", "no"], "yes") == 1.0


def test_score_option_rejects_bad_ground_truth():
    with pytest.raises(ValueError, match="not one of the options"):
        score_option("A", ["left", "right"], "up")
    with pytest.raises(ValueError):
        score_option("A", [], "left")


def test_choose_option_returns_index_or_none():
    assert choose_option("(C) not red", COLORS) == 2
    assert choose_option("maybe", COLORS) is None
    assert choose_option("Answer:", ["", "x"]) is None


BOX = Box(10, 20, 30, 40)


@pytest.mark.parametrize(
    ("pred", "expected"),
    [
        ("(20, 30)", 1.0),
        ("[20, 30]", 1.0),
        ("20, 30", 1.0),
        ("(20,30)", 1.0),
        # every corner and edge is inside (inclusive rule)
        ("(10, 20)", 1.0),
        ("(30, 40)", 1.0),
        ("(10, 40)", 1.0),
        ("(30, 25)", 1.0),
        ("(9, 30)", 0.0),
        ("(31, 30)", 0.0),
        ("(20, 41)", 0.0),
        # floats: accepted by the official scorer, judged by position only
        ("(29.9, 39.5)", 1.0),
        ("(30.01, 30)", 0.0),
        (".5, 30", 0.0),
        # a 4-number box counts as its centre
        ("(0, 0, 40, 60)", 1.0),  # centre (20, 30)
        ("[10, 20, 30, 40]", 1.0),
        ("(0, 0, 10, 10)", 0.0),  # centre (5, 5), though the box overlaps the target
        # unparseable: wrong
        ("(20)", 0.0),
        ("(1, 2, 3)", 0.0),
        ("somewhere in the middle", 0.0),
        ("", 0.0),
        (None, 0.0),
        ("(-20, 30)", 0.0),
    ],
)
def test_score_point(pred, expected):
    assert score_point(pred, [BOX]) == expected


def test_score_point_any_of_several_boxes():
    boxes = [Box(0, 0, 5, 5), Box(100, 100, 110, 110)]
    assert score_point("(105, 110)", boxes) == 1.0
    assert score_point("(50, 50)", boxes) == 0.0


def test_score_point_accepts_point_in_the_boxes_frame_only():
    assert score_point(Point(30.0, 40.0), [BOX]) == 1.0
    assert score_point(Point(30.5, 40.0), [BOX]) == 0.0
    norm_box = Box(100, 100, 200, 200, Frame.NORM1000)
    assert score_point("(150, 150)", [norm_box]) == 1.0  # text is read in the boxes' frame
    with pytest.raises(ValueError, match="frame"):
        score_point(Point(150, 150, Frame.NORM1000), [BOX])


def test_score_point_needs_a_box():
    with pytest.raises(ValueError):
        score_point("(1, 1)", [])


def test_parse_point_forms():
    assert official_point("<point>(12, 34)</point>") == (12.0, 34.0)
    assert official_point("x=1.5 y=-2") == (1.5, -2.0)
    assert official_point("(1, 2), (3, 4)") == (2.0, 3.0)


@pytest.mark.parametrize(
    ("pred", "answer", "expected"),
    [
        ("The Eiffel Tower", "the eiffel tower", 1.0),
        ("  the   eiffel\ttower. ", "The Eiffel Tower", 1.0),
        ('"two"', "two", 1.0),
        ("3.5", "3.5", 1.0),
        ("35", "3.5", 0.0),
        ("not two", "two", 0.0),
        ("two cats", "two", 0.0),
        ("", "two", 0.0),
        (None, "two", 0.0),
    ],
)
def test_score_text(pred, answer, expected):
    assert score_text(pred, answer) == expected


def test_score_text_rejects_empty_reference():
    with pytest.raises(ValueError):
        score_text("x", " ?! ")


# --- the one scoring function: score_answer --------------------------------------------------------------------


def _point_sample(box):
    from trace_forge.tasks import AnswerKind, Sample

    return Sample("q", "screenspot-pro", [], "Click it", AnswerKind.POINT, target_boxes=[box])


def test_points_are_mapped_to_pixels_as_the_official_scripts_map_them():
    from trace_forge.grounding import Box, Frame, ImageGeometry
    from trace_forge.tasks import get_task, score_answer

    task = get_task("screenspot-pro")
    screen = ImageGeometry(3840, 2160, 1316, 740)
    # 0-1000 grid: x = 500 is 500 / 1000 * 3840 = 1920.0 officially; the cell-centre mapping gives 1921.42.
    edge = _point_sample(Box(1900, 1000, 1920, 1100))
    assert screen.convert(500, 500, Frame.NORM1000, Frame.PIXEL)[0] > 1921
    assert score_answer(task, edge, "(500, 500)", screen, Frame.NORM1000).score == 1.0
    # Resized pixels: x = 658 is 658 * 3840 / 1316 = 1920.0 (cell centre: 1921.0).
    assert score_answer(task, edge, "(658, 370)", screen, Frame.MODEL).score == 1.0
    assert score_answer(task, edge, "(659, 370)", screen, Frame.MODEL).score == 0.0
    # Two numbers in any wrapping, or four (a box: its centre), as the official reader takes them.
    assert score_answer(task, edge, "[1900, 1000, 1920, 1100]", screen, Frame.PIXEL).score == 1.0


def test_verdicts_name_what_kept_an_answer_from_scoring():
    from trace_forge.grounding import Box, Frame, ImageGeometry
    from trace_forge.tasks import AnswerKind, Sample, get_task, score_answer

    g = ImageGeometry(100, 100, 100, 100)
    point = _point_sample(Box(10, 10, 20, 20))
    task = get_task("screenspot-pro")
    assert score_answer(task, point, None, g, Frame.PIXEL).problems == ("no_answer",)
    assert score_answer(task, point, "  ", g, Frame.PIXEL).problems == ("no_answer",)
    assert score_answer(task, point, "the icon", g, Frame.PIXEL).problems == ("no_point",)
    assert score_answer(task, point, "(150, 15)", g, Frame.PIXEL).problems == ("point_outside_image",)
    right = score_answer(task, point, "(15, 15)", g, Frame.PIXEL)
    assert (right.score, right.problems) == (1.0, ())
    option = Sample("q", "vstar", [], "Colour?", AnswerKind.OPTION, ["red", "blue"], "blue")
    verdict = score_answer(get_task("vstar"), option, "purple", g, Frame.PIXEL)
    assert (verdict.score, verdict.problems) == (0.0, ("no_option",))
    assert score_answer(get_task("vstar"), option, "B", g, Frame.PIXEL).score == 1.0


@pytest.mark.parametrize(
    ("answer", "chosen"),
    [
        ("B", 1),
        ("(B)", 1),
        ("The correct choice is (B) because the shadow falls left.", 1),  # the one "(X)" token in prose
        ("(A) is wrong.\n\nSo the answer is (B)", 1),  # two tokens: the last paragraph's one wins
        ("(A) or (B) hard to say", None),  # ambiguous: the official script would ask its judge; we refuse
        ("(A) or (B), hard to say", 0),  # "(B)," is no token: the one token "(A)" is read, as officially
        ("point B", 1),  # no token: matched to an option's text without a judge
        ("(B).", 1),  # no "(B)" token: where the official script asks its judge, the judge-free reading accepts it
        ("E", None),  # a letter past the choices
    ],
)
def test_blink_reads_answers_as_its_official_script(answer, chosen):
    from trace_forge.tasks import AnswerKind, Sample, get_task

    sample = Sample("q", "blink", [], "Which point is closer?", AnswerKind.OPTION, ["point A", "point B"], "point B")
    blink = get_task("blink")
    assert blink.choose(sample, answer) == chosen
    assert blink.score(sample, answer) == float(chosen == 1)
