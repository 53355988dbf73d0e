"""Actions for `kernel-async serve --actions tests._cli_actions:install`: outputs the demo
actions never produce (pretty-printed JSON, text that is not JSON)."""

from __future__ import annotations

from typing import Any

from kernel_async.testing import ActionContext, KernelEmulator


def install(emulator: KernelEmulator) -> None:
    """``odd-app/finish-with``: succeeds with ``payload["output"]`` as its output, verbatim
    (set through the API, as an action outside the emulator would)."""

    async def finish_with(ctx: ActionContext, payload: Any) -> None:
        async with emulator.client() as kernel:
            await kernel.invocations.update(
                ctx.invocation_id, status="succeeded", output=payload["output"]
            )

    emulator.add_action("odd-app", "finish-with", finish_with)


def drop_five_creates(emulator: KernelEmulator) -> None:
    """The next five creates start their invocation, then lose their answer (the
    connection closes), as a flaky network between client and service would."""
    emulator.faults.drop_connection(times=5, method="POST", after_processing=True)
