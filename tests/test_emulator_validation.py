"""The emulator refuses what it cannot take with the API's 400 error body, never a 500 with a
traceback: ``since`` values out of range (huge durations, offsets that leave the calendar)
and JSON nested deeper than a decoder follows."""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from kernel_async.testing import KernelEmulator
from kernel_async.testing._wire import MAX_DURATION_NS, parse_duration_ns, parse_since_ns

UNITS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9}
UNITS["h"] = 3600 * 10**9
EPOCH = datetime(1970, 1, 1)
FIRST_SECOND = (datetime(1, 1, 1) - EPOCH) // timedelta(seconds=1)
LAST_SECOND = (datetime(9999, 12, 31, 23, 59, 59) - EPOCH) // timedelta(seconds=1)
NOW = 1_750_420_800_000_000_000

# --- the `since` parser (pure) ----------------------------------------------------------------

digits = st.text("0123456789", max_size=25)
components = st.tuples(digits, st.none() | digits, st.sampled_from(sorted(UNITS))).filter(
    lambda c: bool(c[0] or c[1])
)


def spelt(component: tuple[str, str | None, str]) -> str:
    whole, fraction, unit = component
    return whole + ("" if fraction is None else "." + fraction) + unit


@given(st.lists(components, min_size=1, max_size=4))
@example([("9" * 400, None, "h")])
@example([("9" * 20, None, "h")])
@example([("1", "9" * 500, "s")])
@example([("9223372036", "854775807", "s")])  # the longest duration there is
@example([("9223372036", "854775808", "s")])  # a ns longer
@settings(max_examples=300)
def test_a_duration_is_exact_or_refused_when_longer_than_go_allows(
    parts: list[tuple[str, str | None, str]],
) -> None:
    exact = sum(Fraction(f"{w or 0}.{f or 0}") * UNITS[u] for w, f, u in parts)
    parsed = parse_duration_ns("".join(spelt(p) for p in parts))
    # Each component drops its fraction of a ns (and digits past the 20th of a fraction).
    slack = len(parts)
    if exact > MAX_DURATION_NS + slack:
        assert parsed is None
    elif exact <= MAX_DURATION_NS:
        assert parsed is not None
        assert math.floor(exact) - slack <= parsed <= math.floor(exact)
    since = parse_since_ns("".join(spelt(p) for p in parts), now=NOW)
    assert since == (None if parsed is None else NOW - parsed)


offsets = st.integers(-(24 * 60 - 1), 24 * 60 - 1)


@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    offsets,
    st.none() | st.text("0123456789", min_size=1, max_size=9),
)
@example(datetime(1, 1, 1), 23 * 60 + 59, None)
@example(datetime(9999, 12, 31, 23, 59, 59), -(23 * 60 + 59), None)
@example(datetime(1, 1, 1), 0, None)
@example(datetime(9999, 12, 31, 23, 59, 59), 0, "999999999")
@settings(max_examples=300)
def test_a_timestamp_is_its_instant_or_refused_off_the_calendar(
    moment: datetime, offset_minutes: int, fraction: str | None
) -> None:
    moment = moment.replace(microsecond=0)
    sign = "-" if offset_minutes < 0 else "+"
    hours, minutes = divmod(abs(offset_minutes), 60)
    text = moment.isoformat() + ("" if fraction is None else "." + fraction)
    text += f"{sign}{hours:02d}:{minutes:02d}"
    seconds = (moment - EPOCH) // timedelta(seconds=1) - offset_minutes * 60  # in UTC
    parsed = parse_since_ns(text)
    if not FIRST_SECOND <= seconds <= LAST_SECOND:
        assert parsed is None
    else:
        assert parsed == seconds * 10**9 + int((fraction or "0").ljust(9, "0"))


@given(st.text(max_size=40))
@example("0001-01-01T00:00:00+23:59")
@example("9999-12-31T23:59:59-23:59")
@example("9" * 5000 + "h")
@example("." * 30 + "s")
@settings(max_examples=500)
def test_the_since_parser_never_raises(text: str) -> None:
    parsed = parse_since_ns(text, now=NOW)
    assert parsed is None or isinstance(parsed, int)


def test_edge_of_calendar_offsets_are_refused() -> None:
    assert parse_since_ns("0001-01-01T00:00:00+23:59") is None
    assert parse_since_ns("9999-12-31T23:59:59-23:59") is None
    assert parse_since_ns("0001-01-01T23:59:00+23:59") == -62135596800 * 10**9
    assert parse_duration_ns("9" * 400 + "h") is None
    assert parse_duration_ns("2562047h47m16.854775807s") == MAX_DURATION_NS


# --- routes ------------------------------------------------------------------------------------


@pytest.fixture
async def session(kernel_emulator: KernelEmulator) -> Any:
    headers = {"Authorization": f"Bearer {kernel_emulator.api_key}"}
    async with aiohttp.ClientSession(kernel_emulator.url, headers=headers) as session:
        yield session


async def refused(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The API's error body of a 400."""
    assert resp.status == 400, await resp.text()
    assert resp.content_type == "application/json"
    body: dict[str, Any] = await resp.json()
    assert body["code"] == "bad_request"
    return body


def no_server_errors(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


BAD_SINCE = [
    "9" * 400 + "h",
    "9" * 20 + "h",
    "0001-01-01T00:00:00+23:59",
    "9999-12-31T23:59:59-23:59",
]


@pytest.mark.parametrize("since", BAD_SINCE)
async def test_an_out_of_range_since_is_a_400(
    kernel_emulator: KernelEmulator,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    since: str,
) -> None:
    kernel_emulator.add_action("app", "echo", lambda ctx, payload: payload)
    async with session.post("/invocations", json={"app_name": "app", "action_name": "echo"}) as r:
        assert r.status == 200
        invocation_id = (await r.json())["id"]
    for path in ("/invocations", f"/invocations/{invocation_id}/events"):
        async with session.get(path, params={"since": since}) as resp:
            body = await refused(resp)
        assert body["message"] == "Invalid query parameters"
        assert body["details"][0]["message"].startswith("since must be")
    no_server_errors(caplog)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [10_000, 100_000])
async def test_json_nested_too_deeply_is_a_400(
    kernel_emulator: KernelEmulator,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    depth: int,
) -> None:
    kernel_emulator.add_action("app", "echo", lambda ctx, payload: payload)
    create = {"app_name": "app", "action_name": "echo"}
    headers = {"Content-Type": "application/json"}
    # The payload (a JSON string holding JSON) too deep to decode:
    async with session.post("/invocations", json={**create, "payload": nested(depth)}) as resp:
        body = await refused(resp)
    assert body["details"][0]["message"] == "payload must be a JSON string"
    # The request body itself too deep (an unknown field the decoder skips):
    deep_body = json.dumps(create)[:-1] + ', "extra": ' + nested(depth) + "}"
    async with session.post("/invocations", data=deep_body, headers=headers) as resp:
        body = await refused(resp)
    assert body["details"][0]["message"] == "JSON is nested too deeply"
    async with session.post("/invocations", json=create) as resp:
        invocation_id = (await resp.json())["id"]
    deep_update = '{"status": "failed", "extra": ' + nested(depth) + "}"
    async with session.patch(
        f"/invocations/{invocation_id}", data=deep_update, headers=headers
    ) as resp:
        await refused(resp)
    no_server_errors(caplog)
    # A payload nested within reason still goes through whole.
    async with session.post("/invocations", json={**create, "payload": nested(200)}) as resp:
        assert resp.status == 200
        assert (await resp.json())["output"] == nested(200)
