"""The emulator's state: invocations, their events, and how an action runs to the end."""

from __future__ import annotations

import asyncio
import inspect
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from . import _wire as wire

__all__ = ["ActionContext", "ActionFunc", "Store", "StoredInvocation"]

ActionFunc = Callable[["ActionContext", Any], Any]

TERMINAL: Final = frozenset({"succeeded", "failed"})
STATUSES: Final = frozenset({"queued", "running", "succeeded", "failed"})
_ID_ALPHABET: Final = "abcdefghijklmnopqrstuvwxyz0123456789"


@dataclass(eq=False)
class StoredInvocation:
    """One invocation as the emulator holds it."""

    id: str
    app_name: str
    version: str
    action_name: str
    deployment_id: str
    payload: str | None
    started_ns: int
    status: str = "queued"
    status_reason: str | None = None
    output: str | None = None
    finished_ns: int | None = None
    # (timestamp ns, encoded event, is a terminal state)
    events: list[tuple[int, bytes, bool]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    browsers: list[wire.WireBrowser] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def wire(self) -> wire.WireInvocation:
        return wire.WireInvocation(
            id=self.id,
            app_name=self.app_name,
            version=self.version,
            action_name=self.action_name,
            started_at=wire.format_ns(self.started_ns),
            status=self.status,
            payload=self.payload,
            output=self.output,
            finished_at=None if self.finished_ns is None else wire.format_ns(self.finished_ns),
            status_reason=self.status_reason,
        )


class ActionContext:
    """What an emulated action receives besides its payload."""

    __slots__ = ("_invocation", "_store")

    def __init__(self, store: Store, invocation: StoredInvocation) -> None:
        self._store = store
        self._invocation = invocation

    @property
    def invocation_id(self) -> str:
        """The id of the invocation running this action."""
        return self._invocation.id

    @property
    def app_name(self) -> str:
        """The app the action belongs to."""
        return self._invocation.app_name

    @property
    def action_name(self) -> str:
        """The action's name."""
        return self._invocation.action_name

    def log(self, message: str) -> None:
        """Write a log line: followers receive it as a `LogEvent`."""
        self._store.log(self._invocation, str(message))

    def start_browser(
        self,
        *,
        headless: bool = True,
        stealth: bool = False,
        timeout_seconds: int = 60,
        region: str = "us-east",
        name: str | None = None,
    ) -> str:
        """Start an emulated browser session for this invocation; returns its id.

        ``list_browsers`` lists it until ``delete_browsers`` deletes it, or the invocation
        is set to ``failed`` (which destroys its browsers, as on the service).
        """
        return self._store.start_browser(
            self._invocation,
            headless=headless,
            stealth=stealth,
            timeout_seconds=timeout_seconds,
            region=region,
            name=name,
        )


class Store:
    """The invocations held, oldest first, and their lifecycle.

    ``on_finish`` is called once when an invocation reaches a terminal state (the quotas
    count running invocations with it).
    """

    def __init__(
        self,
        *,
        max_invocations: int,
        seed: int | None,
        on_finish: Callable[[StoredInvocation], None],
    ) -> None:
        self.max_invocations = max_invocations
        self._rng = random.Random(seed)
        self._items: OrderedDict[str, StoredInvocation] = OrderedDict()
        self._on_finish = on_finish

    def new_id(self) -> str:
        return "".join(self._rng.choices(_ID_ALPHABET, k=24))

    def get(self, id: str) -> StoredInvocation | None:
        return self._items.get(id)

    def __getitem__(self, id: str) -> StoredInvocation:
        return self._items[id]

    def __iter__(self) -> Iterator[StoredInvocation]:
        return iter(self._items.values())

    def ids(self) -> list[str]:
        return list(self._items)

    def newest_first(self) -> list[StoredInvocation]:
        return list(reversed(self._items.values()))

    def add(self, inv: StoredInvocation) -> None:
        """Hold a new invocation (evicting the oldest finished ones past the limit) and
        report its first state."""
        self._items[inv.id] = inv
        if len(self._items) > self.max_invocations:
            for old_id, old in list(self._items.items()):
                if len(self._items) <= self.max_invocations:
                    break
                if old.terminal:
                    del self._items[old_id]
        self._state_event(inv)

    # --- events ----------------------------------------------------------------------------

    def _push(self, inv: StoredInvocation, ts: int, data: bytes, terminal: bool = False) -> None:
        inv.events.append((ts, data, terminal))
        changed, inv.changed = inv.changed, asyncio.Event()
        changed.set()

    def log(self, inv: StoredInvocation, message: str) -> None:
        ts = wire.now_ns()
        self._push(inv, ts, wire.encode(wire.LogWire(wire.format_ns(ts), message)))

    @staticmethod
    def state_data(inv: StoredInvocation, ts: int) -> bytes:
        return wire.encode(wire.StateWire(wire.format_ns(ts), inv.wire()))

    def _state_event(self, inv: StoredInvocation) -> None:
        ts = wire.now_ns()
        self._push(inv, ts, self.state_data(inv, ts), inv.terminal)

    @staticmethod
    def log_lines(inv: StoredInvocation) -> list[str]:
        lines = []
        for _, data, _ in inv.events:
            if data.startswith(b'{"event":"log"'):
                lines.append(msgspec.json.decode(data)["message"])
        return lines

    def start_browser(
        self,
        inv: StoredInvocation,
        *,
        headless: bool,
        stealth: bool,
        timeout_seconds: int,
        region: str,
        name: str | None,
    ) -> str:
        session = self.new_id()[:20]
        base = f"wss://browsers.emulator.invalid/{session}"
        inv.browsers.append(
            wire.WireBrowser(
                session_id=session,
                cdp_ws_url=base + "/cdp",
                webdriver_ws_url=base + "/webdriver",
                created_at=wire.format_ns(wire.now_ns()),
                headless=headless,
                stealth=stealth,
                timeout_seconds=timeout_seconds,
                region=region,
                memory="2GiB",
                browser_live_view_url=None
                if headless
                else f"https://live.emulator.invalid/{session}",
                name=name,
            )
        )
        return session

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self, inv: StoredInvocation, func: ActionFunc, payload: Any, limit: float) -> None:
        """Run ``func`` for ``inv`` in a task, failing it after ``limit`` seconds."""
        inv.task = asyncio.create_task(self._run(inv, func, payload, limit))

    async def _run(
        self, inv: StoredInvocation, func: ActionFunc, payload: Any, limit: float
    ) -> None:
        ctx = ActionContext(self, inv)
        try:
            inv.status = "running"
            self._state_event(inv)
            result = func(ctx, payload)
            if inspect.isawaitable(result):
                result = await asyncio.wait_for(_awaitable(result), limit)
            output = wire.json_string(result)
        except asyncio.CancelledError:
            if not inv.terminal:
                self.finish(inv, "failed", None, "Invocation cancelled")
            raise
        except asyncio.TimeoutError:
            self.finish(inv, "failed", None, f"Invocation timed out after {limit:g} seconds")
        except Exception as exc:
            self.finish(inv, "failed", None, str(exc) or type(exc).__name__)
        else:
            if not inv.terminal:
                self.finish(inv, "succeeded", output, "Invocation completed successfully")

    def finish(self, inv: StoredInvocation, status: str, output: str | None, reason: str) -> None:
        """Set a terminal state (once): the event, ``done``, and the quota count."""
        inv.status = status
        inv.output = output
        inv.status_reason = reason
        inv.finished_ns = wire.now_ns()
        self._state_event(inv)
        inv.done.set()
        self._on_finish(inv)

    async def stop(self) -> None:
        """Cancel every running action and wake every open stream."""
        tasks = [i.task for i in self._items.values() if i.task is not None]
        for task in tasks:
            if not task.done():
                task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for inv in self._items.values():
            inv.changed.set()


async def _awaitable(value: Awaitable[Any]) -> Any:
    return await value
