"""Session fixtures for grounded-rl: tiny random-init checkpoints, built once per test session.

``tiny_model_dir("qwen2_5_vl")`` / ``tiny_model_dir("qwen3_vl")`` build the checkpoint on first use (about 0.1 s
each, after the torch import) into a session temp dir and return its path; every later call returns the same
directory. Tests must treat these directories as read-only: copy or ``save_pretrained`` elsewhere to change them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

TinyModelDir = Callable[[str], Path]


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One torch thread: tiny models gain nothing from intra-op parallelism, and on a busy 2-core machine two
    OpenMP threads spin against other processes (training steps measured about 10x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> TinyModelDir:
    """A function ``family -> checkpoint dir`` building each family's tiny model (seed 0) at most once."""
    from grounded_rl.tiny import make_tiny_model

    built: dict[str, Path] = {}

    def get(family: str = "qwen2_5_vl") -> Path:
        if family not in built:
            built[family] = make_tiny_model(tmp_path_factory.mktemp(f"tiny-{family}"), family=family, seed=0)
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl_dir(tiny_model_dir: TinyModelDir) -> Path:
    """The tiny Qwen2.5-VL checkpoint directory (read-only)."""
    return tiny_model_dir("qwen2_5_vl")


@pytest.fixture(scope="session")
def tiny_qwen3_vl_dir(tiny_model_dir: TinyModelDir) -> Path:
    """The tiny Qwen3-VL checkpoint directory (read-only)."""
    return tiny_model_dir("qwen3_vl")
