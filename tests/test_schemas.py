"""The wire contract's invariants: topic catalog, schema files, id table, compatibility."""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import fastavro
import pytest
from fastavro.schema import UnknownType

from base.errors import SluiceError
from schemas.catalog import (
    AVRO_DIR,
    BILLING_TOPICS,
    DAY_MS,
    IDS_PATH,
    JOIN_PARTITIONS,
    JOIN_TOPICS,
    RETRY_DELAYS,
    TOPICS,
    WEBHOOK_TOPICS,
    SchemaCatalog,
    SchemaFile,
    SchemaNotFound,
    TopicSpec,
    UnknownTopic,
    all_topics,
    default_catalog,
    retry_topic_name,
    retry_topic_spec,
    topic_spec,
)
from schemas.compat import check_backward, is_backward_compatible

CATALOG = default_catalog()
FILES = CATALOG.files()

# Every (subject, version) ever given an id, with the id and a digest of the file's JSON.
# Append-only, like schemas/ids.json: when you add a version, add its line here in the
# same change. Never edit or delete a line: records on the topics are decoded by these ids,
# and a published schema file must not change under them.
PUBLISHED: dict[tuple[str, int], tuple[int, str]] = {
    ("sluice.webhooks.RawWebhook", 1): (
        1001,
        "f7e638f447658195e5afadd1eb4073a357a05f889bf816f59d572ca139d31f7f",
    ),
    ("sluice.billing.BillingEvent", 1): (
        1002,
        "239cf7b8bb53e65437e7b7759faf5b26711b2a09ee822ecf2e15d4bf8db8cb5c",
    ),
    ("sluice.orders.OrderEvent", 1): (
        1003,
        "de20690e0cf51c919b3fee98709d40a6871ffd8d01803cb1b2cf823300072f54",
    ),
    ("sluice.dlq.DeadLetter", 1): (
        1004,
        "6ac0d443386e17b3053786601e3ae9b00182986e415d7b9ab43d2ebedea835c1",
    ),
    ("sluice.config.RuntimeConfigEntry", 1): (
        1005,
        "912448c9985cc502726887360874078a30098061056f2e20d3ab9401773d14b9",
    ),
    ("sluice.orders.OrderLifecycleEvent", 1): (
        1006,
        "6e58f27f7d7d2c59f1f7212c2f1385e68b311938008436f4bd957ae7791decd1",
    ),
    ("sluice.payments.PaymentCommand", 1): (
        1007,
        "f4f265f2e93c87ff1f31e0b6157e8218cbf5975606f26abc9bb6d604ad1b96ee",
    ),
    ("sluice.payments.PaymentSetupEvent", 1): (
        1008,
        "3775628c119606503ff596d164b394c9cd3417bf351d9ccab53464e65ca47696",
    ),
    ("sluice.commands.Reply", 1): (
        1009,
        "5223ea083f7b6e87ad9ec93a6ae37986c66329f43fcc3fd06f9755b699cd7e02",
    ),
    ("sluice.commands.InventoryRelease", 1): (
        1010,
        "48bf05cf2cf79c6906b69c934c66344a2dfc39aa9a8b4c61054f2fad6b844654",
    ),
    ("sluice.webhooks.WebhookOutcome", 1): (
        1011,
        "3436d277572188f951360300d4d0951b485d4bfec744e74aaa9ea9cba9c8094c",
    ),
    ("sluice.leads.LeadReceived", 1): (
        1012,
        "d034e085db8848358291df5c737416c619ed46528fb4fd9f3370fdf831049338",
    ),
    ("sluice.leads.LeadDeliveryCommand", 1): (
        1013,
        "fe1554b897d636bc054edb712946b5768134d271bc20e8de53ee00274c90d873",
    ),
    ("sluice.users.UserEvent", 1): (
        1014,
        "65ec4052429a3c8428c476a45f92f5467fd4d8202aadc11501c7f1e92d0931df",
    ),
    ("sluice.notifications.NotificationRequest", 1): (
        1015,
        "4b322880645740e2db03a3cbc655d19439ee081f6d063da46ccef9411a61a49b",
    ),
    ("sluice.search.IndexCommand", 1): (
        1016,
        "8a3e5f3e58958bff3cc767450c4a36401f37a8291acf2f1f86bfd82779465316",
    ),
    ("sluice.cache.InvalidateCommand", 1): (
        1017,
        "3a89f172f9ea538a098cf83c0357aaee505d1d51659a5fe4b8762f75a66539bc",
    ),
    ("sluice.config.RuntimeConfigEntry", 2): (
        1018,
        "3bd6c1dba5cd4cb530398a018c169bd0fc05c3ce930129699a34b8f85d63d0d1",
    ),
}

ENVELOPE: list[tuple[str, Any]] = [
    ("eventId", "string"),
    ("eventType", "string"),
    ("version", "int"),
    ("occurredAt", {"type": "long", "logicalType": "timestamp-millis"}),
    ("correlationId", "string"),
    ("source", "string"),
]


def _digest(path: Path) -> str:
    normalised = json.dumps(json.loads(path.read_text()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(normalised.encode()).hexdigest()


def _file_id(schema_file: SchemaFile) -> str:
    return f"{schema_file.subject}/{schema_file.version}"


# -- topic catalog -------------------------------------------------------------------------


def test_topic_names_are_lower_case_dotted_and_match_their_keys() -> None:
    for name, spec in TOPICS.items():
        assert spec.name == name
        assert re.fullmatch(r"[a-z][a-z0-9]*(\.[a-z0-9]+)*", name), name


def test_design_topics_are_declared() -> None:
    expected = {
        "webhooks.stripe",
        "webhooks.razorpay",
        "webhooks.outcomes",
        "billing.payment.succeeded",
        "billing.payment.failed",
        "billing.payment.pending",
        "billing.payment.refunded",
        "billing.checkout.completed",
        "billing.checkout.failed",
        "billing.checkout.expired",
        "billing.invoice.updated",
        "billing.subscription.updated",
        "orders",
        "orders.lifecycle",
        "commands.payments",
        "commands.stripe",
        "payments.setup",
        "join.ticks",
        "replies",
        "commands.inventory.release",
        "leads.received",
        "commands.leads.deliver",
        "users.contacts",
        "notifications.requested",
        "commands.search.index",
        "commands.cache.invalidate",
        "config.runtime",
        "dlq",
        "alerts",
        *(name for name, _ in RETRY_DELAYS),
    }
    assert set(TOPICS) == expected
    assert {t for t in TOPICS if t.startswith("billing.")} == set(BILLING_TOPICS)


def test_join_topics_are_co_partitioned_and_keyed_by_order_id() -> None:
    assert set(JOIN_TOPICS) >= {"orders", "commands.payments", "payments.setup"}
    assert {t for t in BILLING_TOPICS if TOPICS[t].key == "orderId"} <= set(JOIN_TOPICS)
    assert TOPICS["join.ticks"].key == "partition"
    assert {TOPICS[t].partitions for t in JOIN_TOPICS} == {JOIN_PARTITIONS}
    for topic in (
        *(t for t in JOIN_TOPICS if t != "join.ticks"),
        *(t for t in BILLING_TOPICS if ".payment." in t or ".checkout." in t),
    ):
        assert TOPICS[topic].key == "orderId", topic


def test_webhook_topics_keep_30_days_and_are_keyed_by_provider_event_id() -> None:
    for topic in WEBHOOK_TOPICS:
        spec = TOPICS[topic]
        assert spec.retention_ms == 30 * DAY_MS == 2_592_000_000
        assert spec.key == "providerEventId"
        assert not spec.compacted
        assert spec.kafka_config() == {"cleanup.policy": "delete", "retention.ms": "2592000000"}


def test_only_latest_state_topics_are_compacted() -> None:
    # Runtime settings and user contacts: only the latest value per key matters.
    assert {t.name for t in all_topics() if t.compacted} == {"config.runtime", "users.contacts"}
    assert TOPICS["config.runtime"].kafka_config() == {"cleanup.policy": "compact"}


def test_every_referenced_subject_has_a_schema_and_every_schema_a_topic() -> None:
    referenced = {spec.subject for spec in all_topics() if spec.subject is not None}
    assert referenced == set(CATALOG.subjects())


def test_retry_topics_follow_the_default_schedule_and_carry_raw_bytes() -> None:
    assert [name for name, _ in RETRY_DELAYS] == ["retry.5s", "retry.30s", "retry.5m", "retry.30m"]
    delays = [seconds for _, seconds in RETRY_DELAYS]
    assert delays == sorted(delays)
    for name, seconds in RETRY_DELAYS:
        spec = TOPICS[name]
        assert spec == retry_topic_spec(seconds)
        assert spec.subject is None
        assert spec.key == "origin"
        assert "unchanged" in spec.doc


@pytest.mark.parametrize(
    ("seconds", "name"),
    [
        (5, "retry.5s"),
        (90, "retry.90s"),
        (300, "retry.5m"),
        (3600, "retry.1h"),
        (0.5, "retry.500ms"),
    ],
)
def test_retry_topic_name(seconds: float, name: str) -> None:
    assert retry_topic_name(seconds) == name
    assert topic_spec(name).name == name


@pytest.mark.parametrize("seconds", [0, -1, 0.0001])
def test_retry_topic_name_rejects_bad_delays(seconds: float) -> None:
    with pytest.raises(ValueError, match="positive whole number of ms"):
        retry_topic_name(seconds)


def test_topic_spec_finds_catalog_topics_and_rejects_unknown_ones() -> None:
    assert topic_spec("orders") is TOPICS["orders"]
    with pytest.raises(KeyError) as caught:
        topic_spec("Orders")
    assert isinstance(caught.value, UnknownTopic)
    assert isinstance(caught.value, SluiceError)
    assert str(caught.value).startswith("unknown topic 'Orders': not in the topic catalog")
    with pytest.raises(
        UnknownTopic, match=re.escape("the delay topic for that delay is 'retry.1m'")
    ):
        topic_spec("retry.60s")


def test_all_topics_lists_the_catalog_in_order() -> None:
    assert all_topics() == list(TOPICS.values())


def test_topic_spec_validates_itself() -> None:
    with pytest.raises(ValueError, match="lower-case dotted"):
        TopicSpec("Bad_Name", None, "id", 1, None, False, "")
    with pytest.raises(ValueError, match="partitions"):
        TopicSpec("ok", None, "id", 0, None, False, "")


# -- schema files --------------------------------------------------------------------------


@pytest.mark.parametrize("schema_file", FILES, ids=_file_id)
def test_schema_file_is_valid_and_named_after_its_subject(schema_file: SchemaFile) -> None:
    assert schema_file.path.parent.parent == AVRO_DIR
    raw = json.loads(schema_file.path.read_text())
    parsed: Any = fastavro.parse_schema(raw)
    assert parsed["type"] == "record"
    assert parsed["name"] == schema_file.subject
    assert raw.get("doc"), "every record says what it is"
    for field in raw["fields"]:
        assert field.get("doc"), f"field {field['name']} has no doc"


@pytest.mark.parametrize("schema_file", FILES, ids=_file_id)
def test_schema_carries_the_envelope_first(schema_file: SchemaFile) -> None:
    fields = CATALOG.schema(schema_file.subject, schema_file.version)["fields"]
    assert [(f["name"], f["type"]) for f in fields[: len(ENVELOPE)]] == ENVELOPE


def test_versions_count_up_from_one() -> None:
    for subject in CATALOG.subjects():
        versions = CATALOG.versions(subject)
        assert versions == list(range(1, len(versions) + 1)), subject


def test_catalog_rejects_badly_named_files(tmp_path: Path) -> None:
    (tmp_path / "x.Y").mkdir()
    (tmp_path / "x.Y" / "latest.avsc").write_text("{}")
    with pytest.raises(ValueError, match=re.escape("named <version>.avsc")):
        SchemaCatalog(tmp_path, IDS_PATH)


def test_catalog_lookups_fail_clearly() -> None:
    with pytest.raises(SchemaNotFound, match="no schema files for subject 'nope'"):
        CATALOG.latest_version("nope")
    with pytest.raises(
        SchemaNotFound, match=re.escape("no schema file for sluice.dlq.DeadLetter version 99")
    ):
        CATALOG.parsed("sluice.dlq.DeadLetter", 99)
    with pytest.raises(
        SchemaNotFound, match=re.escape("no schema id for sluice.dlq.DeadLetter version 99")
    ):
        CATALOG.schema_id("sluice.dlq.DeadLetter", 99)
    assert CATALOG.lookup_id(1) is None


def test_schema_returns_a_copy() -> None:
    schema = CATALOG.schema("sluice.dlq.DeadLetter", 1)
    schema["fields"].clear()
    assert CATALOG.schema("sluice.dlq.DeadLetter", 1)["fields"]


# -- schema id table -----------------------------------------------------------------------


def _table() -> dict[tuple[str, int], int]:
    data = json.loads(IDS_PATH.read_text())
    return {
        (subject, int(version)): schema_id
        for subject, versions in data.items()
        for version, schema_id in versions.items()
    }


def test_every_schema_file_has_an_id_and_every_id_a_file() -> None:
    table = _table()
    on_disk = {(f.subject, f.version) for f in FILES}
    assert on_disk - set(table) == set(), "schema files without an id in schemas/ids.json"
    assert set(table) - on_disk == set(), "ids for schema files that do not exist"


def test_ids_do_not_collide() -> None:
    ids = list(_table().values())
    assert len(ids) == len(set(ids))
    assert all(isinstance(i, int) and 0 < i < 2**31 for i in ids)


def test_ids_are_append_only() -> None:
    table = _table()
    for key, (schema_id, _) in PUBLISHED.items():
        assert table.get(key) == schema_id, f"id of {key} changed or removed; ids are append-only"
    newest_published = max(schema_id for schema_id, _ in PUBLISHED.values())
    for key, schema_id in table.items():
        if key not in PUBLISHED:
            assert schema_id > newest_published, f"{key} reuses an old id; take the next one"


def test_published_schema_files_are_unchanged() -> None:
    for (subject, version), (_, digest) in PUBLISHED.items():
        path = AVRO_DIR / subject / f"{version}.avsc"
        assert _digest(path) == digest, f"{path} changed: add version {version + 1} instead"


def test_every_file_is_published() -> None:
    assert {(f.subject, f.version) for f in FILES} <= set(PUBLISHED), (
        "pin each new (subject, version) in PUBLISHED with its id and digest"
    )


def test_id_table_loader_rejects_collisions(tmp_path: Path) -> None:
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps({"a.A": {"1": 7}, "b.B": {"1": 7}}))
    with pytest.raises(
        ValueError, match=re.escape("schema id 7 is given to both a.A v1 and b.B v1")
    ):
        SchemaCatalog(AVRO_DIR, ids)


# -- BACKWARD compatibility of the files on disk -------------------------------------------


@pytest.mark.parametrize("schema_file", FILES, ids=_file_id)
def test_each_version_is_backward_compatible_with_the_previous(schema_file: SchemaFile) -> None:
    subject, version = schema_file.subject, schema_file.version
    reader = CATALOG.schema(subject, version)
    # Version 1 has no predecessor; it must at least read what it writes.
    writer = CATALOG.schema(subject, version - 1 if version > 1 else version)
    assert check_backward(reader, writer) == []


# -- the checker itself --------------------------------------------------------------------


def _record(*fields: dict[str, Any], name: str = "R", **extra: Any) -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "t", "fields": list(fields), **extra}


def _f(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


BASE = _record(_f("id", "string"), _f("n", "int"))

INCOMPATIBLE: list[tuple[str, Any, Any, str]] = [
    # (case, reader, writer, expected problem fragment)
    (
        "added field without default",
        _record(_f("id", "string"), _f("n", "int"), _f("x", "long")),
        BASE,
        "R.x: field added without a default",
    ),
    (
        "narrowed long to int",
        _record(_f("id", "string"), _f("n", "int")),
        _record(_f("id", "string"), _f("n", "long")),
        "R.n: writer type long cannot be read as int",
    ),
    (
        "double to float",
        _record(_f("v", "float")),
        _record(_f("v", "double")),
        "R.v: writer type double cannot be read as float",
    ),
    (
        "string to int",
        _record(_f("id", "int"), _f("n", "int")),
        BASE,
        "R.id: writer type string cannot be read as int",
    ),
    (
        "enum symbol removed, no default",
        _record(_f("s", {"type": "enum", "name": "S", "symbols": ["A"]})),
        _record(_f("s", {"type": "enum", "name": "S", "symbols": ["A", "B"]})),
        "R.s: enum t.S lacks writer symbols ['B']",
    ),
    (
        "union branch removed",
        _record(_f("o", ["null", "string"])),
        _record(_f("o", ["null", "string", "int"])),
        "R.o: writer type int matches no branch",
    ),
    (
        "nullable made required",
        _record(_f("o", "string")),
        _record(_f("o", ["null", "string"], default=None)),
        "R.o: writer type null cannot be read as string",
    ),
    (
        "record renamed without alias",
        _record(_f("id", "string"), _f("n", "int"), name="Other"),
        BASE,
        "writer record t.R does not match reader record t.Other",
    ),
    (
        "array items narrowed",
        _record(_f("a", {"type": "array", "items": "int"})),
        _record(_f("a", {"type": "array", "items": "long"})),
        "R.a[]: writer type long cannot be read as int",
    ),
    (
        "map values changed",
        _record(_f("m", {"type": "map", "values": "int"})),
        _record(_f("m", {"type": "map", "values": "string"})),
        "R.m{}: writer type string cannot be read as int",
    ),
    (
        "array to map",
        _record(_f("a", {"type": "map", "values": "int"})),
        _record(_f("a", {"type": "array", "items": "int"})),
        "R.a: writer type array cannot be read as map",
    ),
    (
        "fixed size changed",
        _record(_f("h", {"type": "fixed", "name": "H", "size": 32})),
        _record(_f("h", {"type": "fixed", "name": "H", "size": 16})),
        "R.h: fixed size changed from 16 to 32",
    ),
    (
        "nested record gains required field",
        _record(_f("c", _record(_f("a", "int"), _f("b", "int"), name="C"))),
        _record(_f("c", _record(_f("a", "int"), name="C"))),
        "R.c.b: field added without a default",
    ),
    (
        "union of records loses a branch",
        _record(_f("d", [_record(_f("a", "int"), name="A")])),
        _record(_f("d", [_record(_f("a", "int"), name="A"), _record(_f("b", "int"), name="B")])),
        "R.d: writer type record t.B matches no branch",
    ),
    (
        "record inside a union gains required field",
        _record(_f("d", ["null", _record(_f("a", "int"), _f("z", "int"), name="A")])),
        _record(_f("d", ["null", _record(_f("a", "int"), name="A")])),
        "R.d.z: field added without a default",
    ),
]

COMPATIBLE: list[tuple[str, Any, Any]] = [
    ("identical", BASE, BASE),
    ("field removed", _record(_f("id", "string")), BASE),
    (
        "field added with default",
        _record(_f("id", "string"), _f("n", "int"), _f("x", ["null", "long"], default=None)),
        BASE,
    ),
    ("int to long", _record(_f("id", "string"), _f("n", "long")), BASE),
    ("int to double", _record(_f("id", "string"), _f("n", "double")), BASE),
    ("long to float", _record(_f("v", "float")), _record(_f("v", "long"))),
    ("float to double", _record(_f("v", "double")), _record(_f("v", "float"))),
    ("string to bytes", _record(_f("id", "bytes"), _f("n", "int")), BASE),
    ("bytes to string", BASE, _record(_f("id", "bytes"), _f("n", "int"))),
    (
        "enum symbol added",
        _record(_f("s", {"type": "enum", "name": "S", "symbols": ["A", "B"]})),
        _record(_f("s", {"type": "enum", "name": "S", "symbols": ["A"]})),
    ),
    (
        "enum symbol removed with reader default",
        _record(_f("s", {"type": "enum", "name": "S", "symbols": ["A", "U"], "default": "U"})),
        _record(_f("s", {"type": "enum", "name": "S", "symbols": ["A", "B"]})),
    ),
    ("made nullable", _record(_f("id", ["null", "string"]), _f("n", "int")), BASE),
    (
        "union branch added",
        _record(_f("o", ["null", "string", "int"])),
        _record(_f("o", ["null", "string"])),
    ),
    (
        "union branch promoted",
        _record(_f("o", ["null", "long"])),
        _record(_f("o", ["null", "int"])),
    ),
    (
        "record renamed with alias",
        _record(_f("id", "string"), _f("n", "int"), name="Other", aliases=["R"]),
        BASE,
    ),
    (
        "field renamed with alias",
        _record(_f("id", "string"), _f("count", "int", aliases=["n"])),
        BASE,
    ),
    (
        "namespace changed",
        {**BASE, "namespace": "elsewhere"},
        BASE,
    ),
    (
        "logical type added",
        _record(_f("t", {"type": "long", "logicalType": "timestamp-millis"})),
        _record(_f("t", "long")),
    ),
    (
        "union of records gains a branch",
        _record(_f("d", [_record(_f("a", "int"), name="A"), _record(_f("b", "int"), name="B")])),
        _record(_f("d", [_record(_f("a", "int"), name="A")])),
    ),
    (
        "recursive type",
        _record(
            _f("v", "int"), _f("next", ["null", "t.R"], default=None), _f("w", "long", default=0)
        ),
        _record(_f("v", "int"), _f("next", ["null", "t.R"], default=None)),
    ),
]


@pytest.mark.parametrize(
    ("case", "reader", "writer", "problem"), INCOMPATIBLE, ids=[c[0] for c in INCOMPATIBLE]
)
def test_checker_finds_incompatible_changes(
    case: str, reader: Any, writer: Any, problem: str
) -> None:
    problems = check_backward(reader, writer)
    assert any(problem in p for p in problems), problems
    assert not is_backward_compatible(reader, writer)


@pytest.mark.parametrize(("case", "reader", "writer"), COMPATIBLE, ids=[c[0] for c in COMPATIBLE])
def test_checker_accepts_compatible_changes(case: str, reader: Any, writer: Any) -> None:
    assert check_backward(reader, writer) == []


@pytest.mark.parametrize(
    ("case", "reader", "writer"), COMPATIBLE[:9], ids=[c[0] for c in COMPATIBLE[:9]]
)
def test_compatible_changes_really_decode(case: str, reader: Any, writer: Any) -> None:
    """Cross-check the checker against fastavro's resolution on a concrete record."""
    record = {"id": "x", "n": 7, "v": 1}
    datum = {f["name"]: record[f["name"]] for f in writer["fields"]}
    if any(f["type"] == "bytes" for f in writer["fields"]):
        datum["id"] = b"x"
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(writer), datum)
    buffer.seek(0)
    decoded = fastavro.schemaless_reader(
        buffer, fastavro.parse_schema(writer), fastavro.parse_schema(reader)
    )
    assert isinstance(decoded, dict)
    assert set(decoded) == {f["name"] for f in reader["fields"]}


def test_checker_accepts_fastavro_parsed_schemas_and_reports_every_problem() -> None:
    reader = fastavro.parse_schema(
        _record(_f("id", "int"), _f("n", "int"), _f("x", "long"), _f("y", "long"))
    )
    problems = check_backward(reader, BASE)
    assert len(problems) == 3, problems


def test_checker_rejects_malformed_schemas() -> None:
    with pytest.raises(UnknownType):
        check_backward({"type": "record", "name": "R", "fields": [_f("a", "nope")]}, BASE)
