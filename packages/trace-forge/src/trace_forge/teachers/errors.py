"""Typed teacher errors, and the one translation from SDK exceptions and HTTP statuses to them.

Backends raise only these (chaining the SDK exception as ``__cause__``); the runtime decides from
:attr:`TeacherError.retryable` and :attr:`TeacherError.retry_after` whether and when to try again.

Hierarchy::

    TraceForgeError
    └── TeacherError
        ├── RateLimited          429                                   retried, honours Retry-After
        ├── TeacherTimeout       timeout, 408                          retried
        ├── TeacherUnavailable   5xx, 409, connection refused / reset  retried
        ├── TeacherFormatError   bad JSON, empty choices, no text      not retried (a dead node to search)
        └── TeacherRejected      other 4xx (bad request, auth)         not retried
"""

from __future__ import annotations

import email.utils
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
    "error_for_status",
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
    """The server answered 200 with something unusable: bad JSON, no choices, missing fields."""

    kind = "format"


class TeacherRejected(TeacherError):
    """The server refused the request itself (400, 401, 403, 404, 422, ...); sending it again cannot help."""

    kind = "rejected"


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
    """The typed error for an HTTP error status (the same table the OpenAI SDK retries on)."""
    retry_after = parse_retry_after(headers)
    if status == 429:
        cls: type[TeacherError] = RateLimited
    elif status == 408:
        cls = TeacherTimeout
    elif status == 409 or status >= 500:
        cls = TeacherUnavailable
    else:
        cls = TeacherRejected
    return cls(message, retry_after=retry_after, status=status)


@contextmanager
def translate_sdk_errors(sdk: ModuleType, backend: str) -> Iterator[None]:
    """Turn exceptions of an OpenAI-style SDK (``openai``, ``anthropic``) raised inside the block into typed errors.

    Both SDKs name their exceptions alike (``APITimeoutError`` < ``APIConnectionError``, ``APIStatusError``,
    ``APIResponseValidationError``), so one translation serves both. A body that is not JSON surfaces from the
    SDKs as a bare ``ValueError`` (``json.JSONDecodeError``), hence that arm.
    """
    try:
        yield
    except sdk.APITimeoutError as e:
        raise TeacherTimeout(f"{backend}: request timed out") from e
    except sdk.APIConnectionError as e:
        raise TeacherUnavailable(f"{backend}: connection failed: {e}") from e
    except sdk.APIStatusError as e:
        raise error_for_status(e.status_code, e.response.headers, f"{backend}: HTTP {e.status_code}: {e}") from e
    except (sdk.APIResponseValidationError, ValueError) as e:
        raise TeacherFormatError(f"{backend}: malformed response: {e}") from e
