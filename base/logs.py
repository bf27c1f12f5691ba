"""Structured log lines on stderr: JSON by default, or one human-readable line each.

Callers pass context with ``extra={...}``; every key that is not a standard
``LogRecord`` attribute is written as a field. Never pass secrets or raw bodies.

Every line of a process is one format: ``configure_logging`` replaces the root handlers,
and the worker tells faust/mode not to install their own (``override_logging=False``),
so faust's messages (its multi-line tables included) come out as one line each too.
librdkafka's lines reach Python logging through each client's ``logger`` setting.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
import types
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from opentelemetry import trace

__all__ = [
    "LOG_FORMATS",
    "WORKER_READY_EVENT",
    "HumanFormatter",
    "JsonFormatter",
    "LogFormat",
    "configure_logging",
    "log_context",
    "logging_configured",
]

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

LogFormat = Literal["json", "human"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "human")

#: The ``event`` field of the line a worker logs once it consumes (partitions assigned,
#: tables recovered); ``sluice dev`` waits for it before saying the stack is up.
WORKER_READY_EVENT = "worker.ready"


# What the code running now is about (the request's correlation id, the record's event id),
# added to every line logged meanwhile; a task inherits its creator's.
_CONTEXT: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "sluice_log_context", default=types.MappingProxyType({})
)


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Add ``fields`` (``correlation_id``, ``event_id``; None ones are left out) to every
    line logged inside the block, in this task and the tasks it starts."""
    given = {key: value for key, value in fields.items() if value}
    token = _CONTEXT.set(types.MappingProxyType({**_CONTEXT.get(), **given}))
    try:
        yield
    finally:
        # A generator closed from another context (an agent's iterator finalised after
        # its loop body raised) cannot reset; that context is going away anyway.
        with contextlib.suppress(ValueError):
            _CONTEXT.reset(token)


def _context_fields() -> dict[str, str]:
    """The log context and the current trace's ids (OpenTelemetry's current span)."""
    fields = dict(_CONTEXT.get())
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        fields["trace_id"] = format(span.trace_id, "032x")
        fields["span_id"] = format(span.span_id, "016x")
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z"
    )


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The context's fields, then the line's own ``extra`` (which wins)."""
    fields: dict[str, Any] = _context_fields()
    fields.update(
        (key, value)
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_")
    )
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_fields(record))
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class HumanFormatter(logging.Formatter):
    """``HH:MM:SS level logger: message key=value ...``, for a person at a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        line = f"{clock} {record.levelname.lower():<7} {record.name}: {record.getMessage()}"
        if fields:
            line += f"  {fields}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _log_uncaught(
    kind: type[BaseException], error: BaseException, tb: types.TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, tb)
        return
    logging.getLogger("sluice").critical(
        "uncaught exception: %s", kind.__name__, exc_info=(kind, error, tb)
    )


def logging_configured() -> bool:
    """Whether :func:`configure_logging` installed its handler (so a command's last
    words go through it rather than as plain text)."""
    return any(
        isinstance(handler.formatter, JsonFormatter | HumanFormatter)
        for handler in logging.getLogger().handlers
    )


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send every log line to stderr in ``fmt`` (``json`` or ``human``) from ``level`` up."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(HumanFormatter() if fmt == "human" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Python's warnings and an uncaught exception's traceback are log lines too (one
    # JSON object each, the traceback in ``exc``), not raw text on stderr.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    # aiohttp's access log duplicates our own request line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
