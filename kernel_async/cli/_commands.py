"""The commands that drive an API, real or emulated: invoke, get, list (history), follow,
cancel, update, browsers, delete-browsers."""

from __future__ import annotations

import argparse

import msgspec

from .._fanout import CANCEL_OUTPUT
from ..models import Browser, Invocation
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Interrupted,
    UsageError,
    client,
    finish,
    follow_printing,
    interruptible,
    json_arg,
    json_line,
    payload_arg,
    read_text,
    since_arg,
)
from ._fanout import cmd_invoke_many
from ._output import Output

__all__ = [
    "cmd_browsers",
    "cmd_cancel",
    "cmd_delete_browsers",
    "cmd_follow",
    "cmd_get",
    "cmd_invoke",
    "cmd_list",
    "cmd_update",
]


async def cmd_invoke(args: argparse.Namespace, out: Output) -> int:
    since_arg(args.since)
    if args.payloads is not None:
        if args.payload is not None or args.payload_file is not None:
            raise ValueError("--payloads takes the payloads; leave out --payload/--payload-file")
        return await cmd_invoke_many(args, out)
    if args.journal is not None:
        raise ValueError("--journal records a fan-out: it goes with --payloads")
    if args.json:
        raise UsageError("--json (one JSON array) goes with --payloads; here use -o json")
    payload = payload_arg(args)
    as_json = args.output == "json"
    async with client(args) as kernel:
        if args.sync:
            done = await interruptible(
                kernel.invocations.create(
                    args.app, args.action, version=args.version, payload=payload
                )
            )
            if as_json:
                out.line(json_line(done))
            else:
                reason = f" ({done.status_reason})" if done.status_reason else ""
                out.line(f"invocation {done.id} [{done.status}]{reason}", style="bold")
                if done.output is not None:
                    out.line(done.output)
            return EXIT_OK if done.status == "succeeded" else EXIT_FAILED
        created = await interruptible(
            kernel.invocations.create(
                args.app,
                args.action,
                version=args.version,
                payload=payload,
                async_=True,
                async_timeout_seconds=args.async_timeout,
            )
        )
        if args.async_ and not args.follow:
            out.line(json_line(created) if as_json else created.id)
            return EXIT_OK
        if not as_json:
            out.line(f"invocation {created.id} ({created.status})", style="bold")
        try:
            final = await interruptible(
                follow_printing(out, kernel, created.id, args.since, as_json=as_json)
            )
        except Interrupted:
            out.error(f"interrupted: cancelling invocation {created.id}")
            await kernel.invocations.cancel(created.id, output=CANCEL_OUTPUT, timeout=10)
            return EXIT_INTERRUPTED
        return finish(out, final, as_json=as_json)


async def cmd_get(args: argparse.Namespace, out: Output) -> int:
    async with client(args) as kernel:
        inv = await kernel.invocations.retrieve(args.id)
    if args.output == "json":
        out.line(json_line(inv))
    else:
        out.line(msgspec.json.format(msgspec.json.encode(inv)).decode())
    return EXIT_OK


async def cmd_list(args: argparse.Namespace, out: Output) -> int:
    since_arg(args.since)
    as_json = args.output == "json" and not args.json  # JSON Lines, as they come
    rows: list[Invocation] = []
    async with client(args) as kernel:
        listing = kernel.invocations.list(
            app_name=args.app,
            action_name=args.action,
            version=args.app_version,
            deployment_id=args.deployment_id,
            status=args.status,
            since=args.since,
            query=args.query,
            limit=min(args.limit, 100),
            offset=args.offset,
        )
        async for inv in listing:
            if as_json:
                out.line(json_line(inv))
            rows.append(inv)
            if len(rows) >= args.limit:
                break
    if args.json:
        out.line(json_line(rows))
    elif not as_json:
        out.table(
            None,
            ["ID", "APP", "ACTION", "STATUS", "STARTED", "SECONDS"],
            [
                [
                    inv.id,
                    inv.app_name,
                    inv.action_name,
                    inv.status,
                    inv.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                    ""
                    if inv.finished_at is None
                    else f"{(inv.finished_at - inv.started_at).total_seconds():.2f}",
                ]
                for inv in rows
            ],
        )
    return EXIT_OK


async def cmd_follow(args: argparse.Namespace, out: Output) -> int:
    since_arg(args.since)
    as_json = args.output == "json"
    async with client(args) as kernel:
        try:
            final = await interruptible(
                follow_printing(out, kernel, args.id, args.since, args.heartbeats, as_json=as_json)
            )
        except Interrupted:
            return EXIT_INTERRUPTED
    return finish(out, final, as_json=as_json)


async def cmd_cancel(args: argparse.Namespace, out: Output) -> int:
    async with client(args) as kernel:
        inv = await kernel.invocations.cancel(args.id, output=CANCEL_OUTPUT)
    out.line(json_line(inv) if args.output == "json" else f"{inv.id} {inv.status}")
    return EXIT_OK


async def cmd_update(args: argparse.Namespace, out: Output) -> int:
    result = args.result
    if result is not None:
        result = json_arg(
            read_text(result[1:], "the result file") if result.startswith("@") else result,
            "--result",
        )
    async with client(args) as kernel:
        inv = await kernel.invocations.update(args.id, status=args.status, output=result)
    out.line(json_line(inv) if args.output == "json" else f"{inv.id} {inv.status}")
    return EXIT_OK


async def cmd_browsers(args: argparse.Namespace, out: Output) -> int:
    async with client(args) as kernel:
        browsers = await kernel.invocations.list_browsers(args.id)
    if args.json:
        out.line(json_line(browsers))
        return EXIT_OK
    if args.output == "json":
        for browser in browsers:
            out.line(json_line(browser))
        return EXIT_OK
    if not browsers:
        out.line(f"invocation {args.id} has no browsers")
        return EXIT_OK
    out.table(
        None,
        ["SESSION", "NAME", "HEADLESS", "REGION", "CREATED", "LIVE VIEW"],
        [_browser_row(b) for b in browsers],
    )
    return EXIT_OK


def _browser_row(browser: Browser) -> list[str]:
    return [
        browser.session_id,
        browser.name or "",
        "yes" if browser.headless else "no",
        browser.region,
        browser.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        browser.browser_live_view_url or "",
    ]


async def cmd_delete_browsers(args: argparse.Namespace, out: Output) -> int:
    async with client(args) as kernel:
        await kernel.invocations.delete_browsers(args.id)
    out.line(f"deleted the browsers of invocation {args.id}")
    return EXIT_OK
