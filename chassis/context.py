"""What a call carries through the layers of a service: its caller, request id and deadline.

The interceptor sets these once per inbound call; downstream clients and logs read them.
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    account_id: str
    api_key_id: str = ""


current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
# Absolute deadline of the inbound call on the monotonic clock, or None when it has none.
deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def caller() -> Caller:
    found = current_caller.get()
    if found is None:  # the interceptor authenticates every call before a handler runs
        raise RuntimeError("no authenticated caller in this context")
    return found


def remaining_seconds() -> float | None:
    end = deadline.get()
    return None if end is None else end - time.monotonic()
