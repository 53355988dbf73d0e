"""Backpressure: the rate-limit gate and admission control for starting invocations.

Pure policy (no I/O, no asyncio, an injected ``now``) apart from the asyncio queues:

* `_config`: `Limits`, the stats types, `classify_429` (what a 429 means);
* `_rate`: `RatePolicy`, when this client may send its next request: a rate-limit 429
  pauses every new request until its ``Retry-After``; ``X-RateLimit-Remaining`` is a
  budget; after a pause one request goes first as a probe;
* `_admission`: `AdmissionPolicy`, when a create may be sent: a per-app limit on this
  client's running invocations, learnt from concurrency 429s, capped by `Limits`;
  `_room`: what lists of the service tell it (others' invocations, slots come free);
  `_app`: the per-app state the two share;
* `_pump`, `_gate`, `_queue`: the asyncio FIFOs of waiting tasks around those policies;
* `_reconcile`: the lists of the service that free the slots of invocations that ended
  unseen and tell the admission policy what runs;
* `_backpressure`: one client's gate and queue together.
"""

from ._admission import AdmissionPolicy
from ._backpressure import Backpressure
from ._config import (
    DEFAULT_LEASE,
    MAX_PROBE_DELAY,
    RATE_PROBE_INTERVAL,
    AppLimitStats,
    Limits,
    LimitStats,
    classify_429,
    lease_for,
)
from ._gate import RateGate
from ._queue import Admission, Slot, Ticket
from ._rate import RatePolicy
from ._reconcile import Listing

__all__ = [
    "DEFAULT_LEASE",
    "MAX_PROBE_DELAY",
    "RATE_PROBE_INTERVAL",
    "Admission",
    "AdmissionPolicy",
    "AppLimitStats",
    "Backpressure",
    "LimitStats",
    "Limits",
    "Listing",
    "RateGate",
    "RatePolicy",
    "Slot",
    "Ticket",
    "classify_429",
    "lease_for",
]
