"""Suite-wide settings: offline, deterministic, quiet."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

# Property tests: reproducible examples, and no per-example time limit (a deadline fails on a busy machine, and
# slow inputs have their own regression tests that bound the work, not the time).
from hypothesis import settings  # noqa: E402

settings.register_profile("suite", derandomize=True, deadline=None)
settings.load_profile("suite")
