"""The dataset card written with a dataset, and publishing it to the Hub with HfApi replaced at its boundary: what
would be uploaded, the card, the token."""

import hashlib
import json
import logging
import re
import tempfile
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
from trace_forge.card import PROVENANCE, Provenance
from trace_forge.cli import app
from trace_forge.dataset import linearize_run
from trace_forge.errors import ConfigError, DataError
from trace_forge.publish import publish
from trace_forge.tasks import get_task

TOKEN = "hf_secret_test_token"
SIM = {"backend": "sim", "model": "sim-teacher-v1", "simulated": True}
PARAMS = {"simulations": 8, "children": 3, "rollouts": 2}
REPO = "my-org/vstar-traces"
runner = CliRunner()


def _build(root: Path, teacher: dict) -> tuple[Path, Path, dict[str, int]]:
    """A run of two V* questions with ``teacher`` and its single-turn dataset (one question per split)."""
    records = [make_record(example_tree(), sample, teacher=teacher) for sample in list(vstar_samples().values())[:2]]
    run = write_run(root / "run", records, teacher=teacher, params=PARAMS)
    counts = linearize_run(run, root / "ds", "single", val_fraction=0.5)
    return root / "ds", run, {split: sum(kinds.values()) for split, kinds in counts.rows.items()}


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


def _card(text: str) -> tuple[dict, str]:
    match = re.fullmatch(r"---\n(.*?\n)---\n(.*)", text, re.DOTALL)  # the front matter the Hub reads
    assert match, text[:300]
    meta = yaml.safe_load(match[1])
    assert DatasetCard(text).data.to_dict() == meta  # huggingface_hub's own reader agrees
    return meta, match[2]


def test_one_commit_uploads_the_folder_as_it_is(sim_dataset, hub):
    ds_dir, _, _ = sim_dataset
    url = publish(ds_dir, REPO)
    assert hub.create == [(REPO, {"repo_type": "dataset", "private": False, "exist_ok": True})]
    (upload,) = hub.upload
    assert upload["repo_id"] == REPO and upload["repo_type"] == "dataset"
    assert upload["delete_patterns"] == ["data/*.parquet"]  # stale shards of another sharding go in the commit
    (payload,) = hub.payloads
    on_disk = {p.relative_to(ds_dir).as_posix(): p.read_bytes() for p in ds_dir.rglob("*") if p.is_file()}
    assert payload == on_disk and set(payload) == {
        "README.md", "provenance.json", "data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet"}
    assert url.startswith(f"https://huggingface.co/datasets/{REPO}/commit/")
    assert not list(Path(tempfile.gettempdir()).glob("trace-forge-publish-*"))  # nothing staged anywhere


def test_card_metadata_columns_frame_counts_teacher_and_simulated_warning(sim_dataset, hub):
    ds_dir, run_dir, sizes = sim_dataset
    meta, body = _card((ds_dir / "README.md").read_text())
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
    assert "`sim:sim-teacher-v1`" in body
    assert f"{sizes['train'] + sizes['validation']} chains in all" in body
    for split in ("train", "validation"):
        assert re.search(rf"\| {split} \| 1 \| \d \| \d \| {sizes[split]} \|", body)
    assert "| direct_attributes | 2/2 (100%) | 2 |" in body  # yield from the run's trees
    assert '"simulations": 8' in body  # search parameters from run.json
    assert get_task("vstar").license_note in body
    # The row schema and the frame of the points are documented.
    assert "**Coordinate frame: `pixel`**" in body and "| `answer_point` |" in body and "| `frame` |" in body
    provenance = Provenance.from_dict(json.loads((ds_dir / PROVENANCE).read_text()))
    assert provenance.view == {"frame": "pixel", "resize": None} and provenance.simulated


def test_token_never_leaves_through_files_logs_or_output(sim_dataset, hub, caplog, capsys):
    ds_dir, _, _ = sim_dataset
    with caplog.at_level(logging.DEBUG):
        publish(ds_dir, REPO)
        result = runner.invoke(app, ["publish", str(ds_dir), "--repo-id", REPO])
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


def test_the_same_run_gives_the_identical_payload(tmp_path, hub):
    first, run_dir, _ = _build(tmp_path, SIM)
    linearize_run(run_dir, tmp_path / "again", "single", val_fraction=0.5)
    publish(first, REPO)
    publish(tmp_path / "again", REPO)
    assert hub.payloads[0] == hub.payloads[1]
    assert hub.upload[0]["commit_message"] == hub.upload[1]["commit_message"]


def test_license_and_card_only(sim_dataset, hub):
    ds_dir, _, _ = sim_dataset
    card = runner.invoke(app, ["publish", str(ds_dir), "--repo-id", REPO, "--card-only"])
    assert card.exit_code == 0 and card.stdout == (ds_dir / "README.md").read_text() and not hub.upload
    publish(ds_dir, REPO, license_id="cc-by-4.0")
    meta, body = _card(hub.payloads[0]["README.md"].decode())
    assert meta["license"] == "cc-by-4.0" and "2/2 (100%)" in body
    assert _card((ds_dir / "README.md").read_text())[0]["license"] == "cc-by-4.0"  # the folder is what the Hub has


def test_a_generic_run_keeps_its_task_options_in_provenance(tmp_path):
    run_dir, _ = write_generic_run(tmp_path / "run", tmp_path / "data")
    ds_dir = run_dir / "dataset-single"
    linearize_run(run_dir, ds_dir, "single", val_fraction=0)
    prov = Provenance.from_dict(json.loads((ds_dir / PROVENANCE).read_text()))
    assert prov.task == {"name": "generic", "options": GENERIC_OPTIONS}
    assert prov.yield_by_category == {"mapped": {"questions": 1, "solved": 1}}
    body = (ds_dir / "README.md").read_text()
    assert get_task("generic", **GENERIC_OPTIONS).license_note in body and "| mapped | 1/1 (100%) | 1 | 5 |" in body


def test_a_real_teacher_gets_no_simulated_warning(tmp_path):
    ds_dir, _, _ = _build(tmp_path, TEACHER)
    body = (ds_dir / "README.md").read_text()
    assert "Simulated" not in body and "[!WARNING]" not in body
    assert TEACHER["model"] in body


def test_bad_repo_id_and_not_a_dataset(sim_dataset, tmp_path, hub):
    ds_dir, _, _ = sim_dataset
    with pytest.raises(ConfigError, match="ORG/NAME"):
        publish(ds_dir, "no-org")
    with pytest.raises(DataError, match="README.md and data"):
        publish(tmp_path / "empty", REPO)
    (tmp_path / "old" / "hf").mkdir(parents=True)
    with pytest.raises(DataError, match="0.1.0"):
        publish(tmp_path / "old", REPO)
    assert hub.create == [] and hub.upload == []
