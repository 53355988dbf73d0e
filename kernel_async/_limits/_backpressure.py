"""One client's rate-limit gate and admission queue (shared by its `with_options` copies);
waiting holds no connection, since nothing is sent until a task is let through."""

from __future__ import annotations

import asyncio
import os

from ..errors import ClientClosedError
from ._config import Limits, LimitStats
from ._gate import RateGate
from ._queue import Admission
from ._reconcile import Lister
from ._redis import ENV_VAR, RedisLimits, shared_from
from ._seed import ProjectCaps

__all__ = ["Backpressure"]


class Backpressure:
    """A client's rate-limit gate and admission queue, made in its event loop on first use."""

    def __init__(
        self,
        limits: Limits,
        initial_delay: float,
        max_retry_after: float = 60.0,
        identity: str = "",
        account: str = "",
        gate_owner: Backpressure | None = None,
    ):
        self.limits = limits
        self.identity = identity
        """Which server, key and project this queue is for: a digest, never the key
        (`AsyncKernel`'s transport sets it; Redis names the shared limits with it)."""
        self.account = account
        """Which server and key: a digest (one rate gate serves every project's queue)."""
        self._gate_owner = gate_owner
        self._initial_delay = initial_delay
        self._max_retry_after = max_retry_after
        self._gate: RateGate | None = None
        self._admission: Admission | None = None
        self.project_caps = ProjectCaps()
        """Each project's cap, as the service told it (read once, on the first create)."""
        self.lister: Lister | None = None
        """How to list an app's invocations queued or running on the service (set by the
        client): while creates wait, slots of ours that ended unseen are freed with it,
        and the admission policy sees how many others run."""
        self._shared: RedisLimits | None = None
        self._shared_made = False

    def twin(
        self, identity: str, account: str, gate_owner: Backpressure | None = None
    ) -> Backpressure:
        """A new, separate queue with the same settings, for another server, key or project
        (``identity``); its rate gate is ``gate_owner``'s (the same server and key,
        ``account``), or a new one."""
        return Backpressure(
            self.limits,
            self._initial_delay,
            self._max_retry_after,
            identity,
            account,
            gate_owner,
        )

    def gate(self) -> RateGate:
        """The rate gate (one per server and key), made on first use."""
        gate = self._made_gate()
        if gate is None:
            owner = self if self._gate_owner is None else self._gate_owner
            gate = owner._gate = RateGate(asyncio.get_running_loop())
        self._pause_with_shared(gate)
        return gate

    def _pause_with_shared(self, gate: RateGate) -> None:
        """A rate-limit pause of ``gate`` pauses every process sharing the limits (the
        first queue of the gate to share them through Redis tells them)."""
        shared = self._shared
        if shared is not None and gate.on_pause is None:
            gate.on_pause = shared.pause_all

    def shared(self) -> RedisLimits | None:
        """The limits shared through Redis (`Limits.shared`, else ``KERNEL_LIMITS_URL``),
        made on first use, for this server, key and project (`identity`); ``None``: not
        shared."""
        if not self._shared_made:
            self._shared_made = True
            url = self.limits.shared
            if url is None:
                url = os.environ.get(ENV_VAR)
            shared = self._shared = shared_from(
                url,
                self.identity,
                self.limits.initial,
                max_pause=self._max_retry_after,
                account=self.account or None,
            )
            gate = self._made_gate()
            if gate is not None:
                self._pause_with_shared(gate)
        shared = self._shared
        return None if shared is None or shared.failed is not None else shared

    async def aclose(self) -> None:
        """Give back the shared slots held, and close the connection to Redis."""
        if self._shared is not None:
            await self._shared.aclose()

    def admission(self) -> Admission:
        admission = self._admission
        if admission is None:
            admission = self._admission = Admission(
                asyncio.get_running_loop(),
                self.limits,
                self._initial_delay,
                self._max_retry_after,
                self.lister,
            )
            admission.ended = self._shared_ended
            admission.waiting_elsewhere = self._shared_waiting
            admission.spare_requests = self._spare_requests
            admission.policy.windowless = self._shared_on
        return admission

    def _shared_on(self) -> bool:
        """Whether the limits are shared through Redis now (it holds the fleet's window:
        this process's own slow start would only slow its creates down)."""
        shared = self._shared
        return shared is not None and shared.failed is None

    def _spare_requests(self) -> bool:
        """Whether the rate limit leaves requests to spare for frequent lists: none is
        known, or over a quarter of its window is left."""
        gate = self._made_gate()
        if gate is None:
            return True
        rate = gate.policy
        return rate.budget is None or rate.limit is None or rate.budget > rate.limit / 4

    def seed(self, cap: int) -> None:
        """The service told the cap every app shares (a project's): start admission
        there, and the shared limits too."""
        self.admission().policy.seed_all(cap)
        shared = self.shared()
        if shared is not None:
            shared.seed_all(cap)

    def _shared_ended(self, invocation_id: str) -> None:
        """An invocation was found ended unseen: free its shared slot at once."""
        if self._shared is not None:
            self._shared.finished(invocation_id)

    def _shared_waiting(self, app: str) -> int:
        shared = self._shared
        return 0 if shared is None else shared.waiting(app)

    def finished(self, invocation_id: str) -> None:
        """An invocation was seen finished: free its slot, if it held one."""
        admission = self._admission
        if admission is not None and admission.policy.owner:
            admission.finished(invocation_id)
        if self._shared is not None:
            self._shared.finished(invocation_id)

    def close(self, error: ClientClosedError) -> None:
        """The client is closing: every create waiting for a slot or request waiting at
        the rate gate, and every later one, fails with ``error``."""
        if self._admission is not None:
            self._admission.close(error)
        if self._gate is not None:
            self._gate.close(error)

    def _made_gate(self) -> RateGate | None:
        """The rate gate this queue's requests pass, if made yet."""
        return self._gate if self._gate_owner is None else self._gate_owner._made_gate()

    def stats(self) -> LimitStats:
        gate, admission = self._made_gate(), self._admission
        if admission is None:
            apps = {}
            concurrency = admitted = 0
            queued = longest = 0.0
        else:
            apps = admission.policy.stats(admission.stats())
            concurrency = admission.policy.concurrency_limited
            admitted = admission.policy.admitted
            queued, longest = admission.queued_seconds, admission.max_queued_seconds
        return LimitStats(
            apps=apps,
            concurrency_limited=concurrency,
            rate_limited=0 if gate is None else gate.rate_limited,
            rate_paused_seconds=0.0 if gate is None else gate.policy.paused_seconds,
            queued_seconds=queued,
            max_queued_seconds=longest,
            admitted=admitted,
        )
