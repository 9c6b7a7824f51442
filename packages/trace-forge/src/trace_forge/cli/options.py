"""Command-line options defined by the config dataclass field they fill: one default and one help per setting.

A command declares ``simulations: Annotated[int, flag(SearchConfig, "simulations", min=1)] =
default(SearchConfig, "simulations")``; the field's ``metadata["help"]`` is the flag's help and its default the
flag's default, so the two cannot drift (``tests/trace_forge/test_cli_options.py`` checks every command).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import typer

from trace_forge.teachers.base import backend_names
from trace_forge.teachers.images import IMAGE_FORMATS

__all__ = ["Backend", "IMAGE_FORMAT_HELP", "ImageFormat", "config_field", "default", "flag"]

# Choices as types: typer lists them in --help and refuses another value with a usage error naming them.
Backend = Literal[tuple(backend_names())]
ImageFormat = Literal[IMAGE_FORMATS]
IMAGE_FORMAT_HELP = ("How images are sent to the teacher: auto (JPEG for photos, PNG for screenshots and lossless "
                     "files), or always png, jpeg or webp.")


def config_field(config: type, name: str) -> dataclasses.Field[Any]:
    """The dataclass field ``name`` of ``config``."""
    for f in dataclasses.fields(config):
        if f.name == name:
            return f
    raise KeyError(f"{config.__name__} has no field {name!r}")


def default(config: type, name: str) -> Any:
    """The default of field ``name`` of ``config`` (a default factory is called)."""
    f = config_field(config, name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise KeyError(f"{config.__name__}.{name} has no default")


def flag(config: type, name: str, *param_decls: str, **kwargs: Any) -> Any:
    """A ``typer.Option`` whose help is the field's ``metadata["help"]`` (``help=`` may add to it)."""
    help_text = config_field(config, name).metadata.get("help", "")
    extra = kwargs.pop("help", None)
    return typer.Option(*param_decls, help=f"{help_text} {extra}".strip() if extra else help_text, **kwargs)
