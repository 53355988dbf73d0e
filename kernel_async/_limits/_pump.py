"""A queue of waiting tasks moved on by one timer: the base of the gate and admission."""

from __future__ import annotations

import asyncio
import math
from typing import Final

__all__ = ["Pumped"]

_SLACK: Final = 0.001  # timers fire this much late at most; avoids waking a hair early


class Pumped:
    """A queue that a `_pump` moves on, now or at a time one timer keeps (the earliest)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def _pump(self) -> None:
        raise NotImplementedError

    def _schedule(self, when: float) -> None:
        """Pump at ``when`` (loop time), unless a pump is due sooner already."""
        if self._timer is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when + _SLACK, self._fire)

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self._pump()
