"""Suite-wide settings: offline, deterministic, quiet."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
# Output is checked as rendered: one width whatever the terminal running the suite. Rich reads COLUMNS on every
# render unless it was set when the console was made, so it is unset here and set per test (see `_columns`).
os.environ.pop("COLUMNS", None)

# Property tests: reproducible examples, and no per-example time limit (a deadline fails on a busy machine, and
# slow inputs have their own regression tests that bound the work, not the time).
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("suite", derandomize=True, deadline=None)
settings.load_profile("suite")


@pytest.fixture(autouse=True)
def _columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """80 columns, as in CI (no terminal); a test about another width sets COLUMNS itself."""
    monkeypatch.setenv("COLUMNS", "80")
