"""The official SDK's README examples, run against the emulator with the import changed.

The examples are copied from the README of https://github.com/onkernel/kernel-python-sdk
(commit 99b8057, Apache License 2.0), async versions only. Each is kept as written except:

- ``from kernel import ...`` / ``import kernel`` became ``kernel_async`` (the point);
- the README's calls go to ``browsers`` and ``deployments``, which kernel_async does not
  have (it covers invocations only): ``client.browsers.create(stealth=True)`` became
  ``client.invocations.create(app_name="my-app", action_name="analyze", version="latest")``
  (``print(browser.session_id)`` printing the invocation's ``id``), and
  ``client.deployments.list(...)`` became ``client.invocations.list(...)``, same arguments;
- the synchronous-only examples (errors, retries, raw responses) are run with ``await``,
  as the README says the async client takes them.

Every line of these examples is listed in docs/migrating.md's table; what differs is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import Iterator
from typing import Any

import pytest

from kernel_async import Invocation, _options
from kernel_async.testing import KernelEmulator

from .conftest import emulator_thread

ASYNC_USAGE = """
import os
import asyncio
from kernel_async import AsyncKernel

client = AsyncKernel(
    api_key=os.environ.get("KERNEL_API_KEY"),  # This is the default and can be omitted
    # defaults to "production".
    environment="development",
)


async def main() -> None:
    browser = await client.invocations.create(
        app_name="my-app", action_name="analyze", version="latest",
    )
    print(browser.id)


asyncio.run(main())
"""

WITH_AIOHTTP = """
import os
import asyncio
from kernel_async import DefaultAioHttpClient
from kernel_async import AsyncKernel


async def main() -> None:
    async with AsyncKernel(
        api_key=os.environ.get("KERNEL_API_KEY"),  # This is the default and can be omitted
        http_client=DefaultAioHttpClient(),
    ) as client:
        browser = await client.invocations.create(
            app_name="my-app", action_name="analyze", version="latest",
        )
        print(browser.id)


asyncio.run(main())
"""

PAGINATION = """
import asyncio
from kernel_async import AsyncKernel

client = AsyncKernel()


async def main() -> None:
    all_deployments = []
    # Iterate through items across all pages, issuing requests as needed.
    async for deployment in client.invocations.list(
        app_name="YOUR_APP",
        limit=2,
    ):
        all_deployments.append(deployment)
    print(all_deployments)


asyncio.run(main())
"""

# The two page examples are bare `await`s in the README: run inside `async def main()`.
PAGES = """
first_page = await client.invocations.list(
    app_name="YOUR_APP",
    limit=2,
)
if first_page.has_next_page():
    print(f"will fetch next page using these details: {first_page.next_page_info()}")
    next_page = await first_page.get_next_page()
    print(f"number of items we just fetched: {len(next_page.items)}")

# Remove `await` for non-async usage.
"""

PAGE_DATA = """
first_page = await client.invocations.list(
    app_name="YOUR_APP",
    limit=2,
)

print(
    f"the current start offset for this page: {first_page.next_offset}"
)  # => "the current start offset for this page: 1"
for deployment in first_page.items:
    print(deployment.id)

# Remove `await` for non-async usage.
"""

HANDLING_ERRORS = """
import kernel_async
from kernel_async import AsyncKernel

client = AsyncKernel()

try:
    await client.invocations.create(
        app_name="no-such-app", action_name="analyze", version="latest",
    )
except kernel_async.APIConnectionError as e:
    print("The server could not be reached")
    print(e.__cause__)  # an underlying Exception, likely raised within httpx.
except kernel_async.RateLimitError as e:
    print("A 429 status code was received; we should back off a bit.")
except kernel_async.APIStatusError as e:
    print("Another non-200-range status code was received")
    print(e.status_code)
    print(e.response)
"""

RETRIES_AND_TIMEOUTS = """
from kernel_async import AsyncKernel

# Configure the default for all requests:
client = AsyncKernel(
    # default is 2
    max_retries=0,
)

# Or, configure per-request:
await client.with_options(max_retries=5).invocations.create(
    app_name="my-app", action_name="analyze", version="latest",
)

# Configure the default for all requests:
client = AsyncKernel(
    # 20 seconds (default is 1 minute)
    timeout=20.0,
)

# Override per-request:
await client.with_options(timeout=5.0).invocations.create(
    app_name="my-app", action_name="analyze", version="latest",
)
"""

RAW_RESPONSE = """
from kernel_async import AsyncKernel

client = AsyncKernel()
response = await client.invocations.with_raw_response.create(
    app_name="my-app", action_name="analyze", version="latest",
)
print(response.headers.get('X-My-Header'))

browser = await response.parse()  # get the object that `browsers.create()` would have returned
print(browser.id)
"""

STREAMING_RESPONSE = """
async with client.invocations.with_streaming_response.create(
    app_name="my-app", action_name="analyze", version="latest",
) as response:
    print(response.headers.get("X-My-Header"))

    async for line in response.iter_lines():
        print(line)
"""


def _in_main(snippet: str) -> str:
    """A README snippet made of bare ``await``s, inside ``async def main()`` (its imports
    at the top), run."""
    lines = snippet.strip().splitlines()
    imports = [line for line in lines if line.startswith(("import ", "from "))]
    body = "\n".join("    " + line for line in lines if line not in imports)
    return (
        "import asyncio\nfrom kernel_async import AsyncKernel\n" + "\n".join(imports) + "\n\n"
        f"async def main() -> None:\n    client = AsyncKernel()\n{body}\n\nasyncio.run(main())\n"
    )


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[KernelEmulator]:
    """The emulator, on its own thread (the examples call ``asyncio.run``), as both the
    ``development`` environment and ``KERNEL_BASE_URL``."""
    emulator = KernelEmulator()

    @emulator.action("my-app", "analyze")
    def analyze(ctx: Any, payload: Any) -> dict[str, bool]:
        return {"ok": True}

    @emulator.action("YOUR_APP", "step")
    def step(ctx: Any, payload: Any) -> int:
        return 1

    with emulator_thread(emulator):
        for _ in range(3):
            asyncio.run(_invoke(emulator, "YOUR_APP", "step"))
        monkeypatch.setenv("KERNEL_API_KEY", emulator.api_key)
        monkeypatch.setitem(_options.ENVIRONMENTS, "development", emulator.url + "/")
        yield emulator


async def _invoke(emulator: KernelEmulator, app: str, action: str) -> None:
    async with emulator.client() as kernel:
        await kernel.invocations.create(app, action)


def _by_id(emulator: KernelEmulator, id: str) -> Invocation:
    (found,) = [inv for inv in emulator.snapshot() if inv.id == id]
    return found


def _run(code: str, monkeypatch: pytest.MonkeyPatch, *, base_url: str | None) -> str:
    if base_url is None:
        monkeypatch.delenv("KERNEL_BASE_URL", raising=False)
    else:
        monkeypatch.setenv("KERNEL_BASE_URL", base_url)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<README example>", "exec"), {"__name__": "__main__"})
    return out.getvalue()


def test_async_usage_with_environment(
    emulator: KernelEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # environment="development" with KERNEL_BASE_URL unset, as in the README.
    printed = _run(ASYNC_USAGE, monkeypatch, base_url=None).split()
    assert len(printed) == 1
    assert _by_id(emulator, printed[0]).action_name == "analyze"


def test_with_aiohttp(emulator: KernelEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    printed = _run(WITH_AIOHTTP, monkeypatch, base_url=emulator.url).split()
    assert _by_id(emulator, printed[0]).action_name == "analyze"


def test_pagination(emulator: KernelEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    printed = _run(PAGINATION, monkeypatch, base_url=emulator.url)
    assert printed.count("Invocation(") == 3  # all three, over two pages of 2


def test_pages(emulator: KernelEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    printed = _run(_in_main(PAGES), monkeypatch, base_url=emulator.url).splitlines()
    assert printed == [
        "will fetch next page using these details: {'offset': 2}",
        "number of items we just fetched: 1",
    ]


def test_page_data(emulator: KernelEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    printed = _run(_in_main(PAGE_DATA), monkeypatch, base_url=emulator.url).splitlines()
    assert printed[0] == "the current start offset for this page: 2"
    assert len(printed) == 3  # two ids


def test_handling_errors(emulator: KernelEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    printed = _run(_in_main(HANDLING_ERRORS), monkeypatch, base_url=emulator.url).splitlines()
    assert printed == [
        "Another non-200-range status code was received",
        "404",
        "<HTTPResponse [404]>",
    ]


def test_handling_a_connection_error(
    emulator: KernelEmulator, monkeypatch: pytest.MonkeyPatch, unused_tcp_port: int
) -> None:
    printed = _run(
        _in_main(HANDLING_ERRORS), monkeypatch, base_url=f"http://127.0.0.1:{unused_tcp_port}"
    ).splitlines()
    assert printed[0] == "The server could not be reached"
    assert "Connect" in printed[1]  # the aiohttp error under it


def test_retries_and_timeouts(emulator: KernelEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    _run(_in_main(RETRIES_AND_TIMEOUTS), monkeypatch, base_url=emulator.url)
    created = [inv for inv in emulator.snapshot() if inv.app_name == "my-app"]
    assert len(created) == 2


def test_raw_response(emulator: KernelEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    printed = _run(_in_main(RAW_RESPONSE), monkeypatch, base_url=emulator.url).splitlines()
    assert printed[0] == "None"  # the emulator sends no X-My-Header
    assert _by_id(emulator, printed[1]).status == "succeeded"


def test_streaming_response(emulator: KernelEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    printed = _run(_in_main(STREAMING_RESPONSE), monkeypatch, base_url=emulator.url)
    lines = printed.splitlines()
    assert lines[0] == "None"
    assert '"status":"succeeded"' in lines[1]  # the body, one JSON line
