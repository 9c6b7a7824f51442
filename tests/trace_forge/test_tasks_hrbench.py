"""HR-Bench 4K / 8K: the Hub files (parquet and TSV), bad rows, VLMEvalKit's answer reading, and the cycle-averaged
FSP / FCP aggregation computed by hand."""

from collections import Counter
from pathlib import Path

import pytest

from tests.trace_forge.test_tasks_vlmeval import b64_png, write_tsv
from trace_forge.errors import ConfigError, DataError
from trace_forge.tasks import AnswerKind, Sample, get_task
from trace_forge.tasks.hrbench import vlmevalkit_choice

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples" / "hrbench"
COLUMNS = ["index", "question", "A", "B", "C", "D", "answer", "category", "cycle_category", "image"]


def hr_row(index: int, **overrides) -> dict:
    row = {"index": index, "question": "What is the color of the star?", "A": "red", "B": "blue", "C": "green",
           "D": "white", "answer": "B", "category": "single", "cycle_category": 0, "image": b64_png((40, 30))}
    return {**row, **overrides}


def test_bundled_parquet_and_tsv():
    for name, size in (("hrbench-4k", (450, 262)), ("hrbench-8k", (522, 306))):
        task = get_task(name)
        samples = list(task.load(SAMPLES))
        assert len(samples) == 4 and not task.skipped
        assert [s.id for s in samples] == ["0", "1", "2", "3"]
        assert [s.category for s in samples] == ["FSP", "FCP", "FSP", "FCP"]
        assert [s.meta["cycle"] for s in samples] == ["0", "0", "1", "1"]
        for sample in samples:
            assert sample.answer_kind is AnswerKind.OPTION and len(sample.options) == 4
            assert sample.options["ABCD".index(sample.meta["answer_label"])] == sample.answer
            assert sample.canvas().size == size and sample.target_boxes == []
            assert task.score(sample, sample.answer) == 1.0 and task.score(sample, sample.meta["answer_label"]) == 1.0
        first, _, again, _ = samples
        assert again.question == first.question and again.options == first.options[1:] + first.options[:1]
        assert again.canvas().tobytes() == first.canvas().tobytes()  # 8K: the second cycle refers to the first's image
        assert task.aggregate([(s, 1.0) for s in samples])["overall"] == 1.0


def test_data_dir_may_name_the_file_and_a_missing_file_is_named(tmp_path):
    (sample,) = get_task("hrbench-8k").load(SAMPLES / "hr_bench_8k.tsv", limit=1)
    assert sample.source.endswith("hr_bench_8k.tsv:2")
    with pytest.raises(DataError, match=r"no hr_bench_4k\.parquet or hr_bench_4k\.tsv"):
        get_task("hrbench-4k").load(tmp_path)
    with pytest.raises(ConfigError, match="no split 'val'; its splits: test"):
        get_task("hrbench-4k").load(SAMPLES, split="val")


def test_bad_rows_are_one_line_errors_or_counted_skips(tmp_path):
    rows = [hr_row(0), hr_row(1, answer="E"), hr_row(2, category="both"), hr_row(3, image="99"),
            hr_row(4, C="", D="x"), hr_row(5)]
    path = write_tsv(tmp_path / "hr_bench_4k.tsv", rows, COLUMNS)
    with pytest.raises(DataError, match=r"hr_bench_4k\.tsv:3: answer 'E' is not a letter of the 4 options$"):
        list(get_task("hrbench-4k").load(tmp_path))
    task = get_task("hrbench-4k")
    assert [s.id for s in task.load(path, skip_bad=True)] == ["0", "5"]
    assert task.skipped == Counter({"bad answer": 1, "bad field 'category'": 1, "bad field 'image'": 1,
                                    "bad options": 1})


def test_missing_column_is_a_file_error(tmp_path):
    write_tsv(tmp_path / "hr_bench_8k.tsv", [hr_row(0)], [c for c in COLUMNS if c != "cycle_category"])
    with pytest.raises(DataError, match=r"hr_bench_8k\.tsv: missing column\(s\) \['cycle_category'\]"):
        get_task("hrbench-8k").load(tmp_path)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", 1),
        ("The answer is (C).", 2),
        ("**D**", 3),
        ("A or B", None),  # two letters and no option text
        ("A bird is perched on the green sign", 2),  # "A" in a long answer may be the article: read the text
        ("A blue", 0),  # three words: "A" counts as the letter
        ("Z", None),  # VLMEvalKit's "none of these"
        ("Z, the red one", None),  # a Z word without a letter stops the text match too
        ("it is red or blue", None),  # two option texts
        ("It is WHITE.", 3),
    ],
)
def test_vlmevalkit_exact_matching(answer, expected):
    assert vlmevalkit_choice(answer, ["red", "blue", "green", "white"]) == expected


def test_option_text_comes_before_letters_inside_it():
    # VLMEvalKit alone reads "Plan B" as the letter B; our prompts ask for the option's text, so it is option C.
    sample = Sample("1", "hrbench-4k", [], "Which plan?", AnswerKind.OPTION, ["Plan A", "Plan C", "Plan B"], "Plan B")
    task = get_task("hrbench-4k")
    assert vlmevalkit_choice("Plan B", sample.options) == 1
    assert task.choose(sample, "Plan B") == 2 and task.score(sample, "Plan B") == 1.0
    assert task.score(sample, "I would say C.") == 1.0 and task.score(sample, "A or B") == 0.0


def _scored(category: str, cycle: int, n: int, correct: int) -> list[tuple[Sample, float]]:
    return [(Sample(f"{category}{cycle}_{k}", "hrbench-4k", [], "q", AnswerKind.OPTION, category=category,
                    meta={"cycle": str(cycle)}), float(k < correct)) for k in range(n)]


def test_aggregate_averages_each_part_over_the_cycles_then_their_mean():
    # cycle 0: FSP 3/4, FCP 1/2; cycle 1: FSP 1/4, FCP 2/2
    results = (_scored("FSP", 0, 4, 3) + _scored("FCP", 0, 2, 1)
               + _scored("FSP", 1, 4, 1) + _scored("FCP", 1, 2, 2))
    metrics = get_task("hrbench-8k").aggregate(results)
    fsp, fcp = (0.75 + 0.25) / 2, (0.5 + 1.0) / 2
    assert metrics == pytest.approx({"FSP": fsp, "FCP": fcp, "overall": (fsp + fcp) / 2})
    assert metrics["overall"] != pytest.approx(7 / 12)  # not the micro mean over rows
