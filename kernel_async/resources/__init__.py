"""API resources. Each describes requests; the client's transport makes them."""

from .invocations import Invocations

__all__ = ["Invocations"]
