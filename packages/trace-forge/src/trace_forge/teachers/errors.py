"""Typed teacher errors, and the one translation from SDK exceptions and HTTP statuses to them.

Backends raise only these (chaining the SDK exception as ``__cause__``); the runtime decides from
:attr:`TeacherError.retryable` and :attr:`TeacherError.retry_after` whether and when to try again.

Hierarchy::

    TraceForgeError
    └── TeacherError
        ├── RateLimited          429                                   retried, honours Retry-After
        ├── TeacherTimeout       timeout, 408                          retried
        ├── TeacherUnavailable   5xx, 409, connection refused / reset  retried
        ├── TeacherFormatError   bad JSON, empty choices, no text      retried a few times (max_format_retries),
        │                                                              then a dead node to search
        └── TeacherRejected      other 4xx (bad request, auth)         not retried
            └── PromptTooLong    400 "maximum context length"          not retried; eval records it per item
"""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import ModuleType
from typing import ClassVar

from trace_forge.errors import TraceForgeError

__all__ = [
    "TeacherError",
    "RateLimited",
    "TeacherTimeout",
    "TeacherUnavailable",
    "TeacherFormatError",
    "TeacherRejected",
    "PromptTooLong",
    "error_for_status",
    "base_url_hint",
    "parse_retry_after",
    "translate_sdk_errors",
]


class TeacherError(TraceForgeError):
    """A teacher request failed.

    Attributes:
        kind: short name used as the counter key in usage accounting (``"rate_limited"``, ``"timeout"``, ...).
        retryable: whether the runtime may send the request again.
        retry_after: seconds the server asked us to wait before retrying, when it said so.
        status: the HTTP status, when there was one.
    """

    kind: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, retry_after: float | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class RateLimited(TeacherError):
    """HTTP 429: the server asks us to slow down."""

    kind = "rate_limited"
    retryable = True


class TeacherTimeout(TeacherError):
    """No reply within the per-request timeout (the request was cancelled), or HTTP 408."""

    kind = "timeout"
    retryable = True


class TeacherUnavailable(TeacherError):
    """The server failed or could not be reached: 5xx, 409, refused or reset connection."""

    kind = "unavailable"
    retryable = True


class TeacherFormatError(TeacherError):
    """The server answered 200 with something unusable: bad JSON, no choices, a choice without text.

    Retried, but only :attr:`~trace_forge.teachers.runtime.RuntimeConfig.max_format_retries` times: a body cut by
    a proxy or a restarting server is transient, a model that writes no text for this prompt is not.
    """

    kind = "format"
    retryable = True


# Refusals that condemn the endpoint or the credentials, not one prompt: 401/403 auth, 404 no such model or route,
# 405 wrong method (a URL that is not the API), 407 a proxy that wants credentials. Every request would fail alike.
_ENDPOINT_STATUSES = frozenset({401, 403, 404, 405, 407})


class TeacherRejected(TeacherError):
    """The server refused the request itself (400, 401, 403, 404, 422, ...); sending it again cannot help."""

    kind = "rejected"

    @property
    def endpoint_refused(self) -> bool:
        """The refusal is of the endpoint or the credentials (every request will be refused: stop the run), not of
        this one prompt (a 400 such as a prompt over the context: fail its item, go on)."""
        return self.status in _ENDPOINT_STATUSES


class PromptTooLong(TeacherRejected):
    """HTTP 400: the prompt (images included) does not fit the model's context; the message keeps the server's words.

    A property of one prompt, not of the server: an evaluation records it for that item and goes on.
    """

    kind = "prompt_too_long"


# How servers word a prompt over the context: vLLM ("Input length (2314) exceeds model's maximum context length
# (2048)", older "This model's maximum context length is ..."), OpenAI ("context_length_exceeded"), Anthropic
# ("prompt is too long").
_TOO_LONG = re.compile(r"maximum context length|context_length_exceeded|prompt is too long", re.IGNORECASE)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait according to ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date).

    Args:
        headers: response headers (any case).
        now: the current Unix time, for HTTP dates; ``time.time()`` when None.

    Returns:
        A non-negative delay, or None when the headers carry no usable hint.

    Example:
        >>> parse_retry_after({"Retry-After": "2.5"})
        2.5
        >>> parse_retry_after({"retry-after-ms": "200"})
        0.2
        >>> parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0)
        10.0
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lowered:
        return _non_negative_float(lowered["retry-after-ms"], scale=1e-3)
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative_float(value)
    if seconds is not None:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _non_negative_float(text: str, scale: float = 1.0) -> float | None:
    try:
        return max(0.0, float(text) * scale)
    except ValueError:
        return None


def error_for_status(status: int, headers: Mapping[str, str], message: str) -> TeacherError:
    """The typed error for an HTTP error status (the same table the OpenAI SDK retries on).

    ``message`` should carry the server's own error text: it decides :class:`PromptTooLong`.
    """
    retry_after = parse_retry_after(headers)
    if status == 429:
        cls: type[TeacherError] = RateLimited
    elif status == 408:
        cls = TeacherTimeout
    elif status == 409 or status >= 500:
        cls = TeacherUnavailable
    elif status in (400, 413) and _TOO_LONG.search(message):
        cls = PromptTooLong
    else:
        cls = TeacherRejected
    return cls(message, retry_after=retry_after, status=status)


def base_url_hint(status: int, base_url: str | None, *, wants_v1: bool) -> str:
    """Advice for a 404 from a ``--base-url`` that has (or lacks) the ``/v1`` its API expects, else ``""``.

    OpenAI-style servers (vLLM, SGLang) serve ``/v1/chat/completions`` and the OpenAI SDK appends only
    ``/chat/completions``; the Anthropic SDK appends ``/v1/messages`` itself. A real vLLM server answers the wrong
    form with a bare 404.

    Example:
        >>> base_url_hint(404, "http://gpu1:8000", wants_v1=True)
        '; the --base-url does not end in /v1: try http://gpu1:8000/v1'
    """
    if status != 404 or not base_url:
        return ""
    url = base_url.rstrip("/")
    if wants_v1 and not url.endswith("/v1"):
        return f"; the --base-url does not end in /v1: try {url}/v1"
    if not wants_v1 and url.endswith("/v1"):
        return f"; the --base-url ends in /v1, which this API adds itself: try {url[:-3]}"
    return ""


@contextmanager
def translate_sdk_errors(sdk: ModuleType, backend: str, base_url: str | None = None, *,
                         wants_v1: bool = True) -> Iterator[None]:
    """Turn exceptions of an OpenAI-style SDK (``openai``, ``anthropic``) raised inside the block into typed errors.

    Both SDKs name their exceptions alike (``APITimeoutError`` < ``APIConnectionError``, ``APIStatusError``,
    ``APIResponseValidationError``), so one translation serves both. A body that is not JSON surfaces from the
    SDKs as a bare ``ValueError`` (``json.JSONDecodeError``), hence that arm. Messages name ``base_url`` when
    given, and a 404 gets :func:`base_url_hint`.
    """
    where = f"{backend} at {base_url}" if base_url else backend
    try:
        yield
    except sdk.APITimeoutError as e:
        raise TeacherTimeout(f"{where}: request timed out") from e
    except sdk.APIConnectionError as e:
        raise TeacherUnavailable(f"{where}: connection failed: {e}") from e
    except sdk.APIStatusError as e:
        hint = base_url_hint(e.status_code, base_url, wants_v1=wants_v1)
        raise error_for_status(e.status_code, e.response.headers, f"{where}: HTTP {e.status_code}: {e}{hint}") from e
    except (sdk.APIResponseValidationError, ValueError) as e:
        raise TeacherFormatError(f"{where}: malformed response: {e}") from e
