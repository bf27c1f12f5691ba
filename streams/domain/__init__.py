"""The pure domain core of the streams layer (STYLE: pure core, thin glue).

Synchronous functions over plain mappings and frozen dataclasses: they return decisions
(records to emit, table values to write) and never carry them out. Nothing here imports
faust, aiohttp, a Kafka client or a database driver, so every rule is unit-tested in
microseconds. Modules:

- ``normalise``: provider webhook → ``billing.*`` records (with ``stripe_mapping`` and
  ``razorpay_mapping``, one per provider).
- ``dedupe``: process-or-drop decisions by provider event id.
- ``ids``: deterministic ids of derived events.
- ``projection``: decoded events → the Postgres projections' typed upserts
  (``schemas/upserts.py``), with ``status`` (the never-regress rules) and
  ``projection_input`` (reading a record field by field).
"""

__all__: list[str] = []
