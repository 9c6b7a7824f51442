"""Publish a dataset folder written by ``trace-forge linearize`` to the Hugging Face Hub, in one commit.

The folder already has the Hub repository's layout (``README.md`` card, ``provenance.json``, ``data/*.parquet``;
see :mod:`trace_forge.dataset`), so it is uploaded as it is: no staging copy, nothing left in a temporary folder
by a killed upload. Shards on the Hub under ``data/`` that are not part of this upload (an earlier, differently
sharded version) are deleted in the same commit. The card is deterministic, so publishing unchanged data twice
uploads nothing new and the Hub skips the commit.

The Hub token comes from the ``token`` argument or from ``huggingface_hub``'s own lookup (``HF_TOKEN``, the
login cache). It is handed to :class:`huggingface_hub.HfApi` and nowhere else: never written, never logged.

Example:
    >>> publish("runs/vstar/dataset-single", "my-org/vstar-grounded-traces")  # doctest: +SKIP
    'https://huggingface.co/datasets/my-org/vstar-grounded-traces/commit/5d9c...'
"""

from __future__ import annotations

import logging
from pathlib import Path

from trace_forge import __version__
from trace_forge.card import CARD, DATA_DIR, PROVENANCE
from trace_forge.durable import write_atomic
from trace_forge.errors import ConfigError, DataError

__all__ = ["check_dataset_dir", "publish", "set_license"]

log = logging.getLogger(__name__)

_UPLOADED = (CARD, PROVENANCE, f"{DATA_DIR}/*.parquet")


def check_dataset_dir(dataset_dir: str | Path) -> list[Path]:
    """The parquet shards of a dataset folder, checked to have its card.

    Raises:
        DataError: not a dataset folder written by ``trace-forge linearize`` (no card or no shards).
    """
    root = Path(dataset_dir)
    shards = sorted((root / DATA_DIR).glob("*.parquet"))
    if not (root / CARD).is_file() or not shards:
        hint = " (a dataset of trace-forge 0.1.0: re-run `trace-forge linearize`)" if (root / "hf").is_dir() else ""
        raise DataError(f"not a dataset written by `trace-forge linearize`: it needs {CARD} and "
                        f"{DATA_DIR}/*.parquet{hint}", path=root)
    return shards


def set_license(dataset_dir: str | Path, license_id: str) -> None:
    """Set the licence identifier in the card's metadata (the folder stays what the Hub will hold)."""
    from huggingface_hub import DatasetCard

    path = Path(dataset_dir) / CARD
    card = DatasetCard.load(path)
    card.data.license = license_id
    write_atomic(path, str(card))


def publish(
    dataset_dir: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    *,
    license_id: str | None = None,
) -> str:
    """Upload the dataset folder (card, provenance, parquet shards under ``data/``) in one commit.

    The repository is created if needed.

    Args:
        dataset_dir: a dataset folder written by ``trace-forge linearize``.
        repo_id: the Hub dataset id, ``ORG/NAME``.
        private: create the repository as private (an existing repository keeps its visibility).
        token: a Hub token; default: ``huggingface_hub``'s lookup (``HF_TOKEN``, then the login cache).
        license_id: set this licence identifier in the card first.

    Returns:
        The URL of the commit (of the latest commit when nothing changed).

    Raises:
        ConfigError: ``repo_id`` is not ``ORG/NAME``.
        DataError: not a dataset folder.
    """
    from huggingface_hub import HfApi

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"--repo-id must be ORG/NAME, got {repo_id!r}")
    shards = check_dataset_dir(dataset_dir)
    if license_id is not None:
        set_license(dataset_dir, license_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    info = api.upload_folder(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=str(dataset_dir),
        allow_patterns=list(_UPLOADED),
        delete_patterns=[f"{DATA_DIR}/*.parquet"],
        commit_message=f"trace-forge {__version__}: {len(shards)} shard(s)",
    )
    log.info("published %s to %s", dataset_dir, repo_id)
    return info.commit_url
