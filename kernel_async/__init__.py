"""kernel_async: the asyncio-first Python SDK for the Kernel API's invocations.

```python
from kernel_async import AsyncKernel

async with AsyncKernel() as kernel:
    inv = await kernel.invocations.run("my-app", "analyze", payload={"url": "..."})
    print(inv.status, inv.output_as())
```
"""

from . import _logs
from ._client import AsyncKernel
from ._fanout import InvocationMap, MapResult
from ._limits import AppLimitStats, Limits, LimitStats
from ._options import NOT_GIVEN, ClientOptions, DefaultAioHttpClient, NotGiven, Timeout
from ._pagination import AsyncPaginator
from ._response import AsyncAPIResponse, HTTPRequest, HTTPResponse
from ._retry import RetryMiddleware, RetryPolicy
from ._streaming import EventStream
from ._version import __version__
from .errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    ConflictError,
    InternalServerError,
    KernelError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RedirectError,
    UnprocessableEntityError,
)
from .journal import (
    Journal,
    JournalCorruptError,
    JournalError,
    JournalInUseError,
    JournalMismatchError,
    JournalUnresolvedError,
    ResumeSummary,
)
from .models import (
    TERMINAL_STATUSES,
    BaseModel,
    Browser,
    Error,
    ErrorDetail,
    ErrorEvent,
    Invocation,
    InvocationEvent,
    InvocationStateEvent,
    InvocationStatus,
    InvocationUpdateRequest,
    InvokeResponse,
    LogEvent,
    Page,
    SSEHeartbeatEvent,
    UnknownEvent,
)

__all__ = [
    "NOT_GIVEN",
    "TERMINAL_STATUSES",
    "APIConnectionError",
    "APIError",
    "APIResponseValidationError",
    "APIStatusError",
    "APITimeoutError",
    "AppLimitStats",
    "AsyncAPIResponse",
    "AsyncKernel",
    "AsyncPaginator",
    "AuthenticationError",
    "BadRequestError",
    "BaseModel",
    "ClientClosedError",
    "Browser",
    "ClientOptions",
    "ConflictError",
    "DefaultAioHttpClient",
    "Error",
    "ErrorDetail",
    "ErrorEvent",
    "EventStream",
    "HTTPRequest",
    "HTTPResponse",
    "InternalServerError",
    "Invocation",
    "InvocationEvent",
    "InvocationMap",
    "InvocationStateEvent",
    "InvocationStatus",
    "InvocationUpdateRequest",
    "InvokeResponse",
    "Journal",
    "JournalCorruptError",
    "JournalError",
    "JournalInUseError",
    "JournalMismatchError",
    "JournalUnresolvedError",
    "KernelError",
    "LimitStats",
    "Limits",
    "LogEvent",
    "MapResult",
    "NotFoundError",
    "NotGiven",
    "Page",
    "PermissionDeniedError",
    "RateLimitError",
    "RedirectError",
    "ResumeSummary",
    "RetryMiddleware",
    "RetryPolicy",
    "SSEHeartbeatEvent",
    "Timeout",
    "UnknownEvent",
    "UnprocessableEntityError",
    "__version__",
]

_logs.setup_logging()
