"""The commands that drive an API, real or emulated: invoke, get, list, follow, cancel."""

from __future__ import annotations

import argparse

import msgspec

from .._fanout import CANCEL_OUTPUT
from ..models import Invocation
from ._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    Interrupted,
    client,
    finish,
    follow_printing,
    interruptible,
    payload_arg,
)
from ._fanout import cmd_invoke_many
from ._output import Output


async def cmd_invoke(args: argparse.Namespace, out: Output) -> int:
    if args.payloads is not None:
        return await cmd_invoke_many(args, out)
    payload = payload_arg(args.payload)
    as_json = args.output == "json"
    async with client(args) as kernel:
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
            out.line(msgspec.json.encode(created).decode() if as_json else created.id)
            return EXIT_OK
        if not as_json:
            out.line(f"invocation {created.id} ({created.status})", style="bold")
        try:
            final = await interruptible(follow_printing(out, kernel, created.id, as_json=as_json))
        except Interrupted:
            out.error(f"interrupted: cancelling invocation {created.id}")
            await kernel.invocations.cancel(created.id, output=CANCEL_OUTPUT, timeout=10)
            return EXIT_INTERRUPTED
        return finish(out, final, as_json=as_json)


async def cmd_get(args: argparse.Namespace, out: Output) -> int:
    async with client(args) as kernel:
        inv = await kernel.invocations.retrieve(args.id)
    out.line(msgspec.json.format(msgspec.json.encode(inv), indent=2).decode())
    return EXIT_OK


async def cmd_list(args: argparse.Namespace, out: Output) -> int:
    rows: list[Invocation] = []
    async with client(args) as kernel:
        listing = kernel.invocations.list(
            app_name=args.app,
            action_name=args.action,
            version=args.app_version,
            status=args.status,
            since=args.since,
            limit=min(args.limit, 100),
        )
        async for inv in listing:
            if args.json:
                out.line(msgspec.json.encode(inv).decode())
            else:
                rows.append(inv)
            if len(rows) >= args.limit:
                break
    if not args.json:
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
    async with client(args) as kernel:
        try:
            final = await interruptible(
                follow_printing(out, kernel, args.id, args.since, args.heartbeats)
            )
        except Interrupted:
            return EXIT_INTERRUPTED
    return finish(out, final)


async def cmd_cancel(args: argparse.Namespace, out: Output) -> int:
    async with client(args) as kernel:
        inv = await kernel.invocations.cancel(args.id)
    out.line(f"{inv.id} {inv.status}")
    return EXIT_OK
