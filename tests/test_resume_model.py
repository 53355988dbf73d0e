"""A model-based test of resume: a server model cuts connections at arbitrary points,
honours or ignores ``since`` and re-serialises replays; the client must deliver every event
exactly once, in the server's order, end on the terminal state, or give up after the
policy's number of connections in a row that bring nothing new.

The timestamps run forward with ties and local disorder (an app's clock against the API's,
the terminal state stamped before the logs it follows) of up to 3 s, inside the 10 s
replay window the SDK documents.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kernel_async import (
    APIConnectionError,
    AsyncKernel,
    ErrorEvent,
    InvocationStateEvent,
    LogEvent,
    RetryPolicy,
    SSEHeartbeatEvent,
    UnknownEvent,
)

POLICY = RetryPolicy(max_retries=2, initial_delay=0.001, max_delay=0.002, jitter=0.0)
BASE = datetime(2025, 6, 20, 12, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Event:
    kind: str  # log | custom | untimed | error | heartbeat | terminal
    at: datetime  # the server's own time for it (an untimed event does not show it)
    text: str

    def wire(self) -> dict[str, Any]:
        stamp = self.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        if self.kind == "log":
            return {"event": "log", "timestamp": stamp, "message": self.text}
        if self.kind == "custom":
            return {"event": "custom", "timestamp": stamp, "note": self.text}
        if self.kind == "untimed":
            return {"event": "untimed", "note": self.text}
        if self.kind == "error":
            return {
                "event": "error",
                "timestamp": stamp,
                "error": {"code": "e", "message": self.text},
            }
        if self.kind == "heartbeat":
            return {"event": "sse_heartbeat", "timestamp": stamp}
        invocation = {
            "id": "inv_1",
            "app_name": "app",
            "version": "1",
            "action_name": "a",
            "started_at": "2025-06-20T12:00:00Z",
            "status": "succeeded",
        }
        return {"event": "invocation_state", "timestamp": stamp, "invocation": invocation}


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    kinds = st.sampled_from(["log", "log", "log", "custom", "untimed", "error", "heartbeat"])
    count = draw(st.integers(1, 30))
    events = []
    for i in range(count):
        jitter = draw(st.integers(-3000, 3000))  # ms: ties and disorder
        at = BASE + timedelta(seconds=i, milliseconds=jitter)
        text = draw(st.sampled_from(["a", "b", "c"]))  # equal values happen
        events.append(Event(draw(kinds), at, text))
    skew = draw(st.integers(-3000, 3000))  # the terminal state may be stamped before logs
    events.append(Event("terminal", BASE + timedelta(seconds=count, milliseconds=skew), ""))
    return events


def frame(event: dict[str, Any], rng: random.Random | None) -> bytes:
    if rng is not None:  # a replay, re-serialised: another key order, other spacing
        items = list(event.items())
        rng.shuffle(items)
        return b"data: " + json.dumps(dict(items), separators=(", ", " : ")).encode() + b"\n\n"
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def expected(
    events: list[Event], cuts: list[tuple[int, bool]], honours_since: bool
) -> tuple[int, int, bool]:
    """The model: how many events the client delivers, over how many connections, and
    whether it gives up. Each connection sends the server's sequence (filtered by ``since``
    when it honours it) up to its cut; of that, what the client had not delivered is new."""
    delivered = failures = connections = 0
    while True:
        indices = list(range(len(events)))
        timed = [e.at for e in events[:delivered] if e.kind != "untimed"]
        if honours_since and timed:
            since = max(timed) - timedelta(seconds=10)
            indices = [i for i in indices if events[i].at >= since]
        sent = cuts[connections][0] if connections < len(cuts) else len(indices)
        new = [i for i in indices[:sent] if i >= delivered]
        assert new == list(range(delivered, delivered + len(new)))  # the model's premise
        delivered += len(new)
        connections += 1
        if delivered == len(events):
            return delivered, connections, False
        if any(events[i].kind != "heartbeat" for i in new):
            failures = 0
        if failures >= POLICY.max_retries:
            return delivered, connections, True
        failures += 1


async def play(
    events: list[Event], cuts: list[tuple[int, bool]], honours_since: bool, reserialise: bool
) -> tuple[list[Any], int, BaseException | None]:
    rng = random.Random(len(events))
    connections = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal connections
        index = connections
        connections += 1
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        since = request.query.get("since")
        sequence = events
        if honours_since and since is not None:
            cutoff = datetime.fromisoformat(since.replace("Z", "+00:00"))
            sequence = [e for e in events if e.at >= cutoff]
        frames = [frame(e.wire(), rng if reserialise and index else None) for e in sequence]
        if index < len(cuts):
            sent, mid_event = cuts[index]
            body = b"".join(frames[:sent])
            if mid_event and sent < len(frames):
                body += frames[sent][: len(frames[sent]) // 2]
            await response.write(body)
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write(b"".join(frames))
        return response

    app = web.Application()
    app.router.add_get("/invocations/{id}/events", handler)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    got: list[Any] = []
    error: BaseException | None = None
    try:
        async with AsyncKernel("sk_model", base_url=url, retry=POLICY) as kernel:
            try:
                async for event in kernel.invocations.follow("inv_1", heartbeats=True):
                    got.append(event)
            except APIConnectionError as exc:
                error = exc
    finally:
        await runner.cleanup()
    return got, connections, error


def shown(event: Any) -> tuple[str, str]:
    """What the client delivered, comparable with the model's events."""
    if isinstance(event, LogEvent):
        return "log", event.message
    if isinstance(event, UnknownEvent):
        return event.event, json.loads(event.data)["note"]
    if isinstance(event, ErrorEvent):
        return "error", event.error.message
    if isinstance(event, SSEHeartbeatEvent):
        return "heartbeat", ""
    assert isinstance(event, InvocationStateEvent)
    return "terminal", ""


@settings(
    max_examples=int(os.environ.get("KERNEL_ASYNC_MODEL_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    events=streams(),
    cuts=st.lists(st.tuples(st.integers(0, 12), st.booleans()), max_size=8),
    honours_since=st.booleans(),
    reserialise=st.booleans(),
)
def test_resume_delivers_exactly_once_in_order_or_gives_up_as_the_policy_says(
    events: list[Event], cuts: list[tuple[int, bool]], honours_since: bool, reserialise: bool
) -> None:
    got, connections, error = asyncio.run(play(events, cuts, honours_since, reserialise))
    delivered, made, gives_up = expected(events, cuts, honours_since)
    want = [(e.kind, e.text if e.kind != "heartbeat" else "") for e in events]
    assert [shown(e) for e in got] == want[:delivered]  # exactly once, in order
    assert connections == made  # no more, no fewer attempts than the policy says
    if gives_up:
        assert error is not None
    else:
        assert error is None
        assert isinstance(got[-1], InvocationStateEvent)  # ended on the terminal state
