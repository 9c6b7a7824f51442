"""Every example in the docstrings of both packages runs and prints what it claims."""

import doctest
import importlib
import pkgutil

import pytest

import grounded_rl
import trace_forge

# In-process model backends import torch / vLLM at module level; they are exercised by their own tests.
_SKIP = {"trace_forge.teachers.hf", "trace_forge.teachers.vllm"}


def _with_examples() -> list[str]:
    """The modules whose docstrings hold at least one example that runs (``+SKIP`` ones do not; collected once)."""
    finder = doctest.DocTestFinder()
    names = []
    packages = ((trace_forge, "trace_forge."), (grounded_rl, "grounded_rl."))
    for info in (i for package, prefix in packages for i in pkgutil.walk_packages(package.__path__, prefix)):
        if info.name in _SKIP or info.name.endswith(".__main__"):  # importing __main__ would run the CLI
            continue
        module = importlib.import_module(info.name)
        examples = (ex for test in finder.find(module) for ex in test.examples)
        if any(not ex.options.get(doctest.SKIP) for ex in examples):
            names.append(info.name)
    return sorted(names)


MODULES = _with_examples()


def test_examples_are_found_where_they_are_written():
    assert len(MODULES) >= 25  # a finder that saw nothing would make every test below vacuous
    assert {"trace_forge.grounding.frames", "trace_forge.tasks.scoring", "trace_forge.durable",
            "grounded_rl.training", "grounded_rl.rewards", "grounded_rl.env"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, f"{result.failed} of {result.attempted} failed in {name}"
