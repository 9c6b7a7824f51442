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
