"""Merging shard run directories: records, duplicates, conflicts, compatibility, caches, run.json."""

import json
import logging
import sqlite3

import pytest
from typer.testing import CliRunner

from tests.trace_forge.fixtures_trees import VSTAR_DIR, example_tree, make_record, vstar_samples, write_run
from trace_forge.cli import app
from trace_forge.errors import ConfigError
from trace_forge.search.merge import merge_runs
from trace_forge.search.store import RunStore, read_records
from trace_forge.teachers.base import Completion
from trace_forge.teachers.cache import ResponseCache

runner = CliRunner()


def _records(n):
    return [make_record(example_tree(), s) for s in list(vstar_samples().values())[:n]]


def _shard(root, records, *, cache=None, usage=None, base_url="http://gpu0", **run_changes):
    write_run(root, records)
    store = RunStore(root)
    run = store.read_run_json()
    run["teacher"]["base_urls"] = [base_url]  # where a shard ran: allowed to differ
    run.update(shard=str(root.name), usage=usage or {}, **run_changes)
    store.write_run_json(run)
    if cache:
        c = ResponseCache(store.cache_path)
        for key, indices in cache.items():
            c.put_many(key, {i: Completion(f"{key}-{i}-{root.name}", "stop", 1, 1) for i in indices})
        c.close()
    return root


def test_two_shards_merge_records_caches_and_usage(tmp_path):
    r = _records(3)
    a = _shard(tmp_path / "a", r[:2], cache={"k1": [0, 1]}, usage={"requests": 4, "cost_usd": None})
    b = _shard(
        tmp_path / "b",
        [r[1], r[2]],
        cache={"k1": [1], "k2": [0]},
        usage={"requests": 6, "cost_usd": 0.5},
        base_url="http://gpu1",
    )
    RunStore(b).append_error({"question_id": r[0]["question_id"], "error": "x"})  # finished by shard a
    RunStore(b).append_error({"question_id": "lost", "error": "x"})
    report = merge_runs(tmp_path / "out", [a, b])

    assert (report.questions, report.duplicates, report.conflicts, report.errors) == (3, 1, [], 1)
    merged = list(read_records(tmp_path / "out" / "trees.jsonl"))
    assert [m["question_id"] for m in merged] == [x["question_id"] for x in r]
    assert merged == r
    assert [e["question_id"] for e in read_records(tmp_path / "out" / "errors.jsonl")] == ["lost"]

    assert report.cache_rows == {"cache.sqlite": 3}
    db = sqlite3.connect(tmp_path / "out" / "cache.sqlite")
    rows = dict(((k, i), t) for k, i, t in db.execute("SELECT key, idx, text FROM completions"))
    db.close()
    assert rows == {("k1", 0): "k1-0-a", ("k1", 1): "k1-1-a", ("k2", 0): "k2-0-b"}  # first shard wins

    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert [s["path"] for s in run["shards"]] == [str(a), str(b)]
    assert [s["questions"] for s in run["shards"]] == [2, 2]
    assert run["usage"] == {"requests": 10}  # an unknown cost is not summed as if it were zero
    assert "shard" not in run and run["task"] == "vstar"


def test_conflicting_duplicate_keeps_first_and_warns(tmp_path, caplog):
    r = _records(1)
    other = json.loads(json.dumps(r[0]))
    other["tree"]["nodes"][1]["value"] = 0.123
    a = _shard(tmp_path / "a", r)
    b = _shard(tmp_path / "b", [other])
    with caplog.at_level(logging.WARNING):
        report = merge_runs(tmp_path / "out", [a, b])
    assert report.conflicts == [r[0]["question_id"]] and report.questions == 1
    assert list(read_records(tmp_path / "out" / "trees.jsonl")) == r
    assert "keeping the first" in caplog.text


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("params", {"params": {"iterations": 16, "rollouts": 4}}),
        ("task", {"task": "blink"}),
        ("task_options", {"task_options": {"question": "prompt"}}),
        ("teacher", {"teacher": {"name": "openai", "model": "gpt-4o", "simulated": False}}),
        ("prompt_version", {"prompt_version": "v0-other"}),
    ],
)
def test_incompatible_shards_are_rejected_naming_the_field(tmp_path, field, change):
    r = _records(2)
    a = _shard(tmp_path / "a", r[:1], prompt_version="v1")
    b = _shard(tmp_path / "b", r[1:], **{"prompt_version": "v1", **change})
    with pytest.raises(ConfigError, match=f"{field} differs"):
        merge_runs(tmp_path / "out", [a, b])
    assert not (tmp_path / "out" / "trees.jsonl").exists()


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


def test_prompt_version_falls_back_to_the_records(tmp_path):
    r = _records(2)
    r[1]["prompt_version"] = "other"
    a, b = _shard(tmp_path / "a", r[:1]), _shard(tmp_path / "b", r[1:])
    with pytest.raises(ConfigError, match="prompt_version differs"):
        merge_runs(tmp_path / "out", [a, b])


def test_refuses_an_existing_run_or_a_single_shard(tmp_path):
    r = _records(2)
    a, b = _shard(tmp_path / "a", r[:1]), _shard(tmp_path / "b", r[1:])
    with pytest.raises(ConfigError, match="exists"):
        merge_runs(a, [b, tmp_path / "b"])
    with pytest.raises(ConfigError, match="at least two"):
        merge_runs(tmp_path / "out", [a])


def test_cli_merge_then_stats(tmp_path):
    r = _records(2)
    a, b = _shard(tmp_path / "a", r[:1]), _shard(tmp_path / "b", r[1:])
    out = tmp_path / "out"
    result = runner.invoke(app, ["merge", str(out), str(a), str(b)])
    assert result.exit_code == 0, result.output
    assert "2 questions" in result.stdout
    stats = runner.invoke(app, ["stats", str(out), "--json"])
    assert json.loads(stats.stdout)["questions"] == 2

    bad = _shard(tmp_path / "c", r[:1], params={"iterations": 1})
    result = runner.invoke(app, ["merge", str(tmp_path / "out2"), str(a), str(bad)])
    assert isinstance(result.exception, ConfigError) and "params differs" in str(result.exception)
