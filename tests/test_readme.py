"""The README runs: every ```bash block not marked otherwise is executed, in order, in a copy of the repository's
data, the way a newcomer pastes it on a CPU machine. A block preceded by ``<!-- readme: not run (REASON) -->``
is left out (it needs a GPU, a server, a key or the network) and the reason must be said.

``uv run CMD`` runs ``CMD`` from this test's environment: the suite already runs inside the synced project, and
what is checked is our commands, not uv.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SKIP = re.compile(r"<!--\s*readme:\s*not run \((?P<reason>[^)]+)\)\s*-->")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    text: str
    skipped: str | None  # the reason, when marked


def bash_blocks(markdown: str) -> list[Block]:
    """The ```bash blocks of ``markdown`` in order, each with the skip reason written on the line above it."""
    lines = markdown.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            start = i
            i += 1
            body = []
            while lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            above = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            marked = SKIP.search(above)
            blocks.append(Block(start + 1, "\n".join(body), marked.group("reason") if marked else None))
        i += 1
    return blocks


def test_the_marker_grammar():
    text = "intro\n```bash\necho a\n```\n<!-- readme: not run (needs a GPU) -->\n\n```bash\necho b\n```\n"
    assert bash_blocks(text) == [Block(2, "echo a", None), Block(7, "echo b", "needs a GPU")]


def test_readme_runs_top_to_bottom(tmp_path: Path) -> None:
    blocks = bash_blocks(README.read_text(encoding="utf-8"))
    runnable = [b for b in blocks if b.skipped is None]
    assert len(runnable) >= 4, "the README lost its runnable sections"
    work = tmp_path / "repo"
    work.mkdir()
    shutil.copytree(ROOT / "data", work / "data", ignore=shutil.ignore_patterns("__pycache__"))
    bin_dir = Path(sys.executable).parent
    script = ["set -euo pipefail", 'uv() { if [ "$1" = run ]; then shift; "$@"; else echo "uv $*: not run" >&2; '
              "return 1; fi; }"]
    for block in runnable:
        script += [f"echo '### README.md line {block.line}' >&2", block.text]
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "TRACE_FORGE_PROGRESS_S": "60"}
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, capture_output=True, text=True,
                            timeout=1500)
    where = re.findall(r"### README.md line (\d+)", result.stderr)
    assert result.returncode == 0, (
        f"README block at line {where[-1] if where else '?'} failed (exit {result.returncode}):\n"
        f"{result.stderr[-4000:]}"
    )
    assert len(where) == len(runnable)
