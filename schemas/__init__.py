"""The wire contract: Avro schemas, the topic catalog and the codec.

- ``schemas/avro/<subject>/<version>.avsc``: the record types, one directory per subject
  (named after the record's full Avro name), versions counting up from 1.
- ``schemas/ids.json``: the checked-in, append-only schema id table (subject → version →
  id) used when no schema registry is configured.
- :mod:`schemas.catalog`: every topic (name, subject, key, partitions, retention,
  compaction) and the loader of the schema files and ids.
- :mod:`schemas.codec`: the only code that turns records into Confluent-framed Avro bytes
  and back, backed by the id table or a Confluent-compatible registry.
- :mod:`schemas.compat`: the BACKWARD compatibility check every new version must pass
  (Apache Avro's reader/writer checker, with readable problems).
- :mod:`schemas.validation`: strict record validation before encoding (fastavro's).
- :mod:`schemas.statuses` and :mod:`schemas.upserts`: the Postgres projections' status
  vocabularies with their rank tables, and the typed upserts the domain plans and
  ``connectors.postgres`` writes (the contract between the two).

Nothing is re-exported here, so importing the catalog does not import the registry client.
"""

__all__: list[str] = []
