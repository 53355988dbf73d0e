"""`decide`, the one retry decision of requests and streams, over arbitrary outcomes."""

from __future__ import annotations

import aiohttp
from hypothesis import given
from hypothesis import strategies as st

from kernel_async import RetryPolicy
from kernel_async._retry import GIVE_UP, QUEUE, RATE, RETRY, decide

POLICY = RetryPolicy(max_retries=3, initial_delay=0.5, max_delay=8.0, max_retry_after=60.0)

retry_afters = st.one_of(
    st.none(),
    st.sampled_from(["0", "0.5", "3", "59", "60", "61", "3600", "junk", "-1"]),
)
statuses = st.one_of(st.none(), st.sampled_from([400, 404, 408, 409, 429, 500, 502, 503, 504]))
errors = st.sampled_from(
    [
        None,
        aiohttp.ClientConnectionError("reset"),
        aiohttp.ServerDisconnectedError(),
        TimeoutError(),
        OSError("unreachable"),
    ]
)


@given(
    idempotent=st.booleans(),
    managed=st.booleans(),
    retries=st.integers(0, 5),
    rate_waits=st.integers(0, 25),
    status=statuses,
    retry_after=retry_afters,
    remaining=st.sampled_from([None, "0", "5"]),
    error=errors,
    time_left=st.one_of(st.none(), st.floats(-1, 100)),
    paused_for=st.floats(0, 100),
)
def test_no_verdict_waits_past_the_deadline_or_the_retry_after_cap(
    idempotent: bool,
    managed: bool,
    retries: int,
    rate_waits: int,
    status: int | None,
    retry_after: str | None,
    remaining: str | None,
    error: BaseException | None,
    time_left: float | None,
    paused_for: float,
) -> None:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    if remaining is not None:
        headers["X-RateLimit-Remaining"] = remaining
    verdict = decide(
        POLICY,
        idempotent=idempotent,
        managed=managed,
        retries=retries,
        rate_waits=rate_waits,
        status=status,
        headers=headers,
        error=error if status is None else None,
        time_left=time_left,
        paused_for=paused_for,
    )
    assert verdict.action in {GIVE_UP, RETRY, RATE, QUEUE}
    if verdict.pause is not None:
        assert 0 <= verdict.pause <= POLICY.max_retry_after
    if verdict.action in {RETRY, RATE}:
        assert time_left is None or verdict.delay < time_left
        assert verdict.delay <= max(POLICY.max_retry_after, paused_for)
    if verdict.action == RETRY:
        assert retries < POLICY.max_retries
        if not idempotent and status is not None:
            assert status in POLICY.create_retry_statuses  # the server did not start it
        # A create is never retried after a failure in transport (none of these is a
        # connection that was never made).
        assert idempotent or status is not None
    if verdict.action == RATE:
        assert rate_waits < POLICY.max_rate_limit_waits
    if verdict.action == QUEUE:
        assert managed
        assert status == 429


def test_a_long_retry_after_is_not_slept_but_pauses_everyone_for_the_cap() -> None:
    verdict = decide(
        POLICY,
        idempotent=True,
        retries=0,
        rate_waits=0,
        status=429,
        headers={"Retry-After": "3600"},
    )
    assert verdict.action == GIVE_UP
    assert verdict.pause == POLICY.max_retry_after
    assert verdict.retry_after == 3600.0


def test_a_connection_never_made_is_retried_even_for_a_create() -> None:
    refused = aiohttp.ClientConnectorError(
        aiohttp.client_reqrep.ConnectionKey("127.0.0.1", 1, False, True, None, None, None),
        OSError(111, "refused"),
    )
    verdict = decide(POLICY, idempotent=False, retries=0, rate_waits=0, status=None, error=refused)
    assert verdict.action == RETRY
    assert verdict.reason == "ClientConnectorError"


def test_a_stream_that_ended_early_is_resumed_within_the_policy() -> None:
    resumed = decide(POLICY, idempotent=True, retries=2, rate_waits=0, status=None)
    assert (resumed.action, resumed.reason) == (RETRY, "ended")
    given_up = decide(POLICY, idempotent=True, retries=3, rate_waits=0, status=None)
    assert given_up.action == GIVE_UP
