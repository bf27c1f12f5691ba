"""What `sluice dev` makes of its worker's output, and the two log formats (no services)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from base.logs import WORKER_READY_EVENT, configure_logging
from sluice.dev_output import is_ready, is_shown, to_record


def test_a_json_line_keeps_its_logger_level_message_and_fields() -> None:
    record = to_record(
        json.dumps(
            {"ts": "t", "level": "warning", "logger": "streams.effects", "msg": "50%", "n": 3}
        )
    )
    assert (record.name, record.levelno, record.getMessage()) == ("streams.effects", 30, "50%")
    assert record.n == 3  # type: ignore[attr-defined]


def test_anything_else_becomes_an_info_line_without_terminal_escapes() -> None:
    raw = to_record("%6|1796013388.112|BGQUEUE|rdkafka#producer-11| [thrd:background]: Purging")
    assert (raw.name, raw.levelno) == ("worker.output", logging.INFO)
    # faust's spinner leaves a "show cursor" escape in front of the next line.
    ready = to_record(
        "\b\x1b[?25h"
        + json.dumps({"logger": "streams.app", "msg": "worker ready", "event": WORKER_READY_EVENT})
    )
    assert ready.name == "streams.app"
    assert is_ready(ready)
    assert not is_ready(raw)


@pytest.mark.parametrize(
    ("logger", "level", "message", "shown"),
    [
        ("faust.tables", "info", "Subscription table", False),
        ("streams.transport", "info", "[^--Consumer]: Starting...", False),
        ("mode.timers", "warning", "Timer x woke up too late, with a drift of +1", False),
        ("aiokafka.consumer", "warning", "Heartbeat failed", True),
        ("faust.worker", "error", "crashed", True),
        ("streams.app", "info", "worker ready", True),
        ("streams.effects", "info", "retry scheduled", True),
    ],
)
def test_a_dev_terminal_leaves_out_library_chatter_only(
    logger: str, level: str, message: str, shown: bool
) -> None:
    line = json.dumps({"level": level, "logger": logger, "msg": message})
    assert is_shown(to_record(line)) is shown


def _logged(fmt: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """What one faust table record looks like on stderr in ``fmt``."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("INFO", fmt)
    try:
        logging.getLogger("faust.tables").info("Table\n+----+\n| a |\n+----+", extra={"k": 1})
    finally:
        root.handlers[:], root.level = handlers, level
    return stream.getvalue()


def test_json_format_makes_every_record_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    [line] = _logged("json", monkeypatch).splitlines()
    parsed = json.loads(line)
    assert (parsed["logger"], parsed["level"], parsed["k"]) == ("faust.tables", "info", 1)
    assert parsed["msg"].startswith("Table\n")


def test_human_format_is_a_readable_line(monkeypatch: pytest.MonkeyPatch) -> None:
    first = _logged("human", monkeypatch).splitlines()[0]
    assert " info    faust.tables: Table" in first
    assert not first.startswith("{")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("INFO", "xml")
