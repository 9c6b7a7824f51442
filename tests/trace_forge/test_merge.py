"""Merging shard run directories: records, duplicates, conflicts, compatibility, caches, images, run.json."""

import json
import logging
import sqlite3
from dataclasses import replace

import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.trace_forge.fixtures_trees import VSTAR_DIR, example_tree, make_record, vstar_samples, write_run
from trace_forge.cli import app
from trace_forge.durable import read_records
from trace_forge.errors import ConfigError
from trace_forge.search.merge import merge_runs
from trace_forge.search.records import read_questions
from trace_forge.search.store import RunStore
from trace_forge.tasks import AnswerKind, Sample, TaskSpec
from trace_forge.teachers.base import Completion
from trace_forge.teachers.cache import ResponseCache

runner = CliRunner()


def _records(n):
    return [make_record(example_tree(), s) for s in list(vstar_samples().values())[:n]]


def _shard(root, records, *, cache=None, usage=None, base_url="http://gpu0", data_dir=VSTAR_DIR, **run_changes):
    write_run(root, records, data_dir=data_dir)
    store = RunStore(root)
    run = store.read_run()
    run.teacher["base_urls"] = [base_url]  # where a shard ran: allowed to differ
    store.write_run(replace(run, shard=root.name, usage=usage or {}, **run_changes))
    if cache:
        c = ResponseCache(store.cache_path)
        for key, indices in cache.items():
            c.put_many(key, {i: Completion(f"{key}-{i}-{root.name}", "stop", 1, 1) for i in indices})
        c.close()
    return root


def _merged(out):
    return [record.to_dict() for _, record in read_questions(out / "trees.jsonl")]


def test_two_shards_merge_records_caches_and_usage(tmp_path):
    r = _records(3)
    a = _shard(tmp_path / "a", r[:2], cache={"k1": [0, 1]}, usage={"requests": 4, "cost_usd": None})
    # The shards ran on machines where the task data lives in different folders.
    b = _shard(tmp_path / "b", [r[1], r[2]], cache={"k1": [1], "k2": [0]}, usage={"requests": 6, "cost_usd": 0.5},
               base_url="http://gpu1", data_dir=tmp_path / "elsewhere")
    RunStore(b).append_error({"question_id": r[0].id, "error": "x"})  # finished by shard a
    RunStore(b).append_error({"question_id": "lost", "error": "x"})
    report = merge_runs(tmp_path / "out", [a, b])

    assert (report.questions, report.duplicates, report.conflicts, report.errors) == (3, 1, [], 1)
    assert _merged(tmp_path / "out") == [x.to_dict() for x in r]
    assert [e["question_id"] for e in read_records(tmp_path / "out" / "errors.jsonl")] == ["lost"]

    assert report.cache_rows == {"cache.sqlite": 3}
    db = sqlite3.connect(tmp_path / "out" / "cache.sqlite")
    rows = dict(((k, i), t) for k, i, t in db.execute("SELECT key, idx, text FROM completions"))
    db.close()
    assert rows == {("k1", 0): "k1-0-a", ("k1", 1): "k1-1-a", ("k2", 0): "k2-0-b"}  # first shard wins

    run = RunStore(tmp_path / "out").read_run()
    assert [s["path"] for s in run.shards] == [str(a), str(b)]
    assert [s["questions"] for s in run.shards] == [2, 2]
    assert run.usage == {"requests": 10}  # an unknown cost is not summed as if it were zero
    assert run.shard is None and run.sessions == [] and run.task == TaskSpec("vstar")
    assert not (tmp_path / ".out.merging").exists()


def test_images_a_shard_stored_itself_are_merged(tmp_path):
    image = Image.new("RGB", (40, 30), (200, 10, 10))
    sample = Sample("m1", "vstar", [image], "What colour?", AnswerKind.OPTION, ["red", "blue"], "red")
    a = write_run(tmp_path / "a", [make_record(example_tree(), sample, run_dir=tmp_path / "a", image_size=(40, 30))])
    b = _shard(tmp_path / "b", _records(1))
    merge_runs(tmp_path / "out", [a, b])
    records = dict((rec.id, rec) for _, rec in read_questions(tmp_path / "out" / "trees.jsonl"))
    merged = records["m1"].question.sample(tmp_path / "out", VSTAR_DIR)
    assert merged.canvas().tobytes() == image.tobytes()


def test_conflicting_duplicate_keeps_first_and_warns(tmp_path, caplog):
    r = _records(1)
    other = make_record(example_tree(), vstar_samples()[r[0].id])
    other.tree.nodes[1].value = 0.123
    a = _shard(tmp_path / "a", r)
    b = _shard(tmp_path / "b", [other])
    with caplog.at_level(logging.WARNING):
        report = merge_runs(tmp_path / "out", [a, b])
    assert report.conflicts == [r[0].id] and report.questions == 1
    assert _merged(tmp_path / "out") == [r[0].to_dict()]
    assert "keeping the first" in caplog.text


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("params.simulations", {"params": {"simulations": 16, "rollouts": 2}}),
        ("task", {"task": TaskSpec("blink")}),
        ("task", {"task": TaskSpec("vstar", {"question": "prompt"})}),
        ("teacher.model", {"teacher": {"backend": "openai", "model": "gpt-4o", "simulated": False}}),
        ("prompt_version", {"prompt_version": "v0-other"}),
        ("split", {"split": "train"}),
    ],
)
def test_incompatible_shards_are_rejected_naming_the_field(tmp_path, field, change):
    r = _records(2)
    a = _shard(tmp_path / "a", r[:1])
    b = _shard(tmp_path / "b", r[1:], **change)
    with pytest.raises(ConfigError, match=f"differ in {field}"):
        merge_runs(tmp_path / "out", [a, b])
    assert not (tmp_path / "out").exists()


def test_shards_of_a_sim_search_merge(tmp_path):
    # The sim teacher's shards hold different questions; nothing in its provenance may depend on that.
    data = str(VSTAR_DIR)
    for i in range(2):
        args = ["search", "--task", "vstar", "--data-dir", data, "--teacher", "sim", "--limit", "3", "--simulations",
                "1", "--shard", f"{i}/2", "--no-linearize", "--quiet", "--out", str(tmp_path / f"s{i}")]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
    report = merge_runs(tmp_path / "out", [tmp_path / "s0", tmp_path / "s1"])
    assert report.questions == 3 and report.conflicts == []


def test_refuses_a_folder_in_use_or_a_single_shard(tmp_path):
    r = _records(2)
    a, b = _shard(tmp_path / "a", r[:1]), _shard(tmp_path / "b", r[1:])
    with pytest.raises(ConfigError, match="not empty"):
        merge_runs(a, [b, tmp_path / "b"])
    with pytest.raises(ConfigError, match="at least two"):
        merge_runs(tmp_path / "out", [a])
    (tmp_path / "empty").mkdir()
    assert merge_runs(tmp_path / "empty", [a, b]).questions == 2  # an empty folder is fine


def test_a_killed_merge_leaves_nothing_a_rerun_trips_on(tmp_path):
    r = _records(2)
    a, b = _shard(tmp_path / "a", r[:1]), _shard(tmp_path / "b", r[1:])
    leftover = tmp_path / ".out.merging"  # what a merge killed before its rename leaves
    leftover.mkdir()
    (leftover / "trees.jsonl").write_text("{half")
    assert not (tmp_path / "out").exists()
    assert merge_runs(tmp_path / "out", [a, b]).questions == 2
    assert not leftover.exists()


def test_cli_merge_then_stats(tmp_path):
    r = _records(2)
    a, b = _shard(tmp_path / "a", r[:1]), _shard(tmp_path / "b", r[1:])
    out = tmp_path / "out"
    result = runner.invoke(app, ["merge", str(out), str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert "2 questions" in result.stdout
    stats = runner.invoke(app, ["stats", str(out), "--json"])
    assert json.loads(stats.stdout)["questions"] == 2

    bad = _shard(tmp_path / "c", r[:1], params={"simulations": 1})
    result = runner.invoke(app, ["merge", str(tmp_path / "out2"), str(a), str(bad)])
    assert isinstance(result.exception, ConfigError) and "params.simulations" in str(result.exception)
