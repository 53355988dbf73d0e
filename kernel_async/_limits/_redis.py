"""Shared limits on Redis: every process and machine using one Redis shares the
concurrency slots (as leases that expire), each app's learnt window and the
organisation's, the rate-limit pause, and one queue of creates in which the workers take
turns. The process's own admission policy learns nothing from a concurrency 429 while
Redis works (Redis learnt it for the fleet); it takes over from where it is if Redis
fails.

Turned on by ``Limits(shared="redis://host:port/db")`` or, with no code change, by the
environment variable ``KERNEL_LIMITS_URL``. Needs the ``redis`` extra (redis-py's asyncio
client). When Redis is unreachable or fails mid-run, the client logs one warning and goes
on uncoordinated (each process learning alone): a create waiting for a shared slot goes
on, nothing is lost, nothing is sent twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import uuid
from collections.abc import Awaitable
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import APITimeoutError
from . import _redis_scripts as scripts

__all__ = ["LEASE_SECONDS", "ENV_VAR", "RedisLimits", "SharedLease"]

logger = logging.getLogger("kernel_async")

#: The environment variable naming the Redis of the shared limits (``redis://host:port/db``).
ENV_VAR: Final = "KERNEL_LIMITS_URL"
#: A slot's lease: renewed every third of it while its invocation runs, so a killed
#: worker's slots come back within this.
LEASE_SECONDS: Final = 10.0
#: How often a worker with creates waiting asks Redis for slots.
POLL_SECONDS: Final = 0.01
#: Redis calls that take longer than this count as Redis failing.
REDIS_TIMEOUT: Final = 2.0
#: Most Redis calls of one worker at once; more wait their turn (redis-py's pool raises
#: past its size, 100 by default, instead of waiting: that would give up on Redis).
MAX_CALLS: Final = 32
#: With nothing of the fleet's running and a concurrency 429 (another tenant holds the
#: cap), every worker's creates wait this long before the next try (one create probes),
#: doubling with each such 429 in a row up to `IDLE_PAUSE_MAX_SECONDS`.
IDLE_PAUSE_SECONDS: Final = 0.25
IDLE_PAUSE_MAX_SECONDS: Final = 0.5


class SharedLease:
    """One create's shared slot (or its place in the shared queue)."""

    __slots__ = ("app", "token")

    def __init__(self, app: str, token: str) -> None:
        self.app = app
        self.token = token


class RedisLimits:
    """The shared limits of one server and API key (``scope``), through Redis at ``url``.

    Use from one event loop: `acquire` a slot before a create, then `started` (or
    `rejected` on a concurrency 429, then `acquire` again with ``requeue``, or `release`
    on any other failure); `finished` when the invocation is seen finished. Every method
    degrades to uncoordinated (returns ``None`` / does nothing) once Redis failed.
    """

    def __init__(
        self,
        url: str,
        scope: str,
        *,
        initial: int = 4,
        lease: float = LEASE_SECONDS,
        poll: float = POLL_SECONDS,
        max_pause: float = 60.0,
        account: str | None = None,
    ) -> None:
        self.url = url
        self._prefix = f"kernel:limits:{scope}"
        # The rate limit is the account's (server and key), whatever the project: its
        # pause lives under the account's prefix, which is ``scope``'s without a project.
        self._account = f"kernel:limits:{account or scope}"
        self._worker = uuid.uuid4().hex
        self._initial = initial
        self._lease = lease
        self._poll = poll
        self._max_pause = max_pause  # the retry policy's max_retry_after: the longest pause
        self._tokens = itertools.count()
        self._redis: Any = None
        self.failed: BaseException | None = None
        """Why Redis was given up on (``None``: it works, as far as known)."""
        self._waiting: dict[str, dict[str, asyncio.Future[bool]]] = {}
        self._new: dict[str, list[tuple[str, str]]] = {}  # app -> (ticket, token) to queue
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}  # app -> set when a slot was freed
        self._held: dict[str, dict[str, float]] = {}  # app -> token -> local expiry
        self._by_invocation: dict[str, SharedLease] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._releasing: dict[str, set[asyncio.Task[Any]]] = {}  # app -> releases on the way
        self._renewer: asyncio.Task[None] | None = None
        self._closed = False
        self._calls = asyncio.Semaphore(MAX_CALLS)

    # --- the create path ------------------------------------------------------------------

    async def acquire(
        self, app: str, deadline: float | None, requeue: SharedLease | None = None
    ) -> SharedLease | None:
        """Wait, taking turns with every other worker's creates, for a slot of ``app`` (until
        ``deadline``, loop time). ``requeue``: a lease refused with a concurrency 429, put
        back at the head by `rejected`. ``None``: Redis failed, go on uncoordinated."""
        if self.failed is not None or self._closed:
            return None
        loop = asyncio.get_running_loop()
        token = requeue.token if requeue is not None else f"{self._worker}:{next(self._tokens)}"
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiting.setdefault(app, {})[token] = fut
        # A create refused with a 429 goes back to the head; others take their turn.
        self._new.setdefault(app, []).append(("head" if requeue is not None else "turn", token))
        poller = self._pollers.get(app)
        if poller is None or poller.done():
            self._pollers[app] = loop.create_task(self._poll_loop(app))
        else:
            self._wake.setdefault(app, asyncio.Event()).set()  # ask now, not at the next poll
        try:
            if deadline is None:
                granted = await fut
            else:
                granted = await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
        except BaseException as exc:
            self._waiting.get(app, {}).pop(token, None)
            if fut.done() and not fut.cancelled() and fut.result():
                self._release_soon(app, [token])  # granted as it timed out: give it back
            else:
                self._forget_soon(app, token)
            if isinstance(exc, asyncio.TimeoutError):
                raise APITimeoutError(
                    f"the call's deadline passed while its create waited for a shared slot "
                    f"of app {app!r}; nothing was sent"
                ) from None
            raise
        if not granted:
            return None
        self._held.setdefault(app, {})[token] = math.inf
        self._ensure_renewer()
        return SharedLease(app, token)

    async def started(
        self, lease: SharedLease, invocation_id: str | None, lease_seconds: float
    ) -> None:
        """The create succeeded: its slot is held until ``invocation_id`` is seen finished
        (``None``: it already did) or ``lease_seconds`` pass; the app's window may grow."""
        if invocation_id is None:
            self.release(lease)
        else:
            held = self._held.get(lease.app)
            if held is not None and lease.token in held:
                held[lease.token] = asyncio.get_running_loop().time() + lease_seconds
                self._by_invocation[invocation_id] = lease
        self._spawn(self._call(scripts.STARTED, lease.app, str(self._initial), lease.token))

    async def rejected(self, lease: SharedLease, retry_after: float | None) -> None:
        """A concurrency 429: the fleet's running count is a cap (the app's or the
        organisation's, see `scripts.REJECTED`); with nothing of the fleet's running, every
        worker pauses ``retry_after`` (else `IDLE_PAUSE_SECONDS`). Then call `acquire` with
        ``requeue`` to wait again, near the head of the shared queue."""
        self._held.get(lease.app, {}).pop(lease.token, None)
        pause, most = IDLE_PAUSE_SECONDS, IDLE_PAUSE_MAX_SECONDS
        if retry_after is not None:
            # The service said how long: as long, no longer, and never longer than a
            # local hold (`max_retry_after`): one answer never pauses the fleet for an hour.
            pause = most = min(retry_after, self._max_pause)
        ms = [str(int(seconds * 1000)) for seconds in (pause, most)]
        await self._call(scripts.REJECTED, lease.app, lease.token, *ms, timed=True)

    def release(self, lease: SharedLease) -> None:
        """The create failed, or its invocation ended: free the slot (soon, in a task)."""
        if self._held.get(lease.app, {}).pop(lease.token, None) is not None:
            self._release_soon(lease.app, [lease.token])

    def finished(self, invocation_id: str) -> None:
        """An invocation was seen in a terminal state: free its shared slot."""
        lease = self._by_invocation.pop(invocation_id, None)
        if lease is not None:
            self.release(lease)

    def pause_all(self, seconds: float) -> None:
        """A rate-limit 429 with ``Retry-After``: every worker's creates wait that long."""
        seconds = min(seconds, self._max_pause)
        if self.failed is None and not self._closed and seconds > 0:
            ms = str(int(seconds * 1000))
            self._spawn(self._call(scripts.PAUSE, ms, prefix=self._account))

    def seed_all(self, cap: int) -> None:
        """The service told the cap every app of this server and key shares (a project's
        ``max_concurrent_invocations``): the fleet's window, and each app's not learnt yet,
        start there instead of slow start."""
        if cap >= 1 and self.failed is None and not self._closed:
            self._initial = max(self._initial, cap)
            self._spawn(self._call(scripts.SEED, str(cap)))

    def waiting(self, app: str) -> int:
        """Creates of ``app`` of this worker waiting for a shared slot now."""
        return len(self._waiting.get(app, ()))

    async def aclose(self) -> None:
        """Free every slot this worker holds, stop its tasks, close the connection."""
        self._closed = True
        for waiting in self._waiting.values():
            for fut in waiting.values():
                if not fut.done():
                    fut.set_result(False)
        tasks = [*self._pollers.values(), *([self._renewer] if self._renewer else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, *self._tasks, return_exceptions=True)
        if self.failed is None and self._redis is not None:
            held = [(app, list(tokens)) for app, tokens in self._held.items() if tokens]
            for app, tokens in held:
                await self._call(scripts.RELEASE, app, *tokens)
        self._held.clear()
        redis = self._redis
        self._redis = None
        if redis is not None:
            await redis.aclose()

    # --- inside -----------------------------------------------------------------------------

    async def _poll_loop(self, app: str) -> None:
        """While creates of ``app`` wait here, ask Redis which of them may go."""
        waiting = self._waiting[app]
        while waiting and self.failed is None:
            releasing = self._releasing.get(app)
            if releasing:
                # Slots of ours that ended go back first: granted before their release,
                # a create can get in on an ended invocation's slot, and Redis would know
                # the app to run more than its cap (then take its own 429 for the
                # organisation's).
                await asyncio.wait(set(releasing))
            new = self._new.pop(app, [])
            args: list[str] = [str(self._initial), self._account]
            for ticket, token in new:
                args += [ticket, token]
            result = await self._call(scripts.ACQUIRE, app, *args, timed=True)
            if result is None:
                return  # failed: _fail let every waiter go
            pause = int(result[0])
            for token in result[1:]:
                fut = waiting.pop(token, None)
                if fut is None or fut.done():
                    self._release_soon(app, [token])  # its create left meanwhile
                else:
                    fut.set_result(True)
            if pause > 0:
                await asyncio.sleep(pause / 1000)
                continue
            wake = self._wake.setdefault(app, asyncio.Event())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self._poll)
            wake.clear()

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        """Renew the leases of the slots held, a third of a lease apart; a slot held past
        its own invocation's lease is freed (its end was never seen)."""
        loop = asyncio.get_running_loop()
        while self.failed is None and any(self._held.values()):
            await asyncio.sleep(self._lease / 3)
            now = loop.time()
            for app, held in list(self._held.items()):
                stale = [token for token, until in held.items() if until <= now]
                for token in stale:
                    del held[token]
                if stale:
                    await self._call(scripts.RELEASE, app, *stale)
                if held:
                    await self._call(scripts.RENEW, app, *held, timed=True)

    def _release_soon(self, app: str, tokens: list[str]) -> None:
        if self.failed is None and self._redis is not None:
            task = self._spawn(self._release(app, tokens))
            releasing = self._releasing.setdefault(app, set())
            releasing.add(task)
            task.add_done_callback(releasing.discard)

    async def _release(self, app: str, tokens: list[str]) -> None:
        """Free ``tokens``' slots, then let this worker's waiters ask at once."""
        await self._call(scripts.RELEASE, app, *tokens)
        wake = self._wake.get(app)
        if wake is not None:
            wake.set()

    def _forget_soon(self, app: str, token: str) -> None:
        """A waiter left before it was granted: drop it from the shared queue."""
        new = self._new.get(app)
        unsent = [entry for entry in new or () if entry[1] == token]
        if new is not None and unsent:
            new.remove(unsent[0])  # never sent to Redis
        else:
            self._release_soon(app, [token])

    def _spawn(self, work: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _call(
        self, script: str, app: str, *args: str, timed: bool = False, prefix: str | None = None
    ) -> Any:
        """Run ``script`` with the prefix (``prefix``, else this scope's) and ``app``
        first (``timed``: then the lease, in ms, and this worker). On any failure:
        `_fail`, and ``None`` (at once, once Redis failed: checked when the call's turn
        comes)."""
        argv = [prefix or self._prefix, app]
        if timed:
            argv += [str(int(self._lease * 1000)), self._worker]
        argv += args
        async with self._calls:  # the timeout counts from a connection's turn
            if self.failed is not None:
                return None
            try:
                redis = self._connect()
                return await asyncio.wait_for(redis.eval(script, 0, *argv), REDIS_TIMEOUT)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of Redis: go on uncoordinated
                self._fail(exc)
                return None

    def _connect(self) -> Any:
        redis = self._redis
        if redis is None:
            from redis.asyncio import Redis

            redis = self._redis = Redis.from_url(
                self.url,
                decode_responses=True,
                socket_timeout=REDIS_TIMEOUT,
                socket_connect_timeout=REDIS_TIMEOUT,
            )
        return redis

    def _fail(self, exc: BaseException) -> None:
        """Redis failed: warn once, let every waiter go on uncoordinated."""
        if self.failed is not None:
            return
        self.failed = exc
        logger.warning(
            "Shared limits on Redis failed (%s: %s); going on uncoordinated, each process "
            "learning its limits alone",
            type(exc).__name__,
            exc,
        )
        for waiting in self._waiting.values():
            for fut in waiting.values():
                if not fut.done():
                    fut.set_result(False)
            waiting.clear()
        self._held.clear()
        self._by_invocation.clear()


def shared_from(
    url: str | None,
    scope: str,
    initial: int,
    *,
    max_pause: float = 60.0,
    account: str | None = None,
) -> RedisLimits | None:
    """The shared limits at ``url`` (``None``: none); a URL that is not ``redis://`` or
    ``rediss://``, or the ``redis`` package missing, warns and gives ``None``. A
    ``lease=`` query parameter sets the slots' lease, in seconds (default
    `LEASE_SECONDS`). ``max_pause``: the longest a ``Retry-After`` pauses the fleet;
    ``account``: the server and key's scope, where the rate-limit pause lives (``scope``
    when it is the same: no project)."""
    if not url:
        return None
    if not url.startswith(("redis://", "rediss://", "unix://")):
        scheme = url.partition(":")[0] if "://" in url else ""
        # Not the URL itself: it may carry a password.
        logger.warning(
            "Ignoring the shared limits' URL (scheme %r): not a redis:// URL", scheme[:16]
        )
        return None
    try:
        import redis.asyncio  # noqa: F401
    except ImportError:
        logger.warning("Shared limits need the redis package: pip install 'kernel-async[redis]'")
        return None
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query)
        parts.port  # noqa: B018  (raises on a port out of range or not a number)
    except ValueError as exc:
        logger.warning("Ignoring the shared limits' URL: %s", exc)
        return None
    lease = LEASE_SECONDS
    for name, value in query:
        if name == "lease":
            try:
                lease = float(value)
            except ValueError:
                lease = math.nan
            if not math.isfinite(lease) or lease <= 0:
                logger.warning("Ignoring lease=%r in the shared limits' URL: not seconds", value)
                lease = LEASE_SECONDS
    rest = urlencode([(name, value) for name, value in query if name != "lease"])
    return RedisLimits(
        urlunsplit(parts._replace(query=rest)),
        scope,
        initial=initial,
        lease=lease,
        max_pause=max_pause,
        account=account,
    )
