"""Resuming an event stream without losing or repeating an event: which events to ask the
server for again, and which of those it sends are replays. Pure: no I/O, no clock.

The stream keeps the events it delivered within `REPLAY_WINDOW` of the newest timestamp.
On a resume it asks for ``since`` = newest - window, so an event stamped up to that much
before the newest one delivered (clock skew between an app and the API, events of one
timestamp, the API's nanoseconds rounded to microseconds) is still sent. Of what comes
back, an event is a replay when an equal one (by value, not by bytes: a server may
re-serialise it) was delivered and not yet matched, so equal events delivered twice are
skipped twice and a third is new. An event stamped before ``since`` is one the stream
asked not to get: a replay from a server that ignores ``since``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Final

import msgspec

from .models import InvocationEvent, UnknownEvent

__all__ = [
    "REPLAY_WINDOW",
    "ReplayFilter",
    "fingerprint",
    "prune",
    "resume_from",
    "rfc3339",
    "window_times",
]

#: How far before the newest delivered timestamp a resume asks the server to start again:
#: events out of order by up to this much are neither lost nor repeated.
REPLAY_WINDOW: Final = timedelta(seconds=10)
_MIN: Final = datetime.min.replace(tzinfo=timezone.utc)
_encode: Final = msgspec.json.Encoder().encode
_encode_sorted: Final = msgspec.json.Encoder(order="sorted").encode


def utc(ts: datetime) -> datetime:
    """A timestamp comparable with any other: a naive one is taken as UTC."""
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=timezone.utc)


def rfc3339(ts: datetime) -> str:
    """``ts`` in UTC as ``2025-06-20T12:00:00.123456Z`` (also for year 1)."""
    ts = utc(ts).astimezone(timezone.utc)
    return (
        f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d}T{ts.hour:02d}:{ts.minute:02d}:"
        f"{ts.second:02d}.{ts.microsecond:06d}Z"
    )


def fingerprint(event: InvocationEvent) -> bytes:
    """The event's value, canonically: equal for a replay however it was serialised."""
    if isinstance(event, UnknownEvent):
        try:
            return event.event.encode() + b"\0" + _encode_sorted(msgspec.json.decode(event.data))
        except (msgspec.DecodeError, UnicodeDecodeError):
            return event.event.encode() + b"\0" + event.data
    return _encode(event)


def window_times(events: list[InvocationEvent]) -> list[datetime | None]:
    """Each event's time in UTC, to place it in the replay window. One without a timestamp
    (an unknown event may lack it) takes the time of the next event that has one: the
    server may place it anywhere after the one before, so only that bounds it. ``None``
    when no later event has a time: such an event always stays in the window."""
    times: list[datetime | None] = []
    following: datetime | None = None
    for event in reversed(events):
        ts = event.timestamp
        if ts is not None:
            following = utc(ts)
        times.append(following)
    times.reverse()
    return times


def _before(ts: datetime) -> datetime:
    try:
        return ts - REPLAY_WINDOW
    except OverflowError:
        return _MIN


def prune(chunks: list[list[InvocationEvent]]) -> int:
    """Forget the delivered events too old to be replayed by a resume (those stamped more
    than `REPLAY_WINDOW` before the newest), a whole chunk at a time, oldest first; returns
    how many events remain."""
    times = window_times([event for chunk in chunks for event in chunk])
    known = [t for t in times if t is not None]
    if not known:
        return len(times)
    cutoff = _before(max(known))
    start = old = 0
    for chunk in chunks:
        end = start + len(chunk)
        if not all(t is not None and t < cutoff for t in times[start:end]):
            break
        old += 1
        start = end
    del chunks[:old]
    return len(times) - start


class ReplayFilter:
    """Recognises the replays on a resumed connection (see the module's docstring).

    Events with a timestamp are matched as a multiset: a server that honours ``since``
    sends again exactly the delivered ones stamped at or after it, one that ignores it
    sends them all, and events of one timestamp may come back in another order. An event
    without a timestamp may or may not come again, depending on where the server placed
    it; it keeps its place among the others, so it is expected until the replay of an
    event delivered after it arrives.
    """

    __slots__ = (
        "_alive",
        "_last",
        "_matched",
        "_timed",
        "_untimed",
        "_untimed_order",
        "newest",
        "since",
        "skipped",
    )

    def __init__(
        self, since: datetime | None, newest: datetime | None, delivered: list[tuple[bytes, bool]]
    ) -> None:
        self.since = since
        """What the resume asked for (``None``: everything)."""
        self.newest = newest
        """The newest timestamp delivered before the resume."""
        # value -> the delivered positions that may come again, earliest first
        self._timed: dict[bytes, deque[int]] = {}
        self._untimed: dict[bytes, deque[int]] = {}
        self._untimed_order: deque[int] = deque()  # positions of untimed events, in order
        self._matched: set[int] = set()  # untimed positions matched already
        for position, (key, timed) in enumerate(delivered):
            (self._timed if timed else self._untimed).setdefault(key, deque()).append(position)
            if not timed:
                self._untimed_order.append(position)
        self._alive = len(self._untimed_order)  # untimed events still expected
        self._last: datetime | None = None
        self.skipped = 0
        """Replays recognised (and dropped) so far, counted by the stream."""

    @property
    def done(self) -> bool:
        """Whether nothing more can be a replay."""
        return not self._timed and not self._alive

    def is_replay(self, event: InvocationEvent) -> bool:
        """Whether ``event``, just received on the resumed connection, was delivered before
        (each delivered event matches once)."""
        own = event.timestamp
        if own is not None:
            ts: datetime | None = utc(own)
            self._last = ts
        else:
            ts = self._last  # placed after the event before it: the server sends in order
        if ts is not None:
            if self.since is not None and ts < self.since:
                return True  # asked not to be sent: a server that ignores since
            if self.newest is not None and ts > self.newest:
                return False  # newer than all delivered: new
        key = fingerprint(event)
        if own is None:
            positions = self._untimed.get(key)
            while positions and positions[0] in self._matched:
                positions.popleft()  # ruled out by a later replay
            if not positions:
                return False
            position = positions.popleft()
            self._matched.add(position)
            self._alive -= 1
            return True
        positions = self._timed.get(key)
        if not positions:
            return False
        position = positions.popleft()  # the earliest: a tie may come back out of order
        if not positions:
            del self._timed[key]
        order = self._untimed_order
        while order and order[0] < position:  # delivered before this one, and not sent
            skipped = order.popleft()
            if skipped not in self._matched:
                self._matched.add(skipped)
                self._alive -= 1
        return True


def resume_from(recent: Iterable[InvocationEvent]) -> ReplayFilter | None:
    """Where to resume after delivering ``recent`` (``None``: nothing delivered yet)."""
    events = list(recent)
    if not events:
        return None
    times = window_times(events)
    known = [t for t in times if t is not None]
    if not known:  # no timestamps at all: ask for everything, match everything
        return ReplayFilter(None, None, [(fingerprint(e), False) for e in events])
    newest = max(known)
    since = _before(newest)
    delivered = [
        (fingerprint(e), e.timestamp is not None)
        for e, t in zip(events, times, strict=True)
        if e.timestamp is None or t is None or t >= since
    ]
    return ReplayFilter(since, newest, delivered)
