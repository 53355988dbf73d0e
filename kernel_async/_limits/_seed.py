"""Start from the cap the service tells: a project's ``max_concurrent_invocations``
(``GET /org/projects/{id_or_name}/limits``), read once per project, lazily, on the first
create, to seed admission instead of slow start. Not being allowed to read it (403), or no
such project (404), or any other failure, is not an error: admission learns as before."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec

__all__ = ["PROJECT_CAP_TIMEOUT", "ProjectCaps", "ProjectLimits", "project_limits_decoder"]

logger = logging.getLogger("kernel_async")

#: The longest the first creates wait for a project's limits (seconds, retries included):
#: a hint, not worth holding every create for the client's whole timeout.
PROJECT_CAP_TIMEOUT: Final = 2.0


class ProjectLimits(msgspec.Struct, kw_only=True):
    """The part of the API's ``ProjectLimits`` that admission reads."""

    max_concurrent_invocations: int | None = None
    """Running invocations allowed in the project at once (``None``: no project cap)."""


project_limits_decoder: msgspec.json.Decoder[ProjectLimits] = msgspec.json.Decoder(ProjectLimits)


class ProjectCaps:
    """Each project's cap, read at most once. Concurrent first creates wait for the one
    read; if that read is cancelled, they go on without it (and it is not tried again)."""

    def __init__(self) -> None:
        self._reads: dict[str, asyncio.Future[int | None]] = {}

    def unread(self, project: str) -> bool:
        """Whether the cap of ``project`` was not read yet (nor is being read)."""
        fut = self._reads.get(project)
        return fut is None or not fut.done()

    async def read_once(
        self,
        project: str,
        fetch: Callable[[], Awaitable[int | None]],
        seed: Callable[[int], None],
    ) -> None:
        """Read ``project``'s cap with ``fetch`` unless it was read already, and ``seed``
        admission with it when there is one. Never raises but `asyncio.CancelledError`."""
        fut = self._reads.get(project)
        if fut is not None:
            if not fut.done():
                await asyncio.shield(fut)
            return
        fut = self._reads[project] = asyncio.get_running_loop().create_future()
        cap = None
        try:
            cap = await fetch()
        finally:
            fut.set_result(cap)
        if cap is not None and cap >= 1:
            logger.debug("Project %r allows %d running invocations: starting there", project, cap)
            seed(cap)
