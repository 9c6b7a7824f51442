import json

import pytest

from trace_forge.errors import DataError
from trace_forge.search.store import RunStore, read_records


def _fill(store, n):
    for i in range(n):
        store.append({"question_id": f"q{i}", "tree": {"nodes": [i]}})


def test_append_and_read_back(tmp_path):
    store = RunStore(tmp_path / "run")
    _fill(store, 3)
    assert list(store.finished()) == ["q0", "q1", "q2"]


def test_torn_last_line_is_reported_ignored_and_cut(tmp_path, caplog):
    store = RunStore(tmp_path)
    _fill(store, 3)
    data = store.trees_path.read_bytes()
    store.trees_path.write_bytes(data[:-7])  # a kill mid-write of the last record
    with caplog.at_level("WARNING"):
        done = store.finished()
    assert list(done) == ["q0", "q1"]
    assert "torn last line" in caplog.text
    # The fragment is gone, so the next append starts on a clean line.
    store.append({"question_id": "q2", "tree": {}})
    assert [json.loads(x)["question_id"] for x in store.trees_path.read_text().splitlines()] == ["q0", "q1", "q2"]


def test_corruption_in_the_middle_names_file_and_line(tmp_path):
    store = RunStore(tmp_path)
    _fill(store, 3)
    lines = store.trees_path.read_text().splitlines()
    lines[1] = lines[1][:10]
    store.trees_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"trees.jsonl:2"):
        list(read_records(store.trees_path))


def test_run_json_is_atomic_and_round_trips(tmp_path):
    store = RunStore(tmp_path)
    store.write_run_json({"command": "search", "params": {"simulations": 8}})
    assert store.read_run_json()["params"]["simulations"] == 8
    assert not list(tmp_path.glob(".*.tmp"))


def test_sessions_accumulate_usage_and_keep_the_first_start(tmp_path):
    store = RunStore(tmp_path)
    store.start_session({"task": "vstar"}, resume=False)
    store.record_usage({"requests": 3, "cost_usd": 0.5, "model": "m"})  # during the run: not finished yet
    first = store.read_run_json()
    assert first["sessions"][0]["finished"] is None and first["usage"] == {"requests": 3, "cost_usd": 0.5}
    store.record_usage({"requests": 4, "cost_usd": 0.75, "model": "m"}, finished=True)
    store.start_session({"task": "vstar", "limit": 2}, resume=True)
    store.record_usage({"requests": 5, "cost_usd": None, "model": "m"}, finished=True)
    run = store.read_run_json()
    assert run["started"] == first["started"] and run["limit"] == 2
    assert [s["usage"]["requests"] for s in run["sessions"]] == [4, 5]
    assert all(s["finished"] for s in run["sessions"])
    # An unknown cost in one session leaves the total cost out rather than under-counting it.
    assert run["usage"] == {"requests": 9}


def test_a_run_json_from_before_sessions_keeps_its_usage_on_resume(tmp_path):
    store = RunStore(tmp_path)
    store.write_run_json({"task": "vstar", "started": "2024-01-01T00:00:00Z", "usage": {"requests": 7}})
    store.start_session({"task": "vstar"}, resume=True)
    store.record_usage({"requests": 2}, finished=True)
    run = store.read_run_json()
    assert run["started"] == "2024-01-01T00:00:00Z"
    assert run["usage"] == {"requests": 9} and len(run["sessions"]) == 2


def test_a_new_run_starts_with_one_session(tmp_path):
    store = RunStore(tmp_path)
    store.write_run_json({"task": "old", "usage": {"requests": 7}, "sessions": [{"usage": {"requests": 7}}]})
    store.start_session({"task": "vstar"}, resume=False)
    run = store.read_run_json()
    assert run["task"] == "vstar" and len(run["sessions"]) == 1 and "usage" not in run


def test_recording_usage_without_a_session_names_run_json(tmp_path):
    with pytest.raises(DataError, match="run.json"):
        RunStore(tmp_path).record_usage({"requests": 1})
