"""Publishing to the Hub, with HfApi replaced at its boundary: what would be uploaded, the card, the token."""

import hashlib
import logging
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub import DatasetCard, HfApi
from typer.testing import CliRunner

from tests.trace_forge.fixtures_trees import (
    GENERIC_OPTIONS,
    TEACHER,
    example_tree,
    make_record,
    vstar_samples,
    write_generic_run,
    write_run,
)
from trace_forge.cli import app
from trace_forge.dataset import linearize_run
from trace_forge.errors import ConfigError, DataError
from trace_forge.publish import (
    PROVENANCE,
    build_provenance,
    load_provenance,
    publish,
    render_card,
    summarize,
    write_provenance,
)
from trace_forge.search.store import RunStore
from trace_forge.tasks import get_task

TOKEN = "hf_secret_test_token"
SIM = {"name": "sim", "model": "sim-teacher-v1", "simulated": True}
PARAMS = {"simulations": 8, "children": 3, "rollouts": 2}
REPO = "my-org/vstar-traces"
runner = CliRunner()


def _build(root: Path, teacher: dict) -> tuple[Path, Path, dict[str, int]]:
    """A run of two V* questions with ``teacher`` and its single-turn dataset (one question per split)."""
    records = []
    for sample in list(vstar_samples().values())[:2]:
        record = make_record(example_tree(), sample)
        record["teacher"] = dict(teacher)
        records.append(record)
    run = write_run(root / "run", records)
    store = RunStore(run)
    store.write_run_json({**store.read_run_json(), "teacher": dict(teacher), "params": PARAMS})
    ds = linearize_run(run, root / "ds", "single", val_fraction=0.5)
    return root / "ds", run, {split: len(d) for split, d in ds.items()}


@pytest.fixture
def sim_dataset(tmp_path):
    return _build(tmp_path, SIM)


@pytest.fixture
def hub(monkeypatch):
    """HfApi.create_repo / upload_folder recorded, not sent; the uploaded folder is captured byte by byte."""
    calls = SimpleNamespace(create=[], upload=[], payloads=[], tokens=[])

    def create_repo(api, repo_id, **kwargs):
        calls.create.append((repo_id, kwargs))
        calls.tokens.append(api.token)

    def upload_folder(api, **kwargs):
        folder = Path(kwargs.pop("folder_path"))
        payload = {
            p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
        }
        calls.upload.append(kwargs)
        calls.payloads.append(payload)
        calls.tokens.append(api.token)
        digest = hashlib.sha1(b"".join(payload[k] for k in sorted(payload))).hexdigest()
        return SimpleNamespace(
            commit_url=f"https://huggingface.co/datasets/{kwargs['repo_id']}/commit/{digest}"
        )

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return calls


def _card(payload) -> tuple[dict, str]:
    text = payload["README.md"].decode()
    match = re.fullmatch(r"---\n(.*?\n)---\n(.*)", text, re.DOTALL)  # the front matter the Hub reads
    assert match, text[:300]
    meta = yaml.safe_load(match[1])
    assert DatasetCard(text).data.to_dict() == meta  # huggingface_hub's own reader agrees
    return meta, match[2]


def test_one_commit_with_the_shards_under_data_and_the_card(sim_dataset, hub):
    ds_dir, _, _ = sim_dataset
    url = publish(ds_dir, REPO)
    assert hub.create == [(REPO, {"repo_type": "dataset", "private": False, "exist_ok": True})]
    (upload,) = hub.upload
    assert upload["repo_id"] == REPO and upload["repo_type"] == "dataset"
    assert upload["delete_patterns"] == [
        "data/*.parquet"
    ]  # stale shards of another sharding go in the same commit
    (payload,) = hub.payloads
    shards = sorted((ds_dir / "parquet").glob("*.parquet"))
    assert set(payload) == {"README.md", *(f"data/{p.name}" for p in shards)}
    assert {f"data/{p.name}": p.read_bytes() for p in shards} == {
        k: v for k, v in payload.items() if k != "README.md"
    }
    assert url.startswith(f"https://huggingface.co/datasets/{REPO}/commit/")


def test_card_metadata_counts_teacher_and_simulated_warning(sim_dataset, hub):
    ds_dir, run_dir, sizes = sim_dataset
    publish(ds_dir, REPO, private=True, run_dir=run_dir)
    assert hub.create[0][1]["private"] is True
    meta, body = _card(hub.payloads[0])
    assert meta["license"] == "other"
    assert set(meta["tags"]) == {"vigorl", "grounded-reasoning", "mcts"}
    assert meta["configs"] == [
        {
            "config_name": "default",
            "data_files": [
                {"split": "train", "path": "data/train-*.parquet"},
                {"split": "validation", "path": "data/validation-*.parquet"},
            ],
        }
    ]
    assert "[!WARNING]" in body and "Simulated teacher" in body
    assert "`sim`" in body and "sim-teacher-v1" in body
    assert f"{sizes['train'] + sizes['validation']} chains in all" in body
    summary = summarize(ds_dir)
    for split in ("train", "validation"):
        kinds = summary.rows[split]
        assert f"| {split} | 1 | {kinds['backtracking']} | {kinds['direct']} | {sizes[split]} |" in body
    assert "| direct_attributes | 2/2 (100%) | 2 |" in body  # yield from the run's trees
    assert '"simulations": 8' in body  # search parameters from run.json
    assert get_task("vstar").license_note in body


def test_token_never_leaves_through_files_logs_or_output(sim_dataset, hub, caplog, capsys):
    ds_dir, run_dir, _ = sim_dataset
    with caplog.at_level(logging.DEBUG):
        publish(ds_dir, REPO, run_dir=run_dir)
        result = runner.invoke(app, ["publish", str(ds_dir), "--repo-id", REPO, "--run-dir", str(run_dir)])
        publish(ds_dir, REPO, token="hf_explicit_argument_token")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith(f"https://huggingface.co/datasets/{REPO}/commit/")
    # The env token is left to huggingface_hub's own lookup; an explicit one reaches the client and only it.
    assert hub.tokens == [None, None, None, None, "hf_explicit_argument_token", "hf_explicit_argument_token"]
    for payload in hub.payloads:
        for name, data in payload.items():
            assert TOKEN.encode() not in data and b"hf_explicit_argument_token" not in data, name
    assert TOKEN not in caplog.text and TOKEN not in result.output
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    for path in ds_dir.rglob("*"):
        assert not path.is_file() or TOKEN.encode() not in path.read_bytes()


def test_republishing_uploads_the_identical_payload(sim_dataset, hub):
    ds_dir, run_dir, _ = sim_dataset
    first = publish(ds_dir, REPO, run_dir=run_dir)
    second = publish(ds_dir, REPO, run_dir=run_dir)
    assert hub.payloads[0] == hub.payloads[1]
    assert hub.upload[0]["commit_message"] == hub.upload[1]["commit_message"]
    assert first == second


def test_provenance_file_round_trip_and_precedence(sim_dataset, hub):
    ds_dir, run_dir, _ = sim_dataset
    summary = summarize(ds_dir)
    from_run = render_card(REPO, build_provenance(ds_dir, run_dir), summary)
    prov = build_provenance(ds_dir, run_dir)
    write_provenance(ds_dir, prov)
    assert load_provenance(ds_dir) == prov
    assert render_card(REPO, load_provenance(ds_dir), summary) == from_run
    prov.license = "cc-by-4.0"
    write_provenance(ds_dir, prov)
    publish(ds_dir, REPO)  # no --run-dir: provenance.json is read
    meta, body = _card(hub.payloads[0])
    assert meta["license"] == "cc-by-4.0" and "2/2 (100%)" in body
    assert PROVENANCE not in hub.payloads[0]


def test_without_run_dir_provenance_comes_from_the_columns(sim_dataset):
    ds_dir, _, _ = sim_dataset
    (ds_dir / PROVENANCE).unlink()  # a dataset copied away from its run, without the file linearize wrote
    prov = load_provenance(ds_dir)
    assert (prov.task, prov.teacher["name"], prov.teacher["model"], prov.simulated) == (
        "vstar",
        "sim",
        "sim-teacher-v1",
        True,
    )
    assert prov.search is None and prov.yield_by_category is None
    body = render_card(REPO, prov, summarize(ds_dir), license_id="mit")
    assert "| direct_attributes | unknown | 2 |" in body
    assert body.startswith("---\nlicense: mit\n")


def test_the_readme_publish_command_needs_no_run_dir(tmp_path, hub):
    _, run_dir, _ = _build(tmp_path, SIM)
    ds_dir = run_dir / "dataset-single"  # where `trace-forge linearize RUN --mode single` writes
    linearize_run(run_dir, ds_dir, "single", val_fraction=0.5)
    result = runner.invoke(app, ["publish", str(ds_dir), "--repo-id", REPO])
    assert result.exit_code == 0, result.output
    (ds_dir / PROVENANCE).unlink()  # a dataset from before linearize wrote provenance.json: DIR/.. is the run
    publish(ds_dir, REPO)
    for payload in hub.payloads:
        _, body = _card(payload)
        assert '"simulations": 8' in body  # search parameters from run.json
        assert "| direct_attributes | 2/2 (100%) | 2 |" in body  # per-category yield from the run's trees


def test_a_generic_run_keeps_its_task_options_in_provenance(tmp_path):
    run_dir, _ = write_generic_run(tmp_path / "run", tmp_path / "data")
    ds_dir = run_dir / "dataset-single"
    linearize_run(run_dir, ds_dir, "single", val_fraction=0)
    prov = load_provenance(ds_dir)
    assert prov.run["task_options"] == GENERIC_OPTIONS
    assert prov.yield_by_category == {"mapped": {"questions": 1, "solved": 1}}
    body = render_card(REPO, prov, summarize(ds_dir))
    assert get_task("generic", **GENERIC_OPTIONS).license_note in body and "| mapped | 1/1 (100%) | 1 | 5 |" in body


def test_a_real_teacher_gets_no_simulated_warning(tmp_path):
    ds_dir, run_dir, _ = _build(tmp_path, TEACHER)
    body = render_card(REPO, load_provenance(ds_dir, run_dir), summarize(ds_dir))
    assert "Simulated" not in body and "[!WARNING]" not in body
    assert TEACHER["model"] in body


def test_bad_repo_id_and_missing_shards(sim_dataset, tmp_path, hub):
    ds_dir, _, _ = sim_dataset
    with pytest.raises(ConfigError, match="ORG/NAME"):
        publish(ds_dir, "no-org")
    with pytest.raises(DataError, match="no parquet shards"):
        publish(tmp_path / "empty", REPO)
    assert hub.create == [] and hub.upload == []
