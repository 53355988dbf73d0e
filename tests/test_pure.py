"""Property tests of the pure parts: Retry-After parsing, backoff bounds, UTF-8 errors."""

from __future__ import annotations

import email.utils
import math

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernel_async import RetryPolicy
from kernel_async._retry import backoff_delay, parse_retry_after
from kernel_async._utf8 import is_invalid_utf8

NOW = 1_750_000_000.0


@given(st.integers(0, 10**12))
def test_integer_seconds(n: int) -> None:
    assert parse_retry_after(str(n), now=NOW) == float(n)


@given(st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False))
def test_decimal_seconds(d: object) -> None:
    text = format(d, "f")
    assert parse_retry_after(text, now=NOW) == pytest.approx(float(text))


@given(st.integers(0, 10**9))
def test_milliseconds_win_over_seconds(ms: int) -> None:
    assert parse_retry_after("999", str(ms), now=NOW) == ms / 1000


@given(st.integers(-(10**6), 10**6))
def test_http_dates_are_measured_from_now(offset: int) -> None:
    header = email.utils.formatdate(NOW + offset, usegmt=True)
    assert parse_retry_after(header, now=NOW) == max(0.0, float(offset))


@pytest.mark.parametrize(
    "value",
    ["-1", "-0.5", "", " ", "soon", "1e3", "inf", "nan", "0x10", "1,5", "Mon, 99 Foo 2025"],
)
def test_invalid_values_are_ignored(value: str) -> None:
    assert parse_retry_after(value, now=NOW) is None
    assert parse_retry_after(None, value, now=NOW) is None


@given(st.text(max_size=40), st.one_of(st.none(), st.text(max_size=40)))
def test_never_raises_and_never_negative(retry_after: str, retry_after_ms: str | None) -> None:
    result = parse_retry_after(retry_after, retry_after_ms, now=NOW)
    assert result is None or (result >= 0 and not math.isnan(result))


@given(
    retry=st.integers(0, 10_000),
    initial=st.floats(0, 10),
    maximum=st.floats(0, 100),
    jitter=st.floats(0, 1),
    rand=st.floats(0, 1, exclude_max=True),
)
def test_backoff_stays_within_its_bounds(
    retry: int, initial: float, maximum: float, jitter: float, rand: float
) -> None:
    delay = backoff_delay(retry, initial=initial, maximum=maximum, jitter=jitter, rand=rand)
    base = min(initial * 2.0 ** min(retry, 64), maximum)
    assert base * (1 - jitter) - 1e-9 <= delay <= base + 1e-9
    assert 0 <= delay <= maximum + 1e-9


@given(st.integers(0, 50))
def test_policy_backoff_grows_then_caps(retry: int) -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=8.0, jitter=0.0)
    assert policy.backoff(retry) == min(0.5 * 2**retry, 8.0)


@pytest.mark.parametrize(
    "kwargs",
    [{"max_retries": -1}, {"initial_delay": -1}, {"jitter": 1.5}, {"max_retry_after": -2}],
)
def test_policy_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@given(st.binary(max_size=64))
def test_invalid_utf8_is_told_apart_from_invalid_json(data: bytes) -> None:
    """Whatever msgspec raises for these bytes, `is_invalid_utf8` says UTF-8 exactly when
    the bytes are not UTF-8 (msgspec 0.23 raises DecodeError where 0.22 raised
    UnicodeDecodeError)."""
    body = b'{"a": "' + data + b'"}'
    try:
        body.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    caught: BaseException | None = None
    try:
        msgspec.json.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        caught = exc
    if caught is not None:
        assert is_invalid_utf8(body, caught) is not valid
