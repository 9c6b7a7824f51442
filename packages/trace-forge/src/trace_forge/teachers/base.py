"""The teacher interface: chat and sampling types, the backend ABC, and the backend registry.

A backend (``openai``, ``anthropic``, ``vllm``, ``hf``, ``sim``) only translates one request into its API and the
reply back into :class:`Completion` objects; it never retries, caches or throttles. All of that lives once in
:class:`trace_forge.teachers.runtime.TeacherClient`, which is what search code talks to.

Backends are found by name through a table of module paths and imported only when chosen, so choosing ``openai``
never imports torch or vLLM. A backend module registers its class with :func:`register_teacher`.
"""

from __future__ import annotations

import importlib
import inspect
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from PIL import Image

from trace_forge.errors import ConfigError
from trace_forge.grounding import TOOL_RESPONSE
from trace_forge.teachers.images import ImageEncoder, ImageRef

__all__ = [
    "Role",
    "Message",
    "Chat",
    "SamplingParams",
    "Completion",
    "Teacher",
    "register_teacher",
    "register_backend",
    "backend_names",
    "load_backend",
    "make_teacher",
    "resolve_api_key",
    "as_user_turn",
    "LOCAL_API_KEY",
]

Role = Literal["system", "user", "assistant", "tool"]
_ROLES = ("system", "user", "assistant", "tool")
_IMAGE_ROLES = ("user", "tool")

LOCAL_API_KEY = "EMPTY"  # what a local vLLM server accepts when started without --api-key


@dataclass(frozen=True)
class Message:
    """One chat turn: text parts and images, in order.

    Bare PIL images and :class:`~pathlib.Path` objects in ``content`` are wrapped into :class:`ImageRef`; a bare
    string is text (a path must be a ``Path``). Images are allowed in user turns and in ``tool`` turns (a zoom
    tool's crop); chat APIs get a tool turn as a user turn (see :func:`as_user_turn`).

    Example:
        >>> from PIL import Image
        >>> m = Message("user", (Image.new("RGB", (8, 8)), "Where is the cat?"))
        >>> type(m.content[0]).__name__, m.text
        ('ImageRef', 'Where is the cat?')
    """

    role: Role
    content: tuple[str | ImageRef, ...]

    def __post_init__(self) -> None:
        if self.role not in _ROLES:
            raise ValueError(f"message role must be one of {_ROLES}, got {self.role!r}")
        parts = (self.content,) if isinstance(self.content, str) else tuple(self.content)
        parts = tuple(ImageRef(p) if isinstance(p, Image.Image | Path) else p for p in parts)
        for p in parts:
            if not isinstance(p, str | ImageRef):
                raise TypeError(f"message content must be text or images, got {type(p).__name__}")
        if self.role not in _IMAGE_ROLES and any(isinstance(p, ImageRef) for p in parts):
            raise ValueError(f"images are allowed in user and tool messages only, not in a {self.role} message")
        object.__setattr__(self, "content", parts)

    @property
    def text(self) -> str:
        """The text parts joined (images left out)."""
        return "".join(p for p in self.content if isinstance(p, str))

    @property
    def images(self) -> tuple[ImageRef, ...]:
        return tuple(p for p in self.content if isinstance(p, ImageRef))


Chat = Sequence[Message]


def as_user_turn(message: Message) -> Message:
    """A ``tool`` message as the user turn our chat templates render it as: its parts inside ``<tool_response>``.

    Chat APIs have no tool turn that carries images, so API backends send this instead, and the teacher reads the
    same words a template-rendered local model does. Other messages are returned unchanged.

    Example:
        >>> as_user_turn(Message("tool", ("Here is the crop.",))).content
        ('<tool_response>\\n', 'Here is the crop.', '\\n</tool_response>')
    """
    if message.role != "tool":
        return message
    opening, closing = TOOL_RESPONSE
    return Message("user", (opening, *message.content, closing))


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. ``top_k`` and ``repetition_penalty`` are vLLM extras (sent as extra body fields; None omits).

    ``seed`` makes a request reproducible where the server supports it; when the runtime splits ``n`` samples
    over several requests, request ``j`` starting at sample index ``i`` uses ``seed + i`` so the parts differ.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        problems = []
        if self.n < 1:
            problems.append(f"n={self.n} (need n >= 1)")
        if self.temperature < 0:
            problems.append(f"temperature={self.temperature} (need >= 0)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} (need 0 < top_p <= 1)")
        if self.max_tokens < 1:
            problems.append(f"max_tokens={self.max_tokens} (need >= 1)")
        if self.top_k is not None and self.top_k < 1:
            problems.append(f"top_k={self.top_k} (need >= 1, or None to omit)")
        if self.repetition_penalty is not None and self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty={self.repetition_penalty} (need > 0, or None to omit)")
        if problems:
            raise ConfigError("invalid sampling parameters: " + "; ".join(problems))


@dataclass(frozen=True)
class Completion:
    """One sampled reply.

    Token counts are this completion's share of what its API call was billed, so summing them over completions
    gives the billed total (one call with ``n=3`` bills its prompt once). Both are 0 for a cached completion.
    ``finish_reason`` uses the OpenAI words: ``"stop"``, ``"length"``, ... (None when the server gave none).
    """

    text: str
    finish_reason: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False


class Teacher(ABC):
    """A backend: turns one chat + sampling request into one API call (or forward pass).

    Subclasses set :attr:`name` and :attr:`supports_n`, implement :meth:`_generate`, and register themselves with
    :func:`register_teacher`. They translate SDK exceptions into :mod:`trace_forge.teachers.errors` types
    (chaining the cause) and never retry: SDK clients get ``max_retries=0``.

    Args:
        model: the model name the server knows.
        encoder: shared image encoder (decides the size images are sent at); a PNG encoder without resizing when
            None.
    """

    name: ClassVar[str]
    supports_n: ClassVar[bool]  # whether one call can return n samples

    def __init__(self, model: str, *, encoder: ImageEncoder | None = None) -> None:
        if not model:
            raise ConfigError(f"teacher {self.name!r} needs a model name (--model)")
        self.model = model
        self.encoder = encoder if encoder is not None else ImageEncoder()

    def prepare(self, chat: Chat) -> Any:
        """The chat in the form :meth:`_generate` takes, made once per ``generate`` call of the runtime.

        Every request of that call (the parts of a split ``n``, the retries) reuses it, so a backend that
        serializes the chat does it once. The default is the chat itself.
        """
        return chat

    @abstractmethod
    async def _generate(self, chat: Chat, params: SamplingParams) -> list[Completion]:
        """Send one request for ``params.n`` samples (1 when not :attr:`supports_n`).

        ``chat`` is what :meth:`prepare` returned for it. May return fewer completions than asked (a server that
        ignores ``n``); the runtime tops up. Never returns an empty list: no usable sample is a
        :class:`~trace_forge.teachers.errors.TeacherFormatError`.
        """

    def describe(self) -> dict[str, Any]:
        """Provenance of this backend (no secrets)."""
        return {"backend": self.name, "model": self.model}

    async def aclose(self) -> None:  # noqa: B027 - an optional hook: in-process backends hold no connections
        """Release connections (no-op by default)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


# --- registry ----------------------------------------------------------------------------------------------------
# Name -> module that defines (and registers) the backend. Modules are imported on first use only, so the heavy
# ones (vllm, hf: torch) cost nothing unless chosen.
_BACKEND_MODULES: dict[str, str] = {
    "openai": "trace_forge.teachers.openai",
    "anthropic": "trace_forge.teachers.anthropic",
    "vllm": "trace_forge.teachers.vllm",
    "hf": "trace_forge.teachers.hf",
    "sim": "trace_forge.teachers.sim",
}
_BACKENDS: dict[str, type[Teacher]] = {}
_EXTRAS = {"vllm": "vllm", "hf": "hf"}  # optional-dependency group that provides a backend's imports


def register_teacher(cls: type[Teacher]) -> type[Teacher]:
    """Class decorator: make a :class:`Teacher` subclass available under ``cls.name``."""
    _BACKENDS[cls.name] = cls
    _BACKEND_MODULES.setdefault(cls.name, cls.__module__)
    return cls


def register_backend(name: str, module: str) -> None:
    """Declare that importing ``module`` registers backend ``name`` (for backends outside trace-forge)."""
    _BACKEND_MODULES[name] = module


def backend_names() -> list[str]:
    return sorted(_BACKEND_MODULES)


def load_backend(name: str) -> type[Teacher]:
    """The backend class called ``name``, importing its module if needed.

    Raises:
        ConfigError: unknown name, or its module (or a dependency of it) cannot be imported.
    """
    if name not in _BACKENDS:
        module = _BACKEND_MODULES.get(name)
        if module is None:
            raise ConfigError(f"unknown teacher {name!r}; choose one of {', '.join(backend_names())}")
        try:
            importlib.import_module(module)
        except ImportError as e:
            hint = f" (install trace-forge with its {_EXTRAS[name]!r} extra)" if name in _EXTRAS else ""
            raise ConfigError(f"teacher {name!r} is not available: {e}{hint}") from e
        if name not in _BACKENDS:
            raise ConfigError(f"module {module} did not register a teacher named {name!r}")
    return _BACKENDS[name]


def make_teacher(
    name: str,
    model: str,
    base_urls: Sequence[str] = (),
    api_key_env: str | None = None,
    **kwargs: Any,
) -> Teacher:
    """Build backend ``name`` for ``model``.

    Args:
        name: registry name (see :func:`backend_names`).
        model: model name as the server knows it.
        base_urls: server endpoints; several are replicas the backend spreads load over.
        api_key_env: environment variable holding the API key, instead of the backend's default.
        **kwargs: backend-specific options (e.g. ``encoder``).

    Raises:
        ConfigError: unknown backend, or an option it does not take (e.g. ``base_urls`` for an in-process one).
    """
    cls = load_backend(name)
    if base_urls:
        kwargs["base_urls"] = tuple(base_urls)
    if api_key_env is not None:
        kwargs["api_key_env"] = api_key_env
    try:
        inspect.signature(cls).bind(model, **kwargs)
    except TypeError as e:
        raise ConfigError(f"teacher {name!r} does not accept these options: {e}") from e
    return cls(model, **kwargs)


def resolve_api_key(api_key_env: str | None, default_env: str, *, local: bool) -> str:
    """Read an API key from the environment (never from flags or files, so it is never logged or saved).

    Args:
        api_key_env: variable named by the user (``--api-key-env``); must be set.
        default_env: the provider's usual variable (``OPENAI_API_KEY``, ...), read only for the provider's own
            endpoint.
        local: the endpoint is a user-given server (``--base-url``). It gets ``"EMPTY"`` (what vLLM expects
            without ``--api-key``) unless ``api_key_env`` names a key for it: the provider's key must not leak to
            whatever server a URL points at.

    Raises:
        ConfigError: naming the variable that is missing (never a value).
    """
    if api_key_env is not None:
        key = os.environ.get(api_key_env)
        if not key:
            raise ConfigError(f"environment variable {api_key_env} (from --api-key-env) is not set")
        return key
    if local:
        return LOCAL_API_KEY
    key = os.environ.get(default_env)
    if key:
        return key
    raise ConfigError(f"set {default_env}, or name another variable with --api-key-env")
