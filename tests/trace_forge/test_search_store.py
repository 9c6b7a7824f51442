"""The run directory: durable appends with torn-line repair, typed records with schema versions, sessions."""

import json
from dataclasses import replace

import pytest

from tests.trace_forge.fixtures_trees import (
    TEACHER,
    VSTAR,
    VSTAR_DIR,
    example_tree,
    make_record,
    vstar_samples,
)
from trace_forge.durable import read_records, write_atomic
from trace_forge.errors import DataError
from trace_forge.search.records import QuestionRecord, RunRecord, read_questions
from trace_forge.search.store import RunStore
from trace_forge.tasks import TaskSpec


def _fill(store, n):
    samples = list(vstar_samples().values())
    for sample in samples[:n]:
        store.append(make_record(example_tree(), sample))
    return [s.id for s in samples[:n]]


def _run(**changes) -> RunRecord:
    return replace(RunRecord(task=VSTAR, params={"simulations": 8}, teacher=dict(TEACHER), prompt_version="2"),
                   **changes)


def test_append_and_read_back_the_same_records(tmp_path):
    store = RunStore(tmp_path / "run")
    ids = _fill(store, 3)
    finished = store.finished()
    assert list(finished) == ids
    record = finished[ids[0]]
    assert isinstance(record, QuestionRecord) and record.question.task == VSTAR
    assert QuestionRecord.from_dict(record.to_dict()).to_dict() == record.to_dict()
    sample = record.question.sample(store.root, VSTAR_DIR)  # task data images: relative to the data folder
    assert sample.canvas().size == record.question.image_size
    with pytest.raises(DataError, match="--data-dir"):
        record.question.sample(store.root, None)


def test_torn_last_line_is_reported_ignored_and_cut(tmp_path, caplog):
    store = RunStore(tmp_path)
    ids = _fill(store, 3)
    data = store.trees_path.read_bytes()
    store.trees_path.write_bytes(data[:-7])  # a kill mid-write of the last record
    with caplog.at_level("WARNING"):
        done = store.finished()
    assert list(done) == ids[:2]
    assert "torn last line" in caplog.text
    # The fragment is gone, so the next append starts on a clean line.
    store.append(make_record(example_tree(), vstar_samples()[ids[2]]))
    assert [line for line, _ in read_questions(store.trees_path)] == [1, 2, 3]


def test_corruption_in_the_middle_names_file_and_line(tmp_path):
    store = RunStore(tmp_path)
    _fill(store, 3)
    lines = store.trees_path.read_text().splitlines()
    lines[1] = lines[1][:10]
    store.trees_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"trees.jsonl:2"):
        list(read_records(store.trees_path))
    lines[1] = json.dumps({"schema_version": 2, "question": {"id": "x"}})
    store.trees_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"trees.jsonl:2: malformed trees.jsonl record"):
        read_questions(store.trees_path)


def test_a_record_of_another_schema_version_is_refused_by_line(tmp_path):
    store = RunStore(tmp_path)
    _fill(store, 2)
    lines = store.trees_path.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "schema_version": 3})
    store.trees_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"trees.jsonl:2: trees.jsonl record has schema version 3"):
        store.finished()


def test_run_json_is_atomic_round_trips_and_names_other_versions(tmp_path):
    store = RunStore(tmp_path)
    store.write_run(_run(data_dir="/data/vstar"))
    assert store.read_run() == _run(data_dir="/data/vstar")
    assert not list(tmp_path.glob(".*.tmp"))
    write_atomic(store.run_path, json.dumps({"task": "vstar", "params": {}}))  # trace-forge 0.1.0's run.json
    with pytest.raises(DataError, match="run.json has schema version 1"):
        store.read_run()
    write_atomic(store.run_path, "{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        store.read_run()


def test_differences_name_each_field_with_both_values():
    old = _run(params={"simulations": 8, "c": 2.0}, teacher={**TEACHER, "skill": 0.5, "base_urls": ["a"]})
    new = _run(params={"simulations": 4, "c": 2.0}, teacher={**TEACHER, "skill": 0.7, "base_urls": ["b"]},
               task=TaskSpec("vstar", {"x": 1}))
    assert old.differences(new) == [
        "task: {'name': 'vstar', 'options': {}} -> {'name': 'vstar', 'options': {'x': 1}}",
        "params.simulations: 8 -> 4",
        "teacher.skill: 0.5 -> 0.7",  # where the teacher is served (base_urls) is not part of a run's identity
    ]
    assert old.differences(replace(old, limit=3, command="other")) == []


def test_sessions_accumulate_usage_and_keep_the_first_start(tmp_path):
    store = RunStore(tmp_path)
    store.start_session(_run(), resume=False)
    store.record_usage({"requests": 3, "cost_usd": 0.5, "model": "m"})  # during the run: not finished yet
    first = store.read_run()
    assert first.sessions[0]["finished"] is None and first.usage == {"requests": 3, "cost_usd": 0.5}
    store.record_usage({"requests": 4, "cost_usd": 0.75, "model": "m"}, finished=True)
    store.start_session(_run(limit=2), resume=True)
    store.record_usage({"requests": 5, "cost_usd": None, "model": "m"}, finished=True)
    run = store.read_run()
    assert run.started == first.started and run.limit == 2
    assert [s["usage"]["requests"] for s in run.sessions] == [4, 5]
    assert all(s["finished"] for s in run.sessions)
    # An unknown cost in one session leaves the total cost out rather than under-counting it.
    assert run.usage == {"requests": 9}


def test_a_new_run_starts_with_one_session(tmp_path):
    store = RunStore(tmp_path)
    store.write_run(_run(usage={"requests": 7}, sessions=[{"usage": {"requests": 7}}]))
    store.start_session(_run(), resume=False)
    run = store.read_run()
    assert len(run.sessions) == 1 and run.usage == {}


def test_recording_usage_without_a_session_names_run_json(tmp_path):
    with pytest.raises(DataError, match="run.json"):
        RunStore(tmp_path).record_usage({"requests": 1})


def test_an_output_folder_has_one_writer_and_a_dead_ones_lock_is_taken_over(tmp_path):
    import subprocess
    import sys

    from trace_forge.durable import OutputLock
    from trace_forge.errors import ConfigError

    out = tmp_path / "run"
    hold = "import sys, time\nfrom trace_forge.durable import OutputLock\nwith OutputLock(sys.argv[1], 'search'):\n" \
           "    print('held', flush=True)\n    time.sleep(60)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"{out} is in use by another process \(pid {holder.pid} search\)"):
            with OutputLock(out, "search"):
                pass
    finally:
        holder.kill()  # kill -9: no cleanup runs
        holder.wait()
    with OutputLock(out, "search"):  # the dead holder's lock is gone with it
        assert not out.exists()  # the claim creates nothing inside the folder
