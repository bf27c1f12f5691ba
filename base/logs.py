"""Structured log lines on stderr: JSON by default, or one human-readable line each.

Callers pass context with ``extra={...}``; every key that is not a standard
``LogRecord`` attribute is written as a field. Never pass secrets or raw bodies.

Every line of a process is one format: ``configure_logging`` replaces the root handlers,
and the worker tells faust/mode not to install their own (``override_logging=False``),
so faust's messages (its multi-line tables included) come out as one line each too.
librdkafka's lines reach Python logging through each client's ``logger`` setting.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Literal

__all__ = [
    "LOG_FORMATS",
    "WORKER_READY_EVENT",
    "HumanFormatter",
    "JsonFormatter",
    "LogFormat",
    "configure_logging",
]

_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}

LogFormat = Literal["json", "human"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "human")

#: The ``event`` field of the line a worker logs once it consumes (partitions assigned,
#: tables recovered); ``sluice dev`` waits for it before saying the stack is up.
WORKER_READY_EVENT = "worker.ready"


def _timestamp(record: logging.LogRecord) -> str:
    return (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        + f".{int(record.msecs):03d}Z"
    )


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD and not key.startswith("_")
    }


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


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send every log line to stderr in ``fmt`` (``json`` or ``human``) from ``level`` up."""
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {LOG_FORMATS}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(HumanFormatter() if fmt == "human" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log duplicates our own request line.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
