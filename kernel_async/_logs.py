"""``KERNEL_LOG=info|debug``: logging to stderr without writing any code, as the official
SDK does. Quiet without it; nothing logged ever includes a header, so never the API key."""

from __future__ import annotations

import logging
import os

__all__ = ["setup_logging"]

logger = logging.getLogger("kernel_async")


def setup_logging() -> None:
    """Turn on logging to stderr if ``KERNEL_LOG`` is ``info`` or ``debug`` (called once,
    when kernel_async is imported): one line per HTTP request at ``info``, and what
    retries, rate limits and stream resumes did at ``debug``."""
    level = {"debug": logging.DEBUG, "info": logging.INFO}.get(os.environ.get("KERNEL_LOG", ""))
    if level is None:
        return
    # e.g. [2026-12-01 07:12:26 - kernel_async._http:162 - INFO] HTTP Request: POST ...
    logging.basicConfig(
        format="[%(asctime)s - %(name)s:%(lineno)d - %(levelname)s] %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
    )
    logger.setLevel(level)
