"""Test kit: an emulator of the Kernel invocations API, its faults, and pytest fixtures.

```python
from kernel_async.testing import KernelEmulator

async with KernelEmulator() as emulator:
    emulator.add_action("my-app", "echo", lambda ctx, payload: payload)
    async with emulator.client() as kernel:
        inv = await kernel.invocations.run("my-app", "echo", payload={"hi": 1})
```

With pytest, the plugin (installed with the package) gives the ``kernel_emulator`` and
``kernel_client`` fixtures; see `kernel_async.testing.pytest_plugin`.
"""

from .emulator import ActionContext, KernelEmulator, RecordedRequest
from .faults import Faults, FaultStats
from .quotas import Quotas, QuotaStats

__all__ = [
    "ActionContext",
    "FaultStats",
    "Faults",
    "KernelEmulator",
    "QuotaStats",
    "Quotas",
    "RecordedRequest",
]
