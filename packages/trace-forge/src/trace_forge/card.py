"""A dataset's provenance and its card (``README.md``): what the data is, how it was made, its columns and counts.

:mod:`trace_forge.dataset` writes both next to the parquet shards when it writes a dataset, from the counts it
gathered while writing and from the search run; ``trace-forge publish`` uploads the folder as it is. The card's
YAML metadata declares the splits' data files, so ``datasets.load_dataset(DIR)`` reads the folder the way it reads
the Hub repository. Nothing in the card depends on the clock or the machine, so writing unchanged data twice gives
identical bytes (and publishing it twice uploads nothing new).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from trace_forge import __version__
from trace_forge.search.records import RunRecord
from trace_forge.stats import run_stats
from trace_forge.tasks.prompts import PROMPT_VERSION

__all__ = ["DATA_DIR", "PROVENANCE", "CARD", "Provenance", "DataCounts", "render_card", "teacher_label"]

DATA_DIR = "data"
PROVENANCE = "provenance.json"
CARD = "README.md"
TAGS = ("vigorl", "grounded-reasoning", "mcts")
TASK_CATEGORIES = ("image-text-to-text", "visual-question-answering")


def teacher_label(teacher: Mapping[str, Any]) -> str:
    """``"<backend>:<model>"``: how rows and cards name the teacher of a run."""
    return f"{teacher.get('backend', '')}:{teacher.get('model', '')}"


@dataclass
class Provenance:
    """Where a dataset came from: the ``provenance.json`` format (one JSON object with these keys).

    Attributes:
        task: the task and its options (``{"name", "options"}``).
        teacher: the teacher as the search described it (``backend``, ``model``, ``simulated``, settings).
        prompt_version: version of the prompts the chains were written with.
        search: the search parameters.
        run: the search command, data directory and split.
        versions: package versions of the search and of the trace-forge that wrote the dataset.
        yield_by_category: per category, questions searched and questions with a correct trajectory.
        view: the frame of the dataset's points and the resize that defines it (``{"frame", "resize"}``).
        license: the licence identifier of the source benchmark for the card's metadata; None: unknown.
        linearize: how the trees became rows: the mode and the ``LinearizeConfig`` settings (cap, grounding
            filter, label threshold, ...).
    """

    task: dict[str, Any]
    teacher: dict[str, Any]
    prompt_version: str = PROMPT_VERSION
    search: dict[str, Any] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    yield_by_category: dict[str, dict[str, int]] = field(default_factory=dict)
    view: dict[str, Any] = field(default_factory=lambda: {"frame": "pixel", "resize": None})
    license: str | None = None
    linearize: dict[str, Any] = field(default_factory=dict)

    @property
    def simulated(self) -> bool:
        """Whether the traces come from the simulated teacher (test plumbing, not real reasoning)."""
        return bool(self.teacher.get("simulated"))

    @classmethod
    def of_run(cls, run_dir: Any, run: RunRecord, view: Mapping[str, Any],
               linearize: Mapping[str, Any] | None = None) -> Provenance:
        """The provenance of a dataset linearized from ``run`` (its folder gives the per-category yield) with the
        ``linearize`` settings."""
        stats = run_stats(run_dir)
        return cls(
            task=run.task.to_dict(),
            teacher={k: v for k, v in run.teacher.items() if k != "base_urls"},  # where it ran is not provenance
            prompt_version=run.prompt_version,
            search=dict(run.params),
            run={"command": run.command, "data_dir": run.data_dir, "split": run.split},
            versions={**run.versions, "trace_forge_linearize": __version__},
            yield_by_category={name: {"questions": c.questions, "solved": c.solved}
                               for name, c in stats.categories.items()},
            view=dict(view),
            linearize=dict(linearize or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Provenance:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass
class DataCounts:
    """What a dataset holds, counted while it was written.

    Attributes:
        files: the parquet shards by split (paths relative to the dataset folder).
        rows: rows by split and kind (chains: ``direct`` / ``backtracking``; other rows: their ``unit``).
        questions: distinct questions by split.
        categories: per category, distinct questions and rows (all splits).
        mode: ``single``, ``multi``, ``preference`` or ``stepwise``.
        unit: what one row is: ``chains``, ``pairs`` or ``sequences``.
    """

    mode: str
    unit: str = "chains"
    files: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, Counter[str]] = field(default_factory=dict)
    questions: dict[str, int] = field(default_factory=dict)
    categories: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(sum(kinds.values()) for kinds in self.rows.values())


def _metadata(provenance: Provenance, counts: DataCounts, license_id: str | None) -> str:
    from huggingface_hub import DatasetCardData

    data_files = [{"split": split, "path": f"{DATA_DIR}/{split}-*.parquet"} for split in counts.files]
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


_TITLES = {
    "single": "single-turn chains",
    "multi": "multi-turn zoom dialogs",
    "preference": "preference pairs",
    "stepwise": "step-level labels",
}

_WHAT = {
    "single": "Rows are single-turn responses in TRL's conversational vision format (`messages` + `images`), which "
              "`trl.SFTTrainer` trains on as loaded (`assistant_only_loss=True` with a chat template that marks "
              "assistant turns). `kind` is `direct` (a correct path) or `backtracking` (a wrong path, a sentence "
              "admitting it, then a correct path); `correct` and `reward` are the benchmark verifier's judgement of "
              "the final answer.",
    "multi": "Rows are multi-turn zoom dialogs in TRL's conversational vision format (`messages` + `images`), which "
             "`trl.SFTTrainer` trains on as loaded (`assistant_only_loss=True` with a chat template that marks "
             "assistant turns). Dialogs call a `zoom` tool on a point; the crop comes back in a `user` turn wrapped "
             "in `<tool_response>` tags, the way Qwen chat templates render a tool reply, so the images of every "
             "turn are in `images` in order (the sample canvas first). `kind` is `direct` (a correct path) or "
             "`backtracking` (a wrong path, a sentence admitting it, then a correct path); `correct` and `reward` "
             "are the benchmark verifier's judgement of the final answer.",
    "preference": "Rows are preference pairs read from the search trees, in TRL's conversational preference format "
                  "with an image (`prompt`, `chosen`, `rejected`, `images`), which `trl.DPOTrainer` trains on as "
                  "loaded. Both responses continue the same grounded prefix (the steps on the path to the tree "
                  "node `node` where they part, `prefix_length` of them) and then branch: `chosen` reaches an "
                  "answer the benchmark verifier judged correct, `rejected` one it judged wrong. The prefix is "
                  "written at the start of both single-turn responses rather than as an assistant turn of the "
                  "prompt, which TRL would render as a turn of its own; in DPO's loss its tokens cancel out. "
                  "`chosen_steps` and `rejected_steps` hold every step of each response, prefix included.",
    "stepwise": "Rows are step-level labels read from the search trees, in TRL's stepwise-supervision format "
                "(`prompt`, `completions`, `labels`) with the image in `images`: one row per path from the root "
                "to a leaf step node. A step's label is True when the MCTS value of its node (`values`: the mean "
                "0/1 reward of every trajectory the search backed up through it, `visits` of them) is at least "
                "`label_threshold`.",
}

_FRAMES = {
    "pixel": "pixels of the first image (the sample canvas) as stored",
    "model": "pixels of the first image as the model's processor resizes it (smart_resize with the bounds in "
             "`resize`; Qwen2.5-VL's coordinates)",
    "norm1000": "a 0-1000 grid over the first image (Qwen3-VL's coordinates)",
}


def render_card(
    provenance: Provenance,
    counts: DataCounts,
    columns: Mapping[str, str],
    *,
    license_note: str = "",
    license_id: str | None = None,
) -> str:
    """The dataset card: YAML metadata, then what the data is, its frame, how it was made, columns and counts.

    Args:
        provenance: where the data came from.
        counts: what the dataset holds.
        columns: every column with its description, in order.
        license_note: the source benchmark's licence note.
        license_id: licence identifier for the metadata; default ``provenance.license``, else ``"other"``.

    Returns:
        Markdown with front matter; a pure function of its arguments (no dates).
    """
    teacher = provenance.teacher
    frame = provenance.view.get("frame", "pixel")
    title = f"# Grounded reasoning traces: {provenance.task['name']}, {_TITLES[counts.mode]}"
    parts = [f"---\n{_metadata(provenance, counts, license_id)}---", title]
    if provenance.simulated:
        parts.append(
            "> [!WARNING]\n"
            "> **Simulated teacher.** These traces were written by trace-forge's `sim` teacher, a scripted "
            "stand-in used to test the pipeline. They are not reasoning by a real model: do not train or "
            "evaluate on them."
        )
    parts.append(
        "## What it is\n\n"
        f"Visually grounded reasoning for the **{provenance.task['name']}** benchmark, in the style of ViGoRL "
        "([arXiv 2505.23678](https://arxiv.org/abs/2505.23678)): every reasoning step names the image point "
        f"`(x, y)` it is about. {_WHAT[counts.mode]}\n\n"
        f"**Coordinate frame: `{frame}`**: every point in the text and in the structured columns is in "
        f"{_FRAMES[frame]}"
        + (f", `resize` = `{json.dumps(provenance.view.get('resize'))}`" if frame == "model" else "")
        + ". `target_boxes` are always in pixels of the canvas. Load it with `datasets.load_dataset(\"<this "
        "folder or repo>\")`."
    )
    made = [
        f"- Teacher: `{teacher_label(teacher)}`" + (" (simulated)" if provenance.simulated else ""),
        f"- Prompt version: `{provenance.prompt_version}`",
        f"- Task options: `{json.dumps(provenance.task.get('options') or {}, sort_keys=True)}`",
        f"- Source split: `{provenance.run.get('split') or 'default'}`",
    ]
    how = (
        "## How it was made\n\nMonte Carlo tree search over teacher-written grounded steps; each step and "
        "rollout answer was scored by the benchmark's official verifier, and the trees were linearized into "
        "chains with `trace-forge linearize`.\n\n" + "\n".join(made)
        + "\n\nSearch parameters:\n\n" + _json_block(provenance.search)
        + ("\n\nLinearization settings:\n\n" + _json_block(provenance.linearize) if provenance.linearize else "")
        + "\n\nVersions:\n\n" + _json_block(provenance.versions)
    )
    parts.append(how)
    parts.append("## Columns\n\n" + _table(["column", "meaning"], [[f"`{k}`", v] for k, v in columns.items()]))
    kinds = sorted({k for split in counts.rows.values() for k in split} - {counts.unit})
    split_rows = [
        [split, counts.questions.get(split, 0), *(counts.rows[split].get(k, 0) for k in kinds),
         sum(counts.rows[split].values())]
        for split in counts.rows
    ]
    parts.append(
        "## Counts\n\n"
        + _table(["split", "questions", *kinds, counts.unit], split_rows)
        + f"\n\n{counts.total_rows} {counts.unit} in all."
    )
    yield_rows = []
    for category, found in counts.categories.items():
        searched = provenance.yield_by_category.get(category or "-")
        share = (f"{searched['solved']}/{searched['questions']} ({searched['solved'] / searched['questions']:.0%})"
                 if searched else "unknown")
        yield_rows.append([category or "-", share, found["questions"], found["rows"]])
    parts.append(
        "## Per-category yield\n\nQuestions searched with at least one correct trajectory, and what "
        "reached the dataset.\n\n"
        + _table(["category", "solved / searched", "questions", counts.unit], yield_rows)
    )
    note = license_note.rstrip(".") + "." if license_note else "See the source benchmark's licence."
    parts.append(
        "## Licence of the source benchmark\n\n" + note + " The images in this dataset come from it and keep its "
        "terms; the reasoning text was written by the teacher model above, whose terms of use may also apply."
    )
    return "\n\n".join(parts) + "\n"
