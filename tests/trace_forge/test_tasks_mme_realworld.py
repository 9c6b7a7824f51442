"""MME-RealWorld and its lite subset: the JSON layouts, bad records, the official answer reader with its quirks, and
the official aggregation (micro overall / task / subtask / category, and each task's Avg-C) computed by hand."""

import json
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from trace_forge.errors import ConfigError, DataError
from trace_forge.tasks import AnswerKind, Sample, get_task
from trace_forge.tasks.mme_realworld import mme_realworld_choice

SAMPLES = Path(__file__).resolve().parents[2] / "data" / "samples"
OPTIONS = ["458", "457", "456", "455", "The image doesn't feature the data."]


def record(qid: str = "Perception/Diagram_and_Table/diagram/0001", **overrides) -> dict:
    rec = {"Question_id": qid, "Image": "charts/a.png", "Text": "What is the interest in Feb-23?",
           "Answer choices": [f"({'ABCDE'[k]}) {o}" for k, o in enumerate(OPTIONS)], "Ground truth": "B",
           "Task": "Perception", "Subtask": "Diagram and Table", "Category": "diagram"}
    return {**rec, **overrides}


def make_full(root: Path, records: list[dict]) -> Path:
    (root / "charts").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 48)).save(root / "charts" / "a.png")
    (root / "MME_RealWorld.json").write_text(json.dumps(records))
    return root


def test_bundled_full_and_lite():
    full = list(get_task("mme-realworld").load(SAMPLES / "mme_realworld"))
    assert len(full) == 5 and len({s.id for s in full}) == 5
    chart = full[0]
    assert chart.id == "Perception/Diagram_and_Table/diagram/0001" and chart.category == "Perception/Diagram and Table"
    assert len(chart.options) == 5 and not chart.options[0].startswith("(")  # "(A) " labels stripped
    assert chart.options[-1] == "The image does not feature the number."
    bus = full[3]
    assert bus.answer == bus.options[4] and bus.meta["answer_label"] == "E"  # "does not feature the bus"
    assert bus.meta["official_category"] == "Perception/Monitoring/vehicle/attribute"  # attribute categories merge
    assert {s.category.split("/")[0] for s in full} == {"Perception", "Reasoning"}
    assert full[0].images[0] == SAMPLES / "mme_realworld" / "diagram_and_table" / "orders_2024.png"
    task = get_task("mme-realworld-lite")
    lite = list(task.load(SAMPLES / "mme_realworld_lite"))
    assert [s.id for s in lite] == [full[0].id, full[2].id, full[4].id] and not task.skipped
    assert lite[0].images[0] == SAMPLES / "mme_realworld_lite" / "data" / "imgs" / "diagram_and_table" / "orders_2024.png"
    for sample in full + lite:
        assert sample.canvas().size[0] > 300
        assert task.score(sample, sample.answer) == 1.0 and task.score(sample, sample.meta["answer_label"]) == 1.0


def test_lite_extracts_the_hub_archive_once(tmp_path):
    source = SAMPLES / "mme_realworld_lite"
    with zipfile.ZipFile(tmp_path / "data.zip", "w") as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(source).as_posix())
    assert len(list(get_task("mme-realworld-lite").load(tmp_path))) == 3
    assert (tmp_path / "data" / "MME-RealWorld-Lite.json").is_file()


def test_full_set_needs_a_data_dir_and_its_file(tmp_path):
    with pytest.raises(ConfigError, match="extract its images next to MME_RealWorld.json and pass --data-dir"):
        get_task("mme-realworld").load()
    with pytest.raises(DataError, match=r"no MME_RealWorld\.json here or in data/"):
        get_task("mme-realworld").load(tmp_path)
    shutil.copy(SAMPLES / "mme_realworld" / "MME_RealWorld.json", tmp_path / "questions.json")
    with pytest.raises(DataError, match=r"questions\.json: record 0: .*orders_2024\.png: image not found"):
        list(get_task("mme-realworld").load(tmp_path / "questions.json"))  # a file: images beside it


def test_bad_records_are_one_line_errors_or_counted_skips(tmp_path):
    labels = [f"({letter}) {o}" for letter, o in zip("ACBDE", OPTIONS, strict=True)]
    root = make_full(tmp_path, [
        record(),
        record("x/2", **{"Answer choices": labels}),
        record("x/3", **{"Ground truth": "F"}),
        record("x/4", Task="Cognition"),
        record("x/5", Image="charts/missing.png"),
        record("x/6", Text=None),
    ])
    with pytest.raises(DataError, match=r"MME_RealWorld\.json: record 1: Answer choices must be labelled .*'ACBDE'$"):
        list(get_task("mme-realworld").load(root))
    task = get_task("mme-realworld")
    assert [s.id for s in task.load(root, skip_bad=True)] == ["Perception/Diagram_and_Table/diagram/0001"]
    assert task.skipped == Counter({"bad options": 1, "bad answer": 1, "bad field 'Task'": 1, "missing image": 1,
                                    "missing field 'Text'": 1})


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("B", 1),
        ("(C) 456", 2),
        ("The best answer is D", 3),
        ("The correct answer is (E).", 4),
        ("Best answer: C", 1),  # the official lead-in list glues "Best answer:" to the next entry: "Best" reads B
        ("457", 1),  # no letter: the option containing the answer
        ("45", 0),  # ... the first one
        ("the chart shows nothing about that month at all, so it cannot be told", None),  # > 10 words, no letter
        ("none", None),
        ("The answer is", 0),  # emptied by the lead-ins, it is a substring of every option
        ("I think it is 455", None),  # no A-E capital, and the whole answer lies inside no option
    ],
)
def test_official_reader(answer, expected):
    assert mme_realworld_choice(answer, OPTIONS) == expected


def test_choose_reads_option_text_before_the_official_letter_scan():
    sample = Sample("1", "mme-realworld", [], "Which?", AnswerKind.OPTION, ["Center Console", "Deck Boats"],
                    "Deck Boats")
    task = get_task("mme-realworld")
    assert mme_realworld_choice("Deck Boats", sample.options) is None  # "D" is past the last option
    assert task.score(sample, "Deck Boats") == 1.0 and task.score(sample, "(B)") == 1.0
    assert task.score(sample, "Best option: Center Console") == 1.0  # the official scan finds "B" in "Best"
    assert task.score(sample, "Center Console") == 0.0


def _scored(task: str, subtask: str, category: str, scores: list[float]) -> list[tuple[Sample, float]]:
    return [(Sample(f"{subtask}{category}{k}", "mme-realworld", [], "q", AnswerKind.OPTION,
                    category=f"{task}/{subtask}", meta={"official_category": f"{task}/{subtask}/{category}"}), score)
            for k, score in enumerate(scores)]


def test_aggregate_by_hand():
    results = (_scored("Perception", "OCR with Complex Context", "license", [1, 1, 1, 0])
               + _scored("Perception", "Remote Sensing", "count", [0, 1])
               + _scored("Perception", "Remote Sensing", "color", [0])
               + _scored("Reasoning", "Monitoring", "intention", [1, 0]))
    metrics = get_task("mme-realworld").aggregate(results)
    assert metrics == pytest.approx({
        "overall": 5 / 9,
        "Perception": 4 / 7,  # micro: the paper's Avg
        "Perception/Avg-C": (3 / 4 + 1 / 3) / 2,  # mean over its subtasks
        "Reasoning": 0.5,
        "Reasoning/Avg-C": 0.5,
        "Perception/OCR with Complex Context": 0.75,
        "Perception/Remote Sensing": 1 / 3,
        "Reasoning/Monitoring": 0.5,
        "Perception/OCR with Complex Context/license": 0.75,
        "Perception/Remote Sensing/count": 0.5,
        "Perception/Remote Sensing/color": 0.0,
        "Reasoning/Monitoring/intention": 0.5,
    })
