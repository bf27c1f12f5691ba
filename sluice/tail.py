"""``sluice tail TOPIC``: decode a topic's Avro records to JSON lines for operators."""

from __future__ import annotations

import base64
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TextIO

from confluent_kafka import Consumer, KafkaError, Message

from base.errors import InvalidEvent
from schemas.codec import Codec

__all__ = ["record_line", "tail"]


def tail(
    bootstrap_servers: str,
    topic: str,
    codec: Codec,
    out: TextIO,
    *,
    from_beginning: bool = True,
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
    stop: Callable[[], bool] = lambda: False,
) -> int:
    """Print one JSON line per record; returns how many were printed.

    Runs until ``max_records`` are printed, nothing arrives for ``idle_timeout_s``, or
    ``stop()`` says so. Uses a throwaway consumer group and never commits offsets, so
    tailing never disturbs a real consumer.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"sluice-tail-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest" if from_beginning else "latest",
            # librdkafka's own lines go through Python logging, not raw onto stderr.
            "logger": logging.getLogger("librdkafka"),
        }
    )
    printed = 0
    last_seen = time.monotonic()
    try:
        consumer.subscribe([topic])
        while not stop():
            if max_records is not None and printed >= max_records:
                break
            if idle_timeout_s is not None and time.monotonic() - last_seen > idle_timeout_s:
                break
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    continue
                raise RuntimeError(f"consume failed: {error.str()}")
            last_seen = time.monotonic()
            out.write(json.dumps(record_line(message, codec)) + "\n")
            out.flush()
            printed += 1
    finally:
        consumer.close()
    return printed


def record_line(message: Message, codec: Codec) -> dict[str, Any]:
    """One record as a JSON-ready dict: position, key, headers and the decoded value."""
    key = message.key()
    line: dict[str, Any] = {
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp": message.timestamp()[1],
        "key": key.decode("utf-8", "replace") if key is not None else None,
        "headers": _headers(message),
    }
    raw = message.value() or b""
    try:
        decoded = codec.decode(raw)
    except InvalidEvent as exc:
        line["error"] = str(exc)
        line["valueBase64"] = base64.b64encode(raw).decode()
        return line
    line["schemaId"] = decoded.schema_id
    line["subject"] = decoded.subject
    line["value"] = _jsonable(decoded.record)
    return line


def _headers(message: Message) -> dict[str, str]:
    headers = message.headers() or []
    pairs = headers.items() if isinstance(headers, dict) else headers
    return {
        name: value.decode("utf-8", "replace") if isinstance(value, bytes) else (value or "")
        for name, value in pairs
    }


def _jsonable(value: Any) -> Any:
    """Avro bytes become text when they are UTF-8 (webhook bodies are), else base64."""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value
