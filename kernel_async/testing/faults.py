"""Fault injection for the emulator: rate limits, errors, latency, cut streams, drops."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ._wire import number

__all__ = ["Faults", "FaultStats"]


@dataclass
class _Rule:
    kind: str  # "status" | "drop" | "hang"
    times: int | None
    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    method: str | None = None
    path: str | None = None
    after_processing: bool = False

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        return not (self.path is not None and not _path_matches(self.path, path))


def _path_matches(pattern: str, path: str) -> bool:
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return pattern == path


@dataclass
class FaultStats:
    """What the emulator injected so far."""

    rate_limited: int = 0
    """429 responses injected."""
    errors: int = 0
    """5xx (or other status) responses injected."""
    drops: int = 0
    """Connections dropped without a response."""
    hangs: int = 0
    """Requests accepted and never answered."""
    cuts: int = 0
    """Event streams cut mid-way."""
    delayed: int = 0
    """Requests that had latency added."""

    @property
    def total(self) -> int:
        """Every fault injected."""
        return self.rate_limited + self.errors + self.drops + self.hangs + self.cuts


class Faults:
    """The emulator's fault injector, reached as ``emulator.faults``.

    Scripted faults apply to the next matching requests, in the order they were added::

        emulator.faults.rate_limit(times=2, retry_after=0.01)
        emulator.faults.fail(502, method="GET")
        emulator.faults.cut_stream(after_events=3)

    `chaos` adds random faults at given rates, reproducibly with a seed. `clear` removes
    everything. `stats` counts what was injected.
    """

    def __init__(self) -> None:
        self._rules: list[_Rule] = []
        self._cuts: list[int] = []
        self.latency_seconds: float = 0.0
        """Seconds added before every response (0 for none)."""
        self.stats = FaultStats()
        """Counts of the faults injected so far."""
        self._chaos: _Chaos | None = None

    def clear(self) -> None:
        """Remove every scripted and random fault (the stats are kept)."""
        self._rules.clear()
        self._cuts.clear()
        self.latency_seconds = 0.0
        self._chaos = None

    def rate_limit(
        self,
        times: int = 1,
        *,
        retry_after: float | str | None = 1,
        retry_after_ms: float | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        """Answer the next ``times`` matching requests with 429 and ``Retry-After``."""
        headers: dict[str, str] = {}
        if retry_after is not None:
            headers["Retry-After"] = (
                retry_after if isinstance(retry_after, str) else number(retry_after)
            )
        if retry_after_ms is not None:
            headers["retry-after-ms"] = number(retry_after_ms)
        self._rules.append(_Rule("status", times, 429, headers, method=method, path=path))

    def fail(
        self,
        status: int = 500,
        times: int = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        after_processing: bool = False,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status``.

        ``body`` replaces the JSON Error body (e.g. an HTML page from a "proxy"; for a 429,
        a JSON body is sent as JSON: a concurrency 429's error code, say).
        ``after_processing=True`` handles the request first (a create really starts the
        invocation) and then answers with the error: the ambiguous failure.
        """
        self._rules.append(
            _Rule(
                "status",
                times,
                status,
                dict(headers or {}),
                body,
                method,
                path,
                after_processing,
            )
        )

    def drop_connection(
        self,
        times: int = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        after_processing: bool = False,
    ) -> None:
        """Close the next ``times`` matching connections without answering."""
        self._rules.append(
            _Rule("drop", times, method=method, path=path, after_processing=after_processing)
        )

    def hang(self, times: int = 1, *, method: str | None = None, path: str | None = None) -> None:
        """Accept the next ``times`` matching requests and never answer them."""
        self._rules.append(_Rule("hang", times, method=method, path=path))

    def latency(self, seconds: float) -> None:
        """Add ``seconds`` before every response from now on (0 to stop)."""
        self.latency_seconds = seconds

    def cut_stream(self, after_events: int, times: int = 1) -> None:
        """Cut the next ``times`` event streams after ``after_events`` events, in the
        middle of the next event's bytes."""
        self._cuts.extend([after_events] * times)

    def chaos(
        self,
        *,
        rate_limit: float = 0.0,
        error: float = 0.0,
        cut: float = 0.0,
        latency: tuple[float, float] = (0.0, 0.0),
        retry_after: float = 0.01,
        max_cut_after: int = 10,
        error_statuses: tuple[int, ...] = (500, 502, 503),
        seed: int | None = None,
    ) -> None:
        """Inject random faults: each request is rate-limited with probability
        ``rate_limit``, fails with one of ``error_statuses`` with probability ``error``,
        waits a random ``latency`` range; each stream is cut after a random number of events
        (up to ``max_cut_after``) with probability ``cut``."""
        self._chaos = _Chaos(
            random.Random(seed),
            rate_limit,
            error,
            cut,
            latency,
            retry_after,
            max_cut_after,
            error_statuses,
        )

    # --- used by the emulator ----------------------------------------------------------------

    def take(self, method: str, path: str) -> _Rule | None:
        """The fault to inject into this request, if any (consumes a scripted one)."""
        for i, rule in enumerate(self._rules):
            if rule.matches(method, path):
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        del self._rules[i]
                return rule
        chaos = self._chaos
        if chaos is not None:
            roll = chaos.rng.random()
            if roll < chaos.rate_limit:
                return _Rule("status", 1, 429, {"Retry-After": number(chaos.retry_after)})
            if roll < chaos.rate_limit + chaos.error:
                return _Rule("status", 1, chaos.rng.choice(chaos.error_statuses))
        return None

    def delay(self) -> float:
        """Seconds to wait before answering this request."""
        chaos = self._chaos
        extra = chaos.rng.uniform(*chaos.latency) if chaos is not None else 0.0
        return self.latency_seconds + extra

    def take_cut(self) -> int | None:
        """After how many events to cut this stream, or None to leave it whole."""
        if self._cuts:
            return self._cuts.pop(0)
        chaos = self._chaos
        if chaos is not None and chaos.rng.random() < chaos.cut:
            return chaos.rng.randint(0, chaos.max_cut_after)
        return None


@dataclass
class _Chaos:
    rng: random.Random
    rate_limit: float
    error: float
    cut: float
    latency: tuple[float, float]
    retry_after: float
    max_cut_after: int
    error_statuses: tuple[int, ...]
