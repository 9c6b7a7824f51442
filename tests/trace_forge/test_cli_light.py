"""`trace-forge --help` stays light: no torch, transformers, vLLM or teacher SDK is imported to show it."""

import subprocess
import sys

CHECK = """
import sys
from typer.testing import CliRunner
from trace_forge.cli import app
result = CliRunner().invoke(app, ["--help"])
assert result.exit_code == 0, result.output
for command in ("search", "linearize", "show", "stats", "merge", "publish", "tasks", "teacher"):
    assert command in result.output, command
heavy = sorted(m for m in ("torch", "transformers", "trl", "vllm", "openai", "anthropic") if m in sys.modules)
print(",".join(heavy))
"""


def test_help_lists_commands_and_imports_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
