"""Client options: their types, defaults, and checks (no I/O)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final, Literal, TypedDict

from aiohttp import ClientTimeout
from yarl import URL

from .errors import KernelError

if TYPE_CHECKING:
    from aiohttp import ClientMiddlewareType, ClientSession

    from ._limits import Limits
    from ._retry import RetryPolicy
    from .telemetry import Telemetry

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_TIMEOUT",
    "ENVIRONMENTS",
    "Environment",
    "NOT_GIVEN",
    "ClientOptions",
    "DefaultAioHttpClient",
    "SYNC_INVOCATION_LIMIT",
    "NotGiven",
    "Timeout",
    "base_url_for",
    "check_api_key",
    "check_header",
    "env_headers",
    "normalize_base_url",
    "replace_total",
    "to_client_timeout",
    "within",
]

DEFAULT_BASE_URL: Final = "https://api.onkernel.com"
#: The official SDK's ``environment=`` choices and their base URLs (as in its _client.py).
ENVIRONMENTS: Final = {
    "production": "https://api.onkernel.com/",
    "development": "https://localhost:3001/",
}
Environment = Literal["production", "development"]
DEFAULT_TIMEOUT: Final = 60.0
#: A synchronous invocation may run this long on the service before it fails; a sync
#: create with no timeout set waits that long, plus a margin.
SYNC_INVOCATION_LIMIT: Final = 100.0


#: A timeout: seconds (float) for the whole call, an ``aiohttp.ClientTimeout``, or ``None``
#: for no timeout at all.
Timeout = float | ClientTimeout | None


class NotGiven:
    """Sentinel for "use the client's setting" (distinct from ``None``, which means none)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_GIVEN"

    def __bool__(self) -> bool:
        return False


NOT_GIVEN: Final = NotGiven()


def to_client_timeout(timeout: Timeout) -> ClientTimeout:
    if isinstance(timeout, ClientTimeout):
        return timeout
    if timeout is None:
        return ClientTimeout(total=None)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return ClientTimeout(total=float(timeout))


def env_headers() -> dict[str, str]:
    """Headers from ``KERNEL_CUSTOM_HEADERS``: one ``Name: value`` per line, as the official
    SDK reads them."""
    headers = {}
    for line in os.environ.get("KERNEL_CUSTOM_HEADERS", "").splitlines():
        name, colon, value = line.partition(":")
        if colon and name.strip():
            headers[name.strip()] = value.strip()
    return headers


def check_header(value: str, name: str) -> str:
    if not isinstance(value, str) or not value or any(c in value for c in "\r\n\0"):
        raise KernelError(f"{name} must be a non-empty string without line breaks, got {value!r}")
    return value


def check_api_key(api_key: str) -> str:
    """The key as given, or `KernelError` (never quoting it) when it could not be sent as a
    header: whitespace, a newline or another control character, or non-ASCII."""
    if not isinstance(api_key, str):
        raise KernelError(f"api_key must be a str, not {type(api_key).__name__}")
    bad = next((c for c in api_key if not "!" <= c <= "~"), None)
    if bad is not None:
        where = "ends with" if api_key.endswith(bad) else "contains"
        raise KernelError(
            f"api_key {where} {bad!r}, which an API key cannot contain (a stray newline or "
            "space from copying it?); the key was not used"
        )
    return api_key


def normalize_base_url(base_url: str) -> str:
    url = URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise KernelError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
    if url.user or url.password:
        raise KernelError("base_url must not contain credentials; pass api_key instead")
    if url.query_string or url.fragment:
        raise KernelError(f"base_url must not have a query or fragment, got {base_url!r}")
    return str(url).rstrip("/")


#: An attempt's timeout is cut to the time left to its call's deadline only when that is
#: shorter by more than this: the SDK's own work before the attempt (microseconds) is not
#: worth a new ``ClientTimeout`` per call, a wait (for a slot, after a 429) always is.
MIN_CUT: Final = 0.01


def within(timeout: ClientTimeout, left: float | None) -> ClientTimeout:
    """``timeout`` for one attempt of a call with ``left`` seconds to its deadline (more
    than zero; ``None``: no deadline): its total shortened to what is left (see
    `MIN_CUT`)."""
    total = timeout.total
    if left is None or (total is not None and total - MIN_CUT <= left):
        return timeout
    return replace_total(timeout, left)


def base_url_for(base_url: str | NotGiven | None, environment: str | NotGiven) -> str:
    """The base URL, chosen as the official SDK chooses it: ``base_url`` if given, else the
    ``environment``'s URL, else ``KERNEL_BASE_URL``, else production. ``environment`` with
    ``KERNEL_BASE_URL`` set is ambiguous unless ``base_url=None`` is passed too."""
    if isinstance(base_url, str) and base_url:
        return base_url
    from_env = os.environ.get("KERNEL_BASE_URL")
    if not isinstance(environment, NotGiven):
        if from_env and isinstance(base_url, NotGiven):
            raise ValueError(
                "Ambiguous URL: the KERNEL_BASE_URL environment variable and the environment "
                "argument are both given. To use the environment, also pass base_url=None."
            )
        if environment not in ENVIRONMENTS:
            raise ValueError(
                f"Unknown environment: {environment!r} (expected one of {sorted(ENVIRONMENTS)})"
            )
        return ENVIRONMENTS[environment]
    return from_env or DEFAULT_BASE_URL


def replace_total(timeout: ClientTimeout, total: float) -> ClientTimeout:
    """``timeout`` with another total."""
    return ClientTimeout(
        total=total,
        connect=timeout.connect,
        sock_connect=timeout.sock_connect,
        sock_read=timeout.sock_read,
    )


class DefaultAioHttpClient:
    """The official SDK's switch to its aiohttp backend, accepted so that
    ``AsyncKernel(http_client=DefaultAioHttpClient())`` runs unchanged. kernel_async is
    built on aiohttp: it changes nothing (pass ``session=`` to use a session of your own)."""

    __slots__ = ()


class ClientOptions(TypedDict, total=False):
    """The keyword options of `AsyncKernel`, for helpers that pass them on (typed)."""

    api_key: str | None
    base_url: str | None
    environment: Environment
    timeout: Timeout | NotGiven
    max_retries: int
    retry: RetryPolicy | None
    session: ClientSession | None
    middlewares: Sequence[ClientMiddlewareType]
    default_headers: Mapping[str, str] | None
    default_query: Mapping[str, str] | None
    project_id: str | None
    project: str | None
    connection_limit: int
    limits: Limits | None
    telemetry: bool | Telemetry
