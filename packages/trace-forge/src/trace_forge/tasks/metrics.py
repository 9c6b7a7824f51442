"""Aggregates of per-sample scores, as the benchmarks report them.

Benchmarks disagree on what "overall" means, and the difference moves headline numbers: V*Bench and
ScreenSpot-Pro report the micro mean over samples (:func:`mean`), SeeClick's ScreenSpot "Average" is the unweighted
mean of its six platform x type cells and BLINK's "Total" the unweighted mean of its subtasks (:func:`macro` of
:func:`group_means`), and SAT's circular evaluation averages every rotation of every question as an item
(:func:`mean`; :func:`all_rotations` is the stricter per-question reading). Task loaders pick the official one.

Empty inputs raise ``ValueError`` instead of returning 0.0: an empty category reported as 0% looks like a real
(terrible) result, whereas it is a loading bug.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from trace_forge.tasks.sample import Sample

__all__ = ["mean", "group_means", "macro", "all_rotations", "pass_at_k", "avg_at_k"]


def mean(scores: Iterable[float]) -> float:
    """Arithmetic mean (the micro average when ``scores`` has one entry per sample).

    Raises:
        ValueError: on an empty input.

    Example:
        >>> mean([1.0, 0.0, 1.0, 1.0])
        0.75
    """
    values = list(scores)
    if not values:
        raise ValueError("mean of no scores")
    return math.fsum(values) / len(values)


def group_means(results: Sequence[tuple[Sample, float]], key: Callable[[Sample], str]) -> dict[str, float]:
    """Mean score per group, groups named by ``key(sample)`` and listed in sorted order.

    Example:
        >>> a = Sample("1", "t", [], "q", "option", category="x")
        >>> b = Sample("2", "t", [], "q", "option", category="y")
        >>> group_means([(a, 1.0), (b, 0.0), (b, 1.0)], key=lambda s: s.category)
        {'x': 1.0, 'y': 0.5}
    """
    groups: dict[str, list[float]] = {}
    for sample, score in results:
        groups.setdefault(key(sample), []).append(score)
    return {name: mean(groups[name]) for name in sorted(groups)}


def macro(means: Mapping[str, float]) -> float:
    """Unweighted mean of group means: every group counts once, whatever its size.

    Raises:
        ValueError: when there are no groups.

    Example:
        >>> macro({"mobile-text": 1.0, "web-icon": 0.5})
        0.75
    """
    if not means:
        raise ValueError("macro average of no groups")
    return mean(means.values())


def all_rotations(results: Sequence[tuple[Sample, float]]) -> dict[str, float]:
    """The strict reading of circular evaluation: the share of questions whose *every* rotation was answered right.

    SAT's own circular evaluation scores each rotation as an item of its own and averages them (the micro mean over
    rotated samples, :func:`mean`); this stricter number is reported beside it. Rotated copies of a question share
    ``sample.meta["circular_group"]``.

    Returns:
        ``{"all_rotations": share of questions, "questions": number of questions}``.

    Raises:
        ValueError: when ``results`` is empty or a sample has no ``circular_group`` (names the sample).

    Example:
        >>> rot = [Sample(f"q1-{i}", "t", [], "q", "option", meta={"circular_group": "q1"}) for i in range(2)]
        >>> all_rotations([(rot[0], 1.0), (rot[1], 0.0)])
        {'all_rotations': 0.0, 'questions': 1.0}
    """
    groups: dict[str, bool] = {}
    for sample, score in results:
        try:
            group = str(sample.meta["circular_group"])
        except KeyError:
            raise ValueError(f"sample {sample.id!r} has no meta['circular_group']") from None
        groups[group] = groups.get(group, True) and score >= 1.0
    return {"all_rotations": mean(float(ok) for ok in groups.values()), "questions": float(len(groups))}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021, Codex paper):
    ``1 - C(n - c, k) / C(n, k)``, the chance that ``k`` of the ``n`` samples drawn without replacement include at
    least one correct one. Exact integer binomials, so no overflow or cancellation for any ``n``.

    Raises:
        ValueError: unless ``0 <= c <= n`` and ``1 <= k <= n``.

    Example:
        >>> pass_at_k(n=4, c=1, k=2)
        0.5
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def avg_at_k(per_question: Iterable[Sequence[float]]) -> float:
    """avg@k: mean over questions of the mean score of each question's ``k`` samples (expected single-sample
    accuracy, estimated with less variance than from one sample per question).

    Raises:
        ValueError: on no questions, or a question with no samples.

    Example:
        >>> avg_at_k([[1.0, 0.0], [1.0, 1.0]])
        0.75
    """
    return mean(mean(scores) for scores in per_question)
