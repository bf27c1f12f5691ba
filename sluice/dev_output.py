"""What ``sluice dev`` shows of its worker's output, and how it knows the worker is ready.

The worker (a child process) logs JSON lines (``SLUICE_LOG_FORMAT=json``); ``sluice dev``
reads them and re-emits each through its own logging, so the terminal gets one format
throughout, JSON or human (``--log-format``). Anything the worker writes that is not a
JSON log line (a stray print, a library writing to the file descriptor) is wrapped as
one, so no line escapes the format. In a dev terminal, faust's, mode's and aiokafka's
routine INFO lines (about 230 at start-up: services starting, subscription tables, and
mode's service lifecycle lines under our own loggers) and mode's timer-drift warnings
(a loaded laptop, not a fault) are left out; their warnings and errors are shown.
``sluice worker`` itself logs everything.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from base.logs import WORKER_READY_EVENT

__all__ = ["is_ready", "is_shown", "to_record"]

_QUIET_LIBRARIES = frozenset({"faust", "mode", "aiokafka", "kafka"})
_STANDARD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_OWN_KEYS = frozenset({"ts", "level", "logger", "msg"})
_RAW_LOGGER = "worker.output"
# Terminal escapes and control characters: faust's start-up spinner writes a "show
# cursor" sequence in front of the line that follows it, even into a pipe.
_CONTROL = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|[\x00-\x08\x0b-\x1f\x7f]")
# mode prefixes its services' lifecycle lines ("[^--Consumer]: Starting...") with their
# place in the service tree, whichever module's logger they use.
_SERVICE_TREE = "[^"


def to_record(raw: str) -> logging.LogRecord:
    """The log record one line of worker output stands for (a non-JSON line as INFO)."""
    raw = _CONTROL.sub("", raw)
    try:
        data: Any = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict) or "msg" not in data:
        return logging.makeLogRecord(
            {"name": _RAW_LOGGER, "levelno": logging.INFO, "levelname": "INFO", "msg": raw}
        )
    level = logging.getLevelName(str(data.get("level", "info")).upper())
    levelno = level if isinstance(level, int) else logging.INFO
    fields = {
        key: value for key, value in data.items() if key not in _OWN_KEYS and key not in _STANDARD
    }
    return logging.makeLogRecord(
        {
            **fields,
            "name": str(data.get("logger", _RAW_LOGGER)),
            "levelno": levelno,
            "levelname": logging.getLevelName(levelno),
            # The message as the worker rendered it: no % arguments to apply again.
            "msg": str(data["msg"]),
        }
    )


def is_ready(record: logging.LogRecord) -> bool:
    """Whether this is the worker's "consuming now" line."""
    return getattr(record, "event", None) == WORKER_READY_EVENT


def is_shown(record: logging.LogRecord) -> bool:
    """Whether a dev terminal shows the record (see the module docstring)."""
    library = record.name.split(".", 1)[0] in _QUIET_LIBRARIES
    lifecycle = record.getMessage().startswith(_SERVICE_TREE)
    if (library or lifecycle) and record.levelno < logging.WARNING:
        return False
    return not (record.name == "mode.timers" and "woke up too late" in record.getMessage())
