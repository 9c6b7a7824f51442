import itertools
from fractions import Fraction

import pytest

from trace_forge.tasks.metrics import all_rotations, avg_at_k, group_means, macro, mean, pass_at_k
from trace_forge.tasks.sample import AnswerKind, Sample


def _sample(i: int, category: str = "", **meta) -> Sample:
    return Sample(str(i), "t", [], "q", AnswerKind.OPTION, options=["a", "b"], answer="a", category=category, meta=meta)


def _results(table: dict[str, list[float]]) -> list[tuple[Sample, float]]:
    ids = itertools.count()
    return [(_sample(next(ids), cat), s) for cat, scores in table.items() for s in scores]


def test_mean_and_empty_inputs():
    assert mean([1.0, 0.0, 0.0]) == pytest.approx(1 / 3)
    assert mean(iter([0.5])) == 0.5
    with pytest.raises(ValueError):
        mean([])
    with pytest.raises(ValueError):
        macro({})


def test_screenspot_average_is_macro_over_six_cells_not_micro():
    # An unbalanced platform x type table, as in ScreenSpot (mobile text is the largest cell).
    table = {
        "mobile/text": [1.0] * 9 + [0.0],  # 0.9, 10 items
        "mobile/icon": [1.0, 0.0],  # 0.5
        "desktop/text": [1.0, 1.0, 0.0, 0.0],  # 0.5
        "desktop/icon": [0.0, 0.0],  # 0.0
        "web/text": [1.0, 1.0],  # 1.0
        "web/icon": [1.0, 0.0, 0.0, 0.0],  # 0.25
    }
    results = _results(table)
    cells = group_means(results, key=lambda s: s.category)
    assert cells == {
        "desktop/icon": 0.0,
        "desktop/text": 0.5,
        "mobile/icon": 0.5,
        "mobile/text": 0.9,
        "web/icon": 0.25,
        "web/text": 1.0,
    }
    assert list(cells) == sorted(cells)
    assert macro(cells) == pytest.approx((0.9 + 0.5 + 0.5 + 0.0 + 1.0 + 0.25) / 6)  # 0.525
    assert mean(s for _, s in results) == pytest.approx(15 / 24)  # micro: 0.625
    assert macro(cells) != pytest.approx(mean(s for _, s in results))


def test_blink_total_is_macro_over_subtasks():
    results = _results({"Counting": [1.0, 1.0, 1.0, 0.0], "Jigsaw": [0.0, 0.0], "IQ_Test": [1.0, 0.0]})
    subtasks = group_means(results, key=lambda s: s.category)
    assert macro(subtasks) == pytest.approx((0.75 + 0.0 + 0.5) / 3)
    assert mean(s for _, s in results) == pytest.approx(4 / 8)


def test_all_rotations_needs_every_rotation_right():
    results = [
        (_sample(0, circular_group="q1"), 1.0),
        (_sample(1, circular_group="q1"), 1.0),  # q1: both rotations right -> 1
        (_sample(2, circular_group="q2"), 1.0),
        (_sample(3, circular_group="q2"), 0.0),  # q2: position bias caught -> 0
        (_sample(4, circular_group="q3"), 0.0),
        (_sample(5, circular_group="q3"), 1.0),  # q3: order of members does not matter -> 0
        (_sample(6, circular_group=7), 1.0),  # non-string group ids are fine
    ]
    assert all_rotations(results) == {"all_rotations": pytest.approx(2 / 4), "questions": 4.0}
    assert mean(s for _, s in results) == pytest.approx(5 / 7)  # SAT's circular accuracy: every rotation an item


def test_all_rotations_rejects_missing_group():
    with pytest.raises(ValueError, match="'9'"):
        all_rotations([(_sample(9), 1.0)])
    with pytest.raises(ValueError):
        all_rotations([])


def _brute_pass_at_k(n: int, c: int, k: int) -> Fraction:
    outcomes = [True] * c + [False] * (n - c)
    draws = list(itertools.combinations(range(n), k))
    return Fraction(sum(any(outcomes[i] for i in d) for d in draws), len(draws))


@pytest.mark.parametrize("n", range(1, 7))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(_brute_pass_at_k(n, c, k)), abs=1e-12)


def test_pass_at_k_edges_and_large_n():
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(10, 6, 5) == 1.0  # fewer wrong samples than draws
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # pass@1 is the fraction correct
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5)
    for n, c, k in [(3, 4, 1), (3, 1, 0), (3, 1, 4), (3, -1, 1)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_avg_at_k():
    assert avg_at_k([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0]]) == pytest.approx((0.25 + 1.0) / 2)
    with pytest.raises(ValueError):
        avg_at_k([[1.0], []])
    with pytest.raises(ValueError):
        avg_at_k([])
