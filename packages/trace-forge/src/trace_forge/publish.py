"""Publish a linearized dataset to the Hugging Face Hub: its parquet shards and a dataset card, in one commit.

The card is computed from the data itself (the parquet shards about to be uploaded) and from the provenance of
the search that produced it: ``DIR/provenance.json`` when present (written by :func:`write_provenance`), else
built from the dataset columns and, optionally, the search run directory (``run.json``, ``trees.jsonl``).
Nothing in the card depends on the clock or the machine, so publishing unchanged data twice uploads identical
bytes, and the Hub skips the commit.

The Hub token comes from the ``token`` argument or from ``huggingface_hub``'s own lookup (``HF_TOKEN``, the
login cache). It is handed to :class:`huggingface_hub.HfApi` and nowhere else: never written, never logged.

Example:
    >>> publish("runs/vstar/dataset-single", "my-org/vstar-grounded-traces")  # doctest: +SKIP
    'https://huggingface.co/datasets/my-org/vstar-grounded-traces/commit/5d9c...'
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trace_forge import __version__
from trace_forge.errors import ConfigError, DataError

__all__ = [
    "PROVENANCE",
    "Provenance",
    "DataSummary",
    "build_provenance",
    "load_provenance",
    "write_provenance",
    "summarize",
    "render_card",
    "publish",
]

log = logging.getLogger(__name__)

PROVENANCE = "provenance.json"
PARQUET_DIR = "parquet"
HUB_DATA_DIR = "data"
TAGS = ("vigorl", "grounded-reasoning", "mcts")
TASK_CATEGORIES = ("image-text-to-text", "visual-question-answering")
_SUMMARY_COLUMNS = [
    "question_id",
    "task",
    "category",
    "kind",
    "mode",
    "correct",
    "teacher",
    "simulated",
    "prompt_version",
]


@dataclass
class Provenance:
    """Where a dataset came from: the ``provenance.json`` format (one JSON object with these keys).

    Attributes:
        task: the benchmark the questions came from (a registered task name).
        teacher: the teacher VLM as the search recorded it (``name`` or ``backend``, ``model``,
        ``simulated``).
        prompt_version: version of the prompts the chains were written with.
        search: the search parameters (``run.json`` ``params``), when known.
        run: the search command, data directory and split (``run.json``), when known.
        versions: package versions of the search (``run.json`` ``versions``) and of this trace-forge.
        yield_by_category: per category, questions searched and questions with a correct trajectory (from the
            run's trees), when known.
        license: the licence identifier of the source benchmark for the card's metadata; None: unknown.
    """

    task: str
    teacher: dict[str, Any]
    prompt_version: str
    search: dict[str, Any] | None = None
    run: dict[str, Any] | None = None
    versions: dict[str, Any] = field(default_factory=dict)
    yield_by_category: dict[str, dict[str, int]] | None = None
    license: str | None = None

    @property
    def simulated(self) -> bool:
        """Whether the traces come from the simulated teacher (test plumbing, not real reasoning)."""
        return bool(self.teacher.get("simulated")) or _teacher_name(self.teacher) == "sim"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Provenance:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


@dataclass
class DataSummary:
    """Counts read from the parquet shards: what the card reports and the metadata ``configs`` point to.

    Attributes:
        shards: shard paths by split, sorted.
        rows: chains by split and kind (``direct`` / ``backtracking``).
        questions: distinct questions by split.
        categories: per category, distinct questions and chains (all splits).
        modes: the dialog modes present (``single`` / ``multi``).
        tasks, teachers, prompt_versions: distinct values of those columns.
        simulated: whether any row comes from a simulated teacher.
    """

    shards: dict[str, list[Path]]
    rows: dict[str, dict[str, int]]
    questions: dict[str, int]
    categories: dict[str, dict[str, int]]
    modes: list[str]
    tasks: list[str]
    teachers: list[str]
    prompt_versions: list[str]
    simulated: bool

    @property
    def total_rows(self) -> int:
        return sum(sum(kinds.values()) for kinds in self.rows.values())


def _teacher_name(teacher: dict[str, Any]) -> str:
    # The search records the backend name under "backend"; older records and the brief call it "name".
    return str(teacher.get("name") or teacher.get("backend") or "")


def _split_of(shard: Path) -> str:
    """``train-00000-of-00002.parquet`` -> ``train`` (the Hub's split naming)."""
    return shard.name.split("-", 1)[0]


def summarize(dataset_dir: str | Path) -> DataSummary:
    """Count what the parquet shards of ``dataset_dir/parquet`` hold (only the light columns are read).

    Raises:
        DataError: no parquet shard, or a shard without the dataset columns.
    """
    import pyarrow.parquet as pq

    folder = Path(dataset_dir) / PARQUET_DIR
    paths = sorted(folder.glob("*.parquet"))
    if not paths:
        raise DataError(
            f"no parquet shards in {folder} (write the dataset with `trace-forge linearize`)", path=folder
        )
    shards: dict[str, list[Path]] = defaultdict(list)
    rows: dict[str, Counter[str]] = {}
    questions: dict[str, set[str]] = defaultdict(set)
    cat_questions: dict[str, set[str]] = defaultdict(set)
    cat_rows: Counter[str] = Counter()
    seen: dict[str, set[Any]] = defaultdict(set)
    for path in paths:
        split = _split_of(path)
        shards[split].append(path)
        kinds = rows.setdefault(split, Counter())  # an empty shard still names its split
        try:
            table = pq.read_table(path, columns=_SUMMARY_COLUMNS).to_pylist()
        except (KeyError, ValueError, OSError) as e:
            raise DataError(f"not a trace-forge dataset shard ({e})", path=path) from e
        for row in table:
            kinds[row["kind"]] += 1
            questions[split].add(row["question_id"])
            cat_questions[row["category"]].add(row["question_id"])
            cat_rows[row["category"]] += 1
            for column in ("mode", "task", "teacher", "prompt_version", "simulated"):
                seen[column].add(row[column])
    return DataSummary(
        shards=dict(sorted(shards.items())),
        rows={split: dict(sorted(kinds.items())) for split, kinds in sorted(rows.items())},
        questions={split: len(q) for split, q in sorted(questions.items())},
        categories={c: {"questions": len(cat_questions[c]), "chains": cat_rows[c]} for c in sorted(cat_rows)},
        modes=sorted(seen["mode"]),
        tasks=sorted(seen["task"]),
        teachers=sorted(seen["teacher"]),
        prompt_versions=sorted(seen["prompt_version"]),
        simulated=any(seen["simulated"]),
    )


def build_provenance(dataset_dir: str | Path, run_dir: str | Path | None = None) -> Provenance:
    """Provenance from the dataset columns, completed from the search run directory.

    ``run_dir`` defaults to the dataset's parent folder when that holds a ``run.json`` (``linearize`` writes
    ``RUN/dataset-<mode>``). Without a run the teacher is only what the ``teacher`` column says
    (``"<name>:<model>"``) and the search parameters and per-category yield are unknown.

    Raises:
        DataError: the dataset mixes tasks or prompt versions, or ``run_dir`` is not a run directory.
    """
    from trace_forge.search.store import RUN_JSON, RunStore
    from trace_forge.stats import run_stats

    if run_dir is None and (Path(dataset_dir).parent / RUN_JSON).is_file():
        run_dir = Path(dataset_dir).parent
    summary = summarize(dataset_dir)
    for column, values in (("task", summary.tasks), ("prompt_version", summary.prompt_versions)):
        if len(values) != 1:
            raise DataError(f"expected one {column} in the dataset, found {values}", path=dataset_dir)
    name, _, model = summary.teachers[0].partition(":") if summary.teachers else ("", "", "")
    prov = Provenance(
        task=summary.tasks[0],
        teacher={"name": name, "model": model, "simulated": summary.simulated},
        prompt_version=summary.prompt_versions[0],
        versions={"trace_forge": __version__},
    )
    if run_dir is not None:
        run = RunStore(run_dir).read_run_json() if Path(run_dir).is_dir() else None
        if run is None:
            raise DataError("not a run directory (no run.json)", path=run_dir)
        stats = run_stats(run_dir)
        prov.teacher = {**prov.teacher, **(run.get("teacher") or {})}
        prov.teacher.pop("usage", None)  # spend is not provenance, and would change with every resumed run
        prov.search = run.get("params")
        prov.run = {k: run.get(k) for k in ("command", "data_dir", "split", "task_options")}
        prov.versions = {**(run.get("versions") or {}), **prov.versions}
        prov.yield_by_category = {
            name: {"questions": c.questions, "solved": c.solved} for name, c in stats.categories.items()
        }
    return prov


def write_provenance(dataset_dir: str | Path, provenance: Provenance) -> Path:
    """Write ``dataset_dir/provenance.json`` (sorted keys, so equal provenance gives equal bytes)."""
    path = Path(dataset_dir) / PROVENANCE
    path.write_text(json.dumps(provenance.to_dict(), indent=2, sort_keys=True) + "\n")
    return path


def load_provenance(dataset_dir: str | Path, run_dir: str | Path | None = None) -> Provenance:
    """``dataset_dir/provenance.json`` if present, else :func:`build_provenance`.

    Raises:
        DataError: ``provenance.json`` is not valid JSON or lacks ``task``, ``teacher`` or ``prompt_version``.
    """
    path = Path(dataset_dir) / PROVENANCE
    if not path.exists():
        return build_provenance(dataset_dir, run_dir)
    try:
        return Provenance.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as e:
        raise DataError(f"not a provenance file ({e})", path=path) from e


# ------------------------------------------------------------------------------------------------------------
# The card
# ------------------------------------------------------------------------------------------------------------


def _metadata(provenance: Provenance, summary: DataSummary, license_id: str | None) -> str:
    from huggingface_hub import DatasetCardData

    data_files = [{"split": split, "path": f"{HUB_DATA_DIR}/{split}-*.parquet"} for split in summary.shards]
    card_data = DatasetCardData(
        license=license_id or provenance.license or "other",
        task_categories=list(TASK_CATEGORIES),
        tags=list(TAGS),
        configs=[{"config_name": "default", "data_files": data_files}],
    )
    return card_data.to_yaml().rstrip("\n") + "\n"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _json_block(value: Any) -> str:
    return "```json\n" + json.dumps(value, indent=2, sort_keys=True) + "\n```"


def _license_note(provenance: Provenance) -> str:
    from trace_forge.tasks import get_task, task_names

    if provenance.task not in task_names():
        return ""
    return get_task(provenance.task, **((provenance.run or {}).get("task_options") or {})).license_note


def render_card(
    repo_id: str, provenance: Provenance, summary: DataSummary, license_id: str | None = None
) -> str:
    """The dataset card (``README.md``): YAML metadata, then what the data is, how it was made, and counts.

    Args:
        repo_id: the Hub dataset id, used as the title.
        provenance: where the data came from.
        summary: counts of the shards being published (:func:`summarize`).
        license_id: licence identifier for the metadata; default: ``provenance.license``, else ``"other"``.

    Returns:
        Markdown with front matter; a pure function of its arguments (no dates), so re-publishing is a no-op.
    """
    simulated = provenance.simulated or summary.simulated
    teacher = provenance.teacher
    parts = [f"---\n{_metadata(provenance, summary, license_id)}---", f"# {repo_id}"]
    if simulated:
        parts.append(
            "> [!WARNING]\n"
            "> **Simulated teacher.** These traces were written by trace-forge's `sim` teacher, a scripted "
            "stand-in used to test the pipeline. They are not reasoning by a real model: do not train or "
            "evaluate on them."
        )
    modes = " and ".join(f"{m}-turn" for m in summary.modes)
    parts.append(
        "## What it is\n\n"
        f"Visually grounded reasoning chains for the **{provenance.task}** benchmark, in the style of ViGoRL "
        "([arXiv 2505.23678](https://arxiv.org/abs/2505.23678)): every reasoning step names the image point "
        "`(x, y)` it is about. "
        f"Chains are {modes} chats in TRL's conversational vision format (`messages` + `images`); multi-turn "
        "chats zoom on a point through a `zoom` tool call and receive the crop as a `tool` turn. Points in "
        "the text and in `steps` are pixels of the first image (the sample canvas). `kind` is `direct` (a "
        "correct path) or `backtracking` (a wrong path, a sentence admitting it, then a correct path); "
        "`correct` and `reward` are the benchmark verifier's judgement of the final answer."
    )
    made = [
        f"- Teacher: `{_teacher_name(teacher) or 'unknown'}`, model `{teacher.get('model') or 'unknown'}`"
        + (" (simulated)" if simulated else ""),
        f"- Prompt version: `{provenance.prompt_version}`",
        f"- trace-forge version: `{provenance.versions.get('trace_forge', __version__)}`",
    ]
    if provenance.run:
        made.append(f"- Source split: `{provenance.run.get('split') or 'default'}`")
    how = (
        "## How it was made\n\nMonte Carlo tree search over teacher-written grounded steps; each step and "
        "rollout answer was scored by the benchmark's official verifier, and the trees were linearized into "
        "chains with `trace-forge linearize`.\n\n" + "\n".join(made)
    )
    if provenance.search:
        how += "\n\nSearch parameters:\n\n" + _json_block(provenance.search)
    other_versions = {k: v for k, v in provenance.versions.items() if k != "trace_forge"}
    if other_versions:
        how += "\n\nVersions used by the search:\n\n" + _json_block(other_versions)
    parts.append(how)

    kinds = sorted({k for split in summary.rows.values() for k in split})
    split_rows = [
        [
            split,
            summary.questions.get(split, 0),
            *(summary.rows[split].get(k, 0) for k in kinds),
            sum(summary.rows[split].values()),
        ]
        for split in summary.rows
    ]
    parts.append(
        "## Counts\n\n"
        + _table(["split", "questions", *kinds, "chains"], split_rows)
        + f"\n\n{summary.total_rows} chains in all."
    )

    yield_rows = []
    for category, counts in summary.categories.items():
        searched = (provenance.yield_by_category or {}).get(category)
        if searched:
            solved, total = searched["solved"], searched["questions"]
            share = f"{solved}/{total} ({solved / total:.0%})"
        else:
            share = "unknown"
        yield_rows.append([category or "-", share, counts["questions"], counts["chains"]])
    parts.append(
        "## Per-category yield\n\nQuestions searched with at least one correct trajectory, and what "
        "reached the dataset.\n\n"
        + _table(["category", "solved / searched", "questions", "chains"], yield_rows)
    )
    note = _license_note(provenance)
    parts.append(
        "## Licence of the source benchmark\n\n"
        + (note + "." if note and not note.endswith(".") else note or "See the source benchmark's licence.")
        + " The images in this dataset come from it and keep its terms; the reasoning text was written by "
        "the teacher model above, whose terms of use may also apply."
    )
    return "\n\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------------------
# Upload
# ------------------------------------------------------------------------------------------------------------


def _stage(folder: Path, summary: DataSummary, card: str) -> None:
    """The repo layout in ``folder``: ``README.md`` and ``data/<shard>``; shards are hard links when
    possible."""
    data = folder / HUB_DATA_DIR
    data.mkdir()
    for paths in summary.shards.values():
        for path in paths:
            try:
                os.link(path, data / path.name)
            except OSError:  # another file system: copy instead
                shutil.copyfile(path, data / path.name)
    (folder / "README.md").write_text(card, encoding="utf-8")


def publish(
    dataset_dir: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    *,
    run_dir: str | Path | None = None,
    license_id: str | None = None,
) -> str:
    """Upload the parquet shards (as ``data/``) and the dataset card (``README.md``) in one commit.

    The repository is created if needed. Shards on the Hub under ``data/`` that are not part of this upload
    (an earlier, differently sharded version) are deleted in the same commit. Unchanged content uploads
    nothing
    new: the card is deterministic and the Hub skips files whose content it already has.

    Args:
        dataset_dir: a dataset written by ``trace-forge linearize`` (``parquet/{split}-*.parquet``).
        repo_id: the Hub dataset id, ``ORG/NAME``.
        private: create the repository as private (an existing repository keeps its visibility).
        token: a Hub token; default: ``huggingface_hub``'s lookup (``HF_TOKEN``, then the login cache).
        run_dir: the search run directory, to complete provenance when ``provenance.json`` is absent (default:
            ``dataset_dir``'s parent when it holds a ``run.json``).
        license_id: licence identifier for the card metadata (default: from provenance, else ``"other"``).

    Returns:
        The URL of the commit (of the latest commit when nothing changed).

    Raises:
        ConfigError: ``repo_id`` is not ``ORG/NAME``.
        DataError: no shards, or unreadable provenance.
    """
    from huggingface_hub import HfApi

    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ConfigError(f"--repo-id must be ORG/NAME, got {repo_id!r}")
    summary = summarize(dataset_dir)
    card = render_card(repo_id, load_provenance(dataset_dir, run_dir), summary, license_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="trace-forge-publish-") as tmp:
        _stage(Path(tmp), summary, card)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="dataset",
            folder_path=tmp,
            commit_message=f"trace-forge {__version__}: {summary.total_rows} chains",
            delete_patterns=[f"{HUB_DATA_DIR}/*.parquet"],
        )
    log.info("published %d chains to %s", summary.total_rows, repo_id)
    return info.commit_url
