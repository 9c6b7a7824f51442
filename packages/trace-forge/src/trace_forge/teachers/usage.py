"""Teacher usage accounting: requests, tokens, cache hits, errors, latency percentiles and estimated cost.

The price table is plain data, meant to be edited: USD per million input / output tokens, keyed by model-name
prefix (the longest matching prefix wins, so ``gpt-4o-mini`` is not priced as ``gpt-4o``). A JSON file given with
``--price-table`` adds to or overrides it. A model with no entry (a local vLLM model, say) has cost None, which
means "unknown", never 0.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_forge.errors import ConfigError

__all__ = ["Price", "DEFAULT_PRICES", "load_price_table", "Usage", "token_shares"]


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float


# List prices as published by the providers in 2025, without batch or cached-input discounts. Check before
# trusting a cost estimate; override with --price-table.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "claude-3-5-haiku": Price(0.80, 4.00),
    "claude-3-5-sonnet": Price(3.00, 15.00),
    "claude-3-7-sonnet": Price(3.00, 15.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-opus-4": Price(15.00, 75.00),
}


def load_price_table(path: str | Path, base: Mapping[str, Price] = DEFAULT_PRICES) -> dict[str, Price]:
    """``base`` updated from a JSON file ``{"model-prefix": {"input": USD/1M, "output": USD/1M}, ...}``.

    Raises:
        ConfigError: unreadable file, bad JSON, or an entry without two non-negative numbers.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read price table {path}: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"price table {path}: expected a JSON object of model prefixes")
    table = dict(base)
    for prefix, entry in raw.items():
        try:
            price = Price(float(entry["input"]), float(entry["output"]))
        except (TypeError, KeyError, ValueError) as e:
            raise ConfigError(
                f'price table {path}: entry {prefix!r} needs {{"input": USD, "output": USD}} per 1M tokens'
            ) from e
        if price.input < 0 or price.output < 0:
            raise ConfigError(f"price table {path}: negative price for {prefix!r}")
        table[prefix] = price
    return table


def _percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Usage:
    """Counters of one teacher client. The runtime updates them; :meth:`snapshot` reports them.

    Attributes:
        requests: API calls sent, retries included.
        completions: samples received from the server (cached ones not included).
        cache_hits: samples served from the cache.
        retries: attempts repeated after a rate limit, timeout, 5xx or connection error.
        format_retries: attempts repeated after a malformed reply (bad JSON, no choices, a choice without text).
        short_n: replies with fewer samples than ``n`` asked (a server that ignores ``n``), topped up.
        truncated: completions cut to the runtime's length cap (a server that ignored ``max_tokens``).
        errors: failed attempts, by error kind (``rate_limited``, ``timeout``, ``format``, ...).
        failures: requests given up on (the caller got an exception), by error kind.
        latencies: seconds per successful call.
        context: provenance shown with the counters (backend, model, image frame, ...).
    """

    model: str
    prices: Mapping[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    requests: int = 0
    completions: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_hits: int = 0
    retries: int = 0
    format_retries: int = 0
    short_n: int = 0
    truncated: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    context: dict[str, Any] = field(default_factory=dict)

    def price(self) -> Price | None:
        """The price entry with the longest prefix of the model name, or None."""
        matches = [p for p in self.prices if self.model.startswith(p)]
        return self.prices[max(matches, key=len)] if matches else None

    def cost_usd(self) -> float | None:
        """Estimated spend so far; None when the model is not in the price table."""
        price = self.price()
        if price is None:
            return None
        return (self.prompt_tokens * price.input + self.completion_tokens * price.output) / 1e6

    def latency_percentiles(self) -> dict[str, float | None]:
        if not self.latencies:
            return {"p50": None, "p90": None, "p99": None}
        ordered = sorted(self.latencies)
        return {f"p{p}": _percentile(ordered, p) for p in (50, 90, 99)}

    def snapshot(self) -> dict[str, Any]:
        """Plain-JSON view for provenance files and live display."""
        return {
            "teacher": dict(self.context),  # settings, apart from the counters (sessions sum counters)
            "model": self.model,
            "requests": self.requests,
            "completions": self.completions,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cache_hits": self.cache_hits,
            "retries": self.retries,
            "format_retries": self.format_retries,
            "short_n": self.short_n,
            "truncated": self.truncated,
            "errors": dict(self.errors),
            "failures": dict(self.failures),
            "latency_s": self.latency_percentiles(),
            "cost_usd": self.cost_usd(),
        }


def token_shares(total: int, k: int) -> list[int]:
    """Split a call's token count over its ``k`` completions so the shares sum to the total.

    Example:
        >>> token_shares(10, 3)
        [4, 3, 3]
    """
    base, extra = divmod(total, k)
    return [base + (i < extra) for i in range(k)]
