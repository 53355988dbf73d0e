"""Realistic demo actions for the emulator: some slow, some chatty, a few failing."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from .emulator import ActionContext, KernelEmulator

__all__ = ["DEMO_APP", "DOCS_APP", "install_demo_actions"]

DEMO_APP = "demo-app"
#: The app the README's and the docs' examples call (``my-app``): its actions are installed
#: with the demo's, so those examples run as written against ``kernel-async serve``.
DOCS_APP = "my-app"


def install_demo_actions(emulator: KernelEmulator, *, seed: int | None = None) -> None:
    """Register the demo app's actions on ``emulator``.

    * ``summarize``: logs a few steps, returns a word count (payload ``{"text": ...}``).
    * ``crawl``: slow, starts a browser and logs each page it "visits" (payload
      ``{"pages": n}``).
    * ``flaky``: fails about one time in eight, like a real upstream would; payload
      ``{"fail": true}`` always fails it, ``{"fail": false}`` never does.
    * ``echo``: returns its payload at once.

    And those of `DOCS_APP` (``my-app``), which the docs' examples call: ``analyze``
    (payload ``{"url": ...}``: logs, returns the URL and a word count), ``crawl`` and
    ``echo`` as above.
    """
    rng = random.Random(seed)

    async def summarize(ctx: ActionContext, payload: Any) -> dict[str, Any]:
        text = str((payload or {}).get("text", "lorem ipsum dolor sit amet"))
        ctx.log("loading model")
        await asyncio.sleep(rng.uniform(0.01, 0.05))
        ctx.log(f"summarizing {len(text)} characters")
        await asyncio.sleep(rng.uniform(0.01, 0.05))
        return {"words": len(text.split()), "summary": text[:40]}

    async def crawl(ctx: ActionContext, payload: Any) -> dict[str, Any]:
        pages = int((payload or {}).get("pages", 5))
        ctx.start_browser(name="crawler")
        for page in range(1, pages + 1):
            ctx.log(f"visiting page {page}/{pages}")
            await asyncio.sleep(rng.uniform(0.02, 0.08))
        return {"pages": pages}

    async def flaky(ctx: ActionContext, payload: Any) -> dict[str, Any]:
        ctx.log("calling upstream")
        await asyncio.sleep(rng.uniform(0.01, 0.1))
        fail = (payload or {}).get("fail")
        if fail or (fail is None and rng.random() < 0.125):
            raise RuntimeError("upstream timed out")
        ctx.log("upstream answered")
        return {"ok": True}

    def echo(ctx: ActionContext, payload: Any) -> Any:
        return payload

    for name, func in (
        ("summarize", summarize),
        ("crawl", crawl),
        ("flaky", flaky),
        ("echo", echo),
    ):
        emulator.add_action(DEMO_APP, name, func)

    async def analyze(ctx: ActionContext, payload: Any) -> dict[str, Any]:
        url = str((payload or {}).get("url", ""))
        ctx.log(f"fetching {url}")
        await asyncio.sleep(rng.uniform(0.01, 0.05))
        ctx.log("analyzing the page")
        return {"url": url, "words": 300 + len(url)}

    for name, func in (("analyze", analyze), ("crawl", crawl), ("echo", echo)):
        emulator.add_action(DOCS_APP, name, func)
