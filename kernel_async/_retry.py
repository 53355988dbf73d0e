"""Retries: the policy, its pure maths (backoff, Retry-After), and the aiohttp middleware.

The middleware is the one retry layer of the SDK. It runs around each attempt of a request
(inside aiohttp's redirect loop), reads the body of non-streaming responses so a connection
dropped mid-body is retried too, and converts transport failures into `APIConnectionError`
/ `APITimeoutError` when it gives up. That conversion also stops aiohttp's own silent
"retry an idempotent request once after a disconnect", so attempts stay bounded by the policy.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timezone
from functools import partial
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import ClientHandlerType, ClientMiddlewareType, ClientRequest, ClientResponse

from ._limits import classify_429
from ._transport import NO_CALL, Call, RedirectGuard, is_transport_error, transport_error

if TYPE_CHECKING:
    from ._limits import Backpressure, RateGate

__all__ = [
    "RetryMiddleware",
    "RetryPolicy",
    "Verdict",
    "backoff_delay",
    "decide",
    "parse_retry_after",
]

logger = logging.getLogger("kernel_async")

#: Header carrying how many times this request has been retried (``0`` on the first try).
RETRY_COUNT_HEADER = "X-Kernel-Retry-Count"

# Indirection so tests can observe the waits without sleeping.
sleep = asyncio.sleep

_NUMBER = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*\Z")
_random = random.Random()
_RETRY_COUNTS = tuple(str(i) for i in range(64))


def parse_retry_after(
    retry_after: str | None, retry_after_ms: str | None = None, *, now: float | None = None
) -> float | None:
    """Seconds to wait as the server asked, or ``None`` when it did not say (validly).

    ``retry_after_ms`` (milliseconds, non-standard) wins over ``retry_after``, which may be
    integer or decimal seconds or an HTTP-date (``now`` is the Unix time to measure it
    from). Negative, non-numeric, non-finite and malformed values give ``None``; a date in
    the past gives ``0.0``. Pure: no I/O, no clock unless ``now`` is omitted.
    """
    if retry_after_ms is not None and (m := _NUMBER.match(retry_after_ms)):
        return float(m.group(1)) / 1000.0
    if retry_after is None:
        return None
    if m := _NUMBER.match(retry_after):
        return float(m.group(1))
    try:
        when = email.utils.parsedate_to_datetime(retry_after)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with unknown local zone
        when = when.replace(tzinfo=timezone.utc)
    try:
        delta = when.timestamp() - (time.time() if now is None else now)
    except (OverflowError, ValueError, OSError):
        return None
    return max(0.0, delta)


def retry_after_from_headers(headers: Mapping[str, str]) -> float | None:
    """`parse_retry_after` applied to a response's (case-insensitive) headers."""
    return parse_retry_after(headers.get("Retry-After"), headers.get("retry-after-ms"))


def backoff_delay(
    retry: int, *, initial: float, maximum: float, jitter: float, rand: float
) -> float:
    """Exponential backoff with jitter, for the ``retry``-th retry (0-based).

    The base is ``min(initial * 2**retry, maximum)``; jitter takes up to ``jitter`` of it
    off, so the result lies in ``[base * (1 - jitter), base]`` for ``rand`` in ``[0, 1)``.
    """
    base = min(initial * 2.0 ** min(retry, 64), maximum)
    return base * (1.0 - jitter * rand)


@dataclass(frozen=True)
class RetryPolicy:
    """How failed requests are retried.

    Retried: connection errors and the statuses in `retry_statuses`, unless the server says
    otherwise with ``x-should-retry: true|false``. ``POST /invocations`` is retried only when
    the server cannot have started the invocation: the connection was never made, or the
    status is in `create_retry_statuses` (429, 503). A timeout, 500, 502 or 504 on create is
    raised, never retried, so a retry never starts a second invocation.

    Waits follow ``Retry-After`` / ``retry-after-ms`` when the server sends them, else
    exponential backoff with jitter capped at `max_delay`. A ``Retry-After`` longer than
    `max_retry_after` is not slept: the error is raised (`RateLimitError.retry_after` says
    how long the server asked for).

    A 429 from the service's rate limit is backpressure, not an error: the request waits
    for the window (together with every other request of the client) and goes again, up to
    `max_rate_limit_waits` times, without using up `max_retries`. A concurrency 429 on a
    create waits for a slot in the client's admission queue instead (see `Limits`).
    """

    max_retries: int = 2
    """Retries after the first attempt (0 disables retrying)."""
    initial_delay: float = 0.5
    """Backoff before the first retry, in seconds."""
    max_delay: float = 8.0
    """Longest backoff between two attempts, in seconds."""
    max_retry_after: float = 60.0
    """Longest ``Retry-After`` the policy will sleep; longer ones raise at once."""
    jitter: float = 0.25
    """Fraction of the backoff that is randomized away (0 for none)."""
    retry_statuses: frozenset[int] = field(default=frozenset({408, 409, 429, 500, 502, 503, 504}))
    """Statuses retried for idempotent requests (everything but create)."""
    create_retry_statuses: frozenset[int] = field(default=frozenset({429, 503}))
    """Statuses after which ``POST /invocations`` is retried: the server has not started it."""
    max_rate_limit_waits: int = 20
    """Rate-limit 429s one call waits out before raising `RateLimitError` (they do not count
    against `max_retries`; the call's timeout bounds them too)."""

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.max_rate_limit_waits < 0:
            raise ValueError(f"max_rate_limit_waits must be >= 0, got {self.max_rate_limit_waits}")
        if self.initial_delay < 0 or self.max_delay < 0 or self.max_retry_after < 0:
            raise ValueError("retry delays must be >= 0")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be between 0 and 1, got {self.jitter}")

    def with_max_retries(self, max_retries: int) -> RetryPolicy:
        """A copy of this policy with another `max_retries`."""
        return replace(self, max_retries=max_retries)

    def backoff(self, retry: int) -> float:
        """The jittered backoff before the ``retry``-th retry (0-based)."""
        return backoff_delay(
            retry,
            initial=self.initial_delay,
            maximum=self.max_delay,
            jitter=self.jitter,
            rand=_random.random(),
        )

    def should_retry_status(
        self, status: int, headers: Mapping[str, str], *, idempotent: bool
    ) -> bool:
        """Whether a response with this status may be retried."""
        override = headers.get("x-should-retry")
        if override == "true":
            return True
        if override == "false":
            return False
        if idempotent:
            return status in self.retry_statuses
        return status in self.create_retry_statuses

    def should_retry_exception(self, exc: BaseException, *, idempotent: bool) -> bool:
        """Whether a transport failure may be retried.

        A connection that was never made (refused, DNS) is always safe to retry; anything
        after the request may have been sent (reset, disconnect, timeout) only when the
        request is idempotent. TLS certificate errors are never retried.
        """
        if isinstance(exc, aiohttp.ClientSSLError):
            return False
        if isinstance(exc, aiohttp.ClientConnectorError):
            return True
        if idempotent:
            return isinstance(exc, (aiohttp.ClientError, asyncio.TimeoutError, OSError))
        return False


# --- the decision -----------------------------------------------------------------------------

#: `Verdict.action`: the attempt's outcome is the call's (a response returned, an error
#: raised).
GIVE_UP: Final = "give up"
#: Make the attempt again after `Verdict.delay` seconds (counts against ``max_retries``).
RETRY: Final = "retry"
#: A rate-limit 429: go again when the window allows, with every other request (counts
#: against ``max_rate_limit_waits``).
RATE: Final = "rate"
#: A concurrency 429 on a create: the caller waits for a slot in its admission queue.
QUEUE: Final = "queue"


class Verdict:
    """What to do after an attempt that did not succeed (see `decide`)."""

    __slots__ = ("action", "delay", "pause", "reason", "retry_after")

    def __init__(
        self,
        action: str,
        delay: float = 0.0,
        *,
        pause: float | None = None,
        retry_after: float | None = None,
        reason: str = "",
    ) -> None:
        self.action = action
        """`GIVE_UP`, `RETRY`, `RATE` or `QUEUE`."""
        self.delay = delay
        """Seconds before the next attempt."""
        self.pause = pause
        """For a rate-limit 429: seconds every request of the client should hold back
        (the server's ``Retry-After``, at most ``max_retry_after``), whatever this call
        does."""
        self.retry_after = retry_after
        """The ``Retry-After`` the server asked for, if any (uncapped)."""
        self.reason = reason
        """Why the attempt failed, for logs and traces (``503``, ``ClientOSError``...)."""

    def __repr__(self) -> str:
        return f"Verdict({self.action!r}, {self.delay!r}, pause={self.pause!r})"


def decide(
    policy: RetryPolicy,
    *,
    idempotent: bool,
    retries: int,
    rate_waits: int,
    status: int | None,
    headers: Mapping[str, str] | None = None,
    body: bytes = b"",
    error: BaseException | None = None,
    time_left: float | None = None,
    paused_for: float = 0.0,
    managed: bool = False,
) -> Verdict:
    """What to do after an attempt that did not succeed: the one place retries are decided,
    for requests (`RetryMiddleware`) and event streams alike. Pure (no I/O, no clock).

    The attempt got ``status`` with ``headers`` and ``body``, or no response at all
    (``status=None``): ``error`` is then the transport failure, or ``None`` for a connection
    that ended cleanly before it should have (a stream). ``retries`` and ``rate_waits`` are
    the retries and rate-limit waits made so far; ``time_left`` the seconds to the call's
    deadline (``None``: none); ``paused_for`` how long every request is held back already
    (the rate gate's pause). ``managed``: a create whose concurrency 429s the caller's
    admission queue handles. ``max_retry_after`` is applied here and nowhere else: a
    ``Retry-After`` beyond it is never slept, and pauses the client no longer than it.
    """
    if status is None:
        if (
            retries >= policy.max_retries
            or (error is None and not idempotent)
            or (
                error is not None
                and not policy.should_retry_exception(error, idempotent=idempotent)
            )
        ):
            return Verdict(GIVE_UP)
        reason = "ended" if error is None else type(error).__qualname__
        return _after(policy.backoff(retries), time_left, reason)
    headers = {} if headers is None else headers
    retry_after = retry_after_from_headers(headers)
    too_long = retry_after is not None and retry_after > policy.max_retry_after
    if status == 429 and headers.get("x-should-retry") != "false":
        kind = classify_429(headers, body)
        says_when = retry_after is not None or headers.get("X-RateLimit-Remaining") == "0"
        # A create's rate 429 that does not say when is the rate limit all the same: never
        # queued as a cap, nor raised at once (other requests retry it as they would).
        rate_create = kind == "rate" and not idempotent
        if (says_when and (idempotent or kind == "rate")) or rate_create:
            # The rate limit: everyone waits for the window (a backoff when not told).
            fallback = policy.backoff(rate_waits)
            pause = fallback if retry_after is None else min(retry_after, policy.max_retry_after)
            if too_long or rate_waits >= policy.max_rate_limit_waits:
                return Verdict(GIVE_UP, pause=pause, retry_after=retry_after)
            verdict = _after(max(pause, paused_for), time_left, "429", RATE)
            verdict.pause, verdict.retry_after = pause, retry_after
            return verdict
        if managed:
            return Verdict(QUEUE, retry_after=retry_after)
    if retries >= policy.max_retries or too_long:
        return Verdict(GIVE_UP, retry_after=retry_after)
    if not policy.should_retry_status(status, headers, idempotent=idempotent):
        return Verdict(GIVE_UP, retry_after=retry_after)
    delay = policy.backoff(retries) if retry_after is None else retry_after
    verdict = _after(delay, time_left, str(status))
    verdict.retry_after = retry_after
    return verdict


def _after(delay: float, time_left: float | None, reason: str, action: str = RETRY) -> Verdict:
    """Go again after ``delay``, unless that is past the deadline."""
    if time_left is not None and delay >= time_left:
        return Verdict(GIVE_UP, reason=reason)
    return Verdict(action, delay, reason=reason)


# --- the middleware ----------------------------------------------------------------------------


class RetryMiddleware:
    """An aiohttp client middleware applying a `RetryPolicy` to each request.

    The client installs it on every request it makes (first, so the user's own middlewares
    run once per attempt), bound to the call (`bind`): its deadline, the method it started
    with and its trace. It can also be put on any ``aiohttp.ClientSession`` directly::

        session = aiohttp.ClientSession(middlewares=[RetryMiddleware(RetryPolicy())])

    Only ``POST`` is treated as non-idempotent; see `RetryPolicy` for what that means.
    ``backpressure`` is the client's shared rate-limit gate and admission queue (set by
    `AsyncKernel`); without one, a rate-limit 429 only delays the request that got it.
    ``guard`` checks every attempt, redirect hops included, against the client's redirect
    policy (one middleware doing both keeps aiohttp on its single-middleware fast path).
    """

    __slots__ = ("backpressure", "guard", "policy")

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        backpressure: Backpressure | None = None,
        guard: RedirectGuard | None = None,
    ) -> None:
        self.policy = policy
        self.backpressure = backpressure
        self.guard = guard

    def __repr__(self) -> str:
        return f"RetryMiddleware({self.policy!r})"

    def __call__(self, req: ClientRequest, handler: ClientHandlerType) -> Awaitable[ClientResponse]:
        return self.attempts(NO_CALL, req, handler)

    def bind(self, call: Call) -> ClientMiddlewareType:
        """This middleware for the requests of one call."""
        return partial(self.attempts, call)

    async def attempts(
        self, call: Call, req: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        """Send ``req`` until it succeeds or `decide` gives up; returns the last response,
        or raises the last transport failure as `APIConnectionError`."""
        if self.guard is not None:
            self.guard.check(req, call.method)
        policy = self.policy
        idempotent = req.method != "POST"
        # The client's creates wait for a slot in its admission queue on a concurrency 429.
        managed = not idempotent and self.backpressure is not None
        # Streams hand the open response to their reader. Other idempotent requests are
        # read here, so that a body cut off mid-way is a retryable failure like any other;
        # a create only when it failed (a 429's body says which limit): a create cut off
        # mid-body is not retried anyway, and its caller reads it.
        stream = idempotent and req.headers.get("Accept") == "text/event-stream"
        gate = None if self.backpressure is None else self.backpressure.gate()
        trace = call.trace
        retries = rate_waits = 0
        front = False
        while True:
            # The client's headers start at "0" (sized once, no growth per request).
            if retries or RETRY_COUNT_HEADER not in req.headers:
                req.headers[RETRY_COUNT_HEADER] = (
                    _RETRY_COUNTS[retries] if retries < 64 else str(retries)
                )
            ticket = 0
            if gate is not None:
                ticket = 0 if front else gate.try_acquire()
                if not ticket:
                    ticket = await _wait_at(gate, call, front, rate_waits)
            front = False
            headers = resp = error = None
            body = b""
            try:
                resp = await handler(req)
                headers = resp.headers
                if (idempotent or resp.status >= 400) and not stream:
                    try:
                        body = await resp.read()
                    except BaseException:
                        resp.close()
                        raise
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not is_transport_error(exc):
                    raise
                error, resp = exc, None
            finally:
                if gate is not None:
                    gate.received(ticket, headers)
            if resp is not None and resp.status < 400:
                return resp
            verdict = decide(
                policy,
                idempotent=idempotent,
                retries=retries,
                rate_waits=rate_waits,
                status=None if resp is None else resp.status,
                headers=headers,
                body=body,
                error=error,
                time_left=call.time_left(asyncio.get_running_loop().time()),
                paused_for=0.0 if gate is None else gate.paused_for(),
                managed=managed,
            )
            if verdict.pause is not None and gate is not None:
                gate.pause(verdict.pause)  # the server's word holds for every request
            action = verdict.action
            if action is GIVE_UP or action is QUEUE:
                if resp is None:
                    raise transport_error(error, req.method, str(req.url)) from error  # type: ignore[arg-type]
                return resp
            if resp is not None:
                resp.release()
            delay = verdict.delay
            if action is RATE:
                rate_waits += 1
                front = True
                trace.rate_limited("rate", verdict.retry_after)
                if gate is None:
                    await sleep(delay)
                else:
                    gate.rate_limited += 1
                continue
            retries += 1
            trace.retry(verdict.reason, delay)
            logger.info(
                "Retrying %s %s in %.2fs (retry %d of %d) after %s",
                req.method,
                req.url.raw_path,
                delay,
                retries,
                policy.max_retries,
                verdict.reason if resp is None else f"HTTP {verdict.reason}",
            )
            await sleep(delay)


async def _wait_at(gate: RateGate, call: Call, front: bool, sent: int) -> int:
    """Wait at the rate gate (reported to the call's trace); the request's ticket."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        return await gate.acquire(call.deadline, front=front, sent=sent)
    finally:
        call.trace.waited("rate_limit", loop.time() - started)
