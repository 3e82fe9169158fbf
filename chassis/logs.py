"""Structured logs: one JSON object a line on stderr, each with the request id of its call.

The formatter is on every call's path (the access log): it reuses one JSON encoder and the timestamp's seconds,
which takes formatting a line from ~4.4 to ~3.4 µs (measured on the 2-core machines).
"""

from __future__ import annotations

import json
import logging
import sys
import time

from chassis import context, tracing

_encode = json.JSONEncoder(default=str).encode


class _JsonFormatter(logging.Formatter):
    def __init__(self, service: str):
        super().__init__()
        self._service = service
        self._second = -1
        self._second_text = ""

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # a race between threads only recomputes the same text
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": self._timestamp(record),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "request_id": context.request_id.get(),
            "msg": record.getMessage(),
        }
        trace_id = tracing.current_trace_id()  # tracing on, inside a span: the line names its trace
        if trace_id is not None:
            entry["trace_id"] = trace_id
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encode(entry)


def configure(service: str, level: str = "INFO") -> None:
    # The lines never show the caller's file and line, the thread or the process: don't look them up for every
    # record (the logging HOWTO's "Optimization"; a few µs a line, on every call's access-log line).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def fields(**values: object) -> dict[str, dict[str, object]]:
    """``log.info("msg", extra=fields(image_id=...))``: extra keys in the JSON line."""
    return {"fields": values}
