"""Every example in trace_forge's docstrings runs and prints what it claims."""

import doctest
import importlib
import pkgutil

import pytest

import trace_forge

# In-process model backends import torch / vLLM at module level; they are exercised by their own tests.
_SKIP = {"trace_forge.teachers.hf", "trace_forge.teachers.vllm"}
MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(trace_forge.__path__, "trace_forge.")
    if m.name not in _SKIP and not m.name.endswith(".__main__")  # importing __main__ would run the CLI
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} doctest failure(s) in {name}"
