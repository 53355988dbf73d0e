"""The real service's limits, emulated: concurrency caps and a request rate limit.

Off unless set. What Kernel documents (``shared/spec/kernel-facts.md``): running app
invocations are capped per organisation and per app, and a create beyond a cap "returns a
429 response immediately"; API requests are rate-limited per organisation, with
``429`` + ``Retry-After`` over the limit and ``X-RateLimit-Limit`` /
``X-RateLimit-Remaining`` on every response.

Where the service is silent, the emulator chooses, and says so:

* A concurrency 429 has the error code ``concurrency_limit_exceeded`` and **no**
  ``Retry-After`` (set `Quotas.concurrency_retry_after` to send one).
* The rate limit is a fixed window of `Quotas.window` seconds (a minute by default, like
  the service's per-minute figure); ``X-RateLimit-Limit`` is the requests allowed per
  window. Every authenticated request counts, event streams included, and a request
  refused with 429 does not. ``Retry-After`` is the time left in the window, in seconds
  rounded up to the millisecond.
* Running means queued or running: synchronous invocations count too, until they finish.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiohttp import web

from . import _wire as wire

__all__ = ["QuotaStats", "Quotas"]


@dataclass
class QuotaStats:
    """What the quotas did so far."""

    concurrency_rejected: int = 0
    """Creates refused with 429 because a concurrency cap was reached."""
    rate_rejected: int = 0
    """Requests refused with 429 by the rate limit."""
    peak_running: int = 0
    """The most invocations running at once, across apps."""
    peak_running_by_app: dict[str, int] = field(default_factory=dict)
    """The most invocations running at once, per app."""


class Quotas:
    """The emulator's limits, reached as ``emulator.quotas``; every one is off by default.

    ```python
    emulator.quotas.max_running_per_app = 20      # like a plan's per-app cap
    emulator.quotas.rate_limit(100, window=1.0)   # 100 requests per second
    ```

    Args:
        max_running: Most invocations running at once across the organisation.
        max_running_per_app: Most invocations running at once per app.
        requests_per_window: Requests allowed per window (``None``: no rate limit).
        window: The rate limit's window, in seconds.
        concurrency_retry_after: ``Retry-After`` seconds to send with a concurrency 429
            (``None``: none, the emulator's default).
        app_caps: Caps of some apps, by name, in place of `max_running_per_app` (plans
            may differ per app).
        projects: The projects ``GET /org/projects/{id_or_name}/limits`` knows, by id or
            name, with their ``max_concurrent_invocations`` (``None``: no project cap).
            Unset, every project is known and reports `max_running` (the emulator's
            organisation is one project). A project's cap is reported, not enforced apart
            from `max_running`: set both alike.
    """

    def __init__(
        self,
        *,
        max_running: int | None = None,
        max_running_per_app: int | None = None,
        requests_per_window: int | None = None,
        window: float = 60.0,
        concurrency_retry_after: float | None = None,
        projects: Mapping[str, int | None] | None = None,
        app_caps: Mapping[str, int] | None = None,
    ) -> None:
        self.max_running = max_running
        """Cap on running invocations across apps, or ``None``."""
        self.max_running_per_app = max_running_per_app
        """Cap on running invocations of each app, or ``None``."""
        self.concurrency_retry_after = concurrency_retry_after
        """``Retry-After`` sent with a concurrency 429, or ``None`` for none."""
        self.app_caps: dict[str, int] = dict(app_caps or {})
        """Caps of some apps, in place of `max_running_per_app`."""
        self.projects: dict[str, int | None] | None = None if projects is None else dict(projects)
        """Known projects and their reported caps (``None``: every project, `max_running`)."""
        self.requests_per_window: int | None = None
        self.window = 60.0
        self.rate_limit(requests_per_window, window=window)
        self.stats = QuotaStats()
        """Counts and peaks so far."""
        self._running: Counter[str] = Counter()
        self._total = 0
        self._window_start = -math.inf
        self._window_count = 0

    def rate_limit(self, requests_per_window: int | None, *, window: float = 60.0) -> None:
        """Allow ``requests_per_window`` requests per ``window`` seconds (``None``: no limit)."""
        if requests_per_window is not None and requests_per_window < 1:
            raise ValueError("requests_per_window must be at least 1")
        if window <= 0:
            raise ValueError("window must be positive")
        self.requests_per_window = requests_per_window
        self.window = window
        self._window_start = -math.inf

    def running(self, app_name: str | None = None) -> int:
        """Invocations running now, of one app or of all."""
        return self._total if app_name is None else self._running[app_name]

    # --- used by the emulator ----------------------------------------------------------------

    def project_limits(self, id_or_name: str) -> dict[str, int | None] | None:
        """The ``ProjectLimits`` body for a project, or ``None`` when it is unknown (404)."""
        projects = self.projects
        if projects is None:
            cap = self.max_running
        elif id_or_name in projects:
            cap = projects[id_or_name]
        else:
            return None
        return {"max_concurrent_invocations": cap, "max_concurrent_sessions": None}

    def admit_request(self, now: float) -> tuple[dict[str, str], float | None]:
        """Count a request against the rate limit at loop time ``now``.

        Returns the rate-limit headers for its response, and ``None`` to let it through or
        the seconds to put in ``Retry-After`` when it must be refused.
        """
        limit = self.requests_per_window
        if limit is None:
            return {}, None
        start = self._window_start
        if now >= start + self.window:  # a new window (aligned on the first request's)
            start = now if math.isinf(start) else start + (now - start) // self.window * self.window
            self._window_start = start
            self._window_count = 0
        if self._window_count >= limit:
            self.stats.rate_rejected += 1
            left = self._window_start + self.window - now
            headers = {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": "0"}
            return headers, math.ceil(left * 1000) / 1000
        self._window_count += 1
        remaining = limit - self._window_count
        return {"X-RateLimit-Limit": str(limit), "X-RateLimit-Remaining": str(remaining)}, None

    def refuse_start(self, app_name: str) -> web.Response | None:
        """The 429 for a create over a concurrency cap, or ``None`` when it may start."""
        message = None
        app_cap = self.app_caps.get(app_name, self.max_running_per_app)
        org_cap = self.max_running
        if app_cap is not None and self._running[app_name] >= app_cap:
            message = f"App {app_name!r} has {app_cap} running invocations, its limit"
        elif org_cap is not None and self._total >= org_cap:
            message = f"The organization has {org_cap} running invocations, its limit"
        if message is None:
            return None
        self.stats.concurrency_rejected += 1
        headers = {}
        if self.concurrency_retry_after is not None:
            headers["Retry-After"] = wire.number(self.concurrency_retry_after)
        return web.Response(
            status=429,
            body=wire.error_body("concurrency_limit_exceeded", message),
            content_type="application/json",
            headers=headers,
        )

    def started(self, app_name: str) -> None:
        """An invocation of ``app_name`` started."""
        self._running[app_name] += 1
        self._total += 1
        stats = self.stats
        stats.peak_running = max(stats.peak_running, self._total)
        peak = stats.peak_running_by_app
        peak[app_name] = max(peak.get(app_name, 0), self._running[app_name])

    def finished(self, app_name: str) -> None:
        """An invocation of ``app_name`` reached a terminal state."""
        self._running[app_name] -= 1
        self._total -= 1
