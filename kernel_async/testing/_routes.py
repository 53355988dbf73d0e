"""The emulator's HTTP operations: one handler per API operation, and their helpers."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from . import _wire as wire
from ._store import STATUSES, TERMINAL, StoredInvocation

if TYPE_CHECKING:
    from .emulator import KernelEmulator

__all__ = ["Routes", "abort", "error", "json_response"]


class Routes:
    """The API's operations over the emulator's state."""

    def __init__(self, emulator: KernelEmulator) -> None:
        self.emulator = emulator
        self.store = emulator._store

    def install(self, app: web.Application) -> None:
        app.router.add_post("/invocations", self.create)
        app.router.add_get("/invocations", self.list)
        app.router.add_get("/invocations/{id}", self.retrieve)
        app.router.add_patch("/invocations/{id}", self.update)
        app.router.add_get("/invocations/{id}/events", self.events)
        app.router.add_get("/invocations/{id}/browsers", self.list_browsers)
        app.router.add_delete("/invocations/{id}/browsers", self.delete_browsers)
        app.router.add_get("/org/projects/{id_or_name}/limits", self.project_limits)

    async def project_limits(self, request: web.Request) -> web.Response:
        """``GET /org/projects/{id_or_name}/limits``: the quotas' view of a project."""
        id_or_name = request.match_info["id_or_name"]
        limits = self.emulator.quotas.project_limits(id_or_name)
        if limits is None:
            return error(404, "not_found", f"Project {id_or_name!r} not found")
        return json_response(200, limits)

    async def create(self, request: web.Request) -> web.StreamResponse:
        em = self.emulator
        try:
            body = wire.decode(wire.create_decoder, await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return error(400, "bad_request", "Invalid request body", str(exc))
        problems = []
        timeout = body.async_timeout_seconds
        if timeout is not None and not (float(timeout).is_integer() and 10 <= timeout <= 3600):
            problems.append("async_timeout_seconds must be an integer between 10 and 3600")
        payload_value: Any = None
        if body.payload is not None:
            try:
                payload_value = wire.decode(wire.payload_decoder, body.payload)
            except msgspec.DecodeError:
                problems.append("payload must be a JSON string")
        if problems:
            return error(400, "bad_request", "Invalid request", *problems)
        version = em._latest.get(body.app_name) if body.version == "latest" else body.version
        action = em._actions.get((body.app_name, version or "", body.action_name))
        if action is None or version is None:
            return error(
                404,
                "not_found",
                f"Action {body.action_name!r} not found in app {body.app_name!r}"
                f" version {body.version!r}",
            )
        refusal = em.quotas.refuse_start(body.app_name)
        if refusal is not None:
            return refusal
        store = self.store
        inv = StoredInvocation(
            id=store.new_id(),
            app_name=body.app_name,
            version=version,
            action_name=body.action_name,
            deployment_id=action.deployment_id,
            payload=body.payload,
            started_ns=wire.now_ns(),
        )
        store.add(inv)
        em.quotas.started(inv.app_name)
        em.create_count += 1
        if body.async_:
            limit = (body.async_timeout_seconds or 900) * em.async_timeout_scale
            store.start(inv, action.func, payload_value, limit)
            return json_response(202, wire.WireInvokeResponse(inv.id, inv.action_name, inv.status))
        store.start(inv, action.func, payload_value, em.sync_timeout)
        await asyncio.shield(inv.done.wait())
        return json_response(
            200,
            wire.WireInvokeResponse(
                inv.id, inv.action_name, inv.status, inv.status_reason, inv.output
            ),
        )

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        inv = self.store.get(request.match_info["id"])
        if inv is None:
            return not_found(request.match_info["id"])
        return json_response(200, inv.wire())

    async def update(self, request: web.Request) -> web.StreamResponse:
        inv = self.store.get(request.match_info["id"])
        if inv is None:
            return not_found(request.match_info["id"])
        try:
            body = wire.decode(wire.update_decoder, await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return error(400, "bad_request", "Invalid request body", str(exc))
        if body.status not in TERMINAL:
            return error(
                400, "bad_request", "Invalid status", "status must be 'succeeded' or 'failed'"
            )
        if inv.terminal:
            if inv.status == body.status:
                return json_response(200, inv.wire())  # idempotent: already so
            return error(
                400,
                "bad_request",
                f"Invocation {inv.id} already finished with status {inv.status!r}",
            )
        task = inv.task
        if task is not None and not task.done():
            task.cancel()
        reason = "Invocation cancelled" if body.status == "failed" else "Invocation updated"
        self.store.finish(inv, body.status, body.output, reason)
        if body.status == "failed":
            inv.browsers.clear()  # setting failed destroys the invocation's browsers
        return json_response(200, inv.wire())

    async def list_browsers(self, request: web.Request) -> web.StreamResponse:
        inv = self.store.get(request.match_info["id"])
        if inv is None:
            return not_found(request.match_info["id"])
        return json_response(200, wire.WireBrowserList(inv.browsers))

    async def delete_browsers(self, request: web.Request) -> web.StreamResponse:
        inv = self.store.get(request.match_info["id"])
        if inv is None:
            return not_found(request.match_info["id"])
        inv.browsers.clear()
        return web.Response(status=204)

    async def list(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        problems = []
        limit = _int_param(q.get("limit"), 20)
        offset = _int_param(q.get("offset"), 0)
        if limit is None or not 1 <= limit <= 100:
            problems.append("limit must be an integer between 1 and 100")
        if offset is None or offset < 0:
            problems.append("offset must be a non-negative integer")
        status = q.get("status")
        if status is not None and status not in STATUSES:
            problems.append("status must be one of queued, running, succeeded, failed")
        since_ns, since_problem = _since_param(q.get("since"))
        if since_problem:
            problems.append(since_problem)
        if problems:
            return error(400, "bad_request", "Invalid query parameters", *problems)
        assert limit is not None
        assert offset is not None
        filters = [
            (name, q[name])
            for name in ("app_name", "version", "action_name", "deployment_id")
            if name in q
        ]
        search = q.get("query", "").casefold()
        matched = [
            inv
            for inv in self.store.newest_first()
            if all(getattr(inv, name) == value for name, value in filters)
            and (status is None or inv.status == status)
            and (since_ns is None or inv.started_ns >= since_ns)
            and (not search or _matches(inv, search))
        ]
        matched.sort(key=lambda inv: inv.started_ns, reverse=True)
        page = matched[offset : offset + limit]
        has_more = offset + limit < len(matched)
        headers = {
            "X-Limit": str(limit),
            "X-Offset": str(offset),
            "X-Has-More": "true" if has_more else "false",
        }
        if has_more:
            headers["X-Next-Offset"] = str(offset + limit)
        return json_response(200, [inv.wire() for inv in page], headers=headers)

    async def events(self, request: web.Request) -> web.StreamResponse:
        inv = self.store.get(request.match_info["id"])
        if inv is None:
            return not_found(request.match_info["id"])
        since_ns, since_problem = _since_param(request.query.get("since"))
        if since_problem:
            return error(400, "bad_request", "Invalid query parameters", since_problem)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-SSE-Content-Type": "application/json",
            }
        )
        try:
            await response.prepare(request)
            cut = self.emulator.faults.take_cut()
            await self._stream(request, response, inv, since_ns or 0, cut)
        except ConnectionResetError:
            pass  # the client went away: nothing to send it
        return response

    async def _stream(
        self,
        request: web.Request,
        response: web.StreamResponse,
        inv: StoredInvocation,
        since_ns: int,
        cut_after: int | None,
    ) -> None:
        em = self.emulator
        index = sent = 0
        loop = asyncio.get_running_loop()
        next_heartbeat = loop.time() + em.heartbeat_interval
        while True:
            events = inv.events
            frames: list[bytes] = []
            finished = False
            while index < len(events):
                ts, data, terminal = events[index]
                index += 1
                if ts < since_ns:
                    continue
                frame = b"data: " + data + b"\n\n"
                if cut_after is not None and sent >= cut_after:
                    frames.append(frame[: len(frame) // 2])
                    await response.write(b"".join(frames))
                    em.faults.stats.cuts += 1
                    abort(request)
                    return
                frames.append(frame)
                sent += 1
                if terminal:
                    finished = True
                    break
            if not finished and inv.terminal and index >= len(events):
                # The terminal state was before `since`: report the state once more.
                frames.append(b"data: " + self.store.state_data(inv, wire.now_ns()) + b"\n\n")
                finished = True
            if frames:
                await response.write(b"".join(frames))
            if finished:
                await response.write_eof()
                return
            waiter = inv.changed
            timeout = next_heartbeat - loop.time()
            if timeout > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(waiter.wait(), timeout)
            if loop.time() >= next_heartbeat:
                beat = wire.encode(wire.HeartbeatWire(wire.format_ns(wire.now_ns())))
                await response.write(b"data: " + beat + b"\n\n")
                next_heartbeat = loop.time() + em.heartbeat_interval
            if not em.running:
                return


def _matches(inv: StoredInvocation, search: str) -> bool:
    """``query``: the emulator's choice of search, a case-insensitive substring of the id,
    the app name or the action name."""
    return any(search in field.casefold() for field in (inv.id, inv.app_name, inv.action_name))


def abort(request: web.Request) -> None:
    """Close the request's connection without an answer."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def _since_param(value: str | None) -> tuple[int | None, str | None]:
    """``since`` in Unix ns (None when absent or empty), or the problem with it."""
    if not value:
        return None, None
    since_ns = wire.parse_since_ns(value)
    if since_ns is None:
        return None, "since must be an RFC 3339 timestamp or a duration like 5m"
    return since_ns, None


def _int_param(value: str | None, default: int) -> int | None:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        return None


def json_response(status: int, value: Any, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response of ``value``."""
    return web.Response(
        status=status, body=wire.encode(value), content_type="application/json", headers=headers
    )


def error(
    status: int, code: str, message: str, *details: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The API's Error body with this status."""
    return web.Response(
        status=status,
        body=wire.error_body(code, message, *details),
        content_type="application/json",
        headers=headers,
    )


def not_found(id: str) -> web.Response:
    return error(404, "not_found", f"Invocation {id!r} not found")
