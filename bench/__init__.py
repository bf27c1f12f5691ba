"""On-demand benchmarks; never run in CI.

``python -m bench.ingress`` (or ``make bench-ingress``): the ingress against a no-op route
on the same aiohttp server, at rising concurrency, then paced at half the peak rate.

``python -m bench.pipeline``: webhooks end to end to Postgres rows, and the normalise
agent against a bare confluent-kafka loop and Quix Streams.

``python -m bench.dedupe_memory``: the worker's RSS against the dedupe ids it remembers.

``python -m bench.orders`` (or ``make bench-orders``): orders and their payments end to
end to PAID rows, against the payments rows of the same webhooks.

What they share: ``_load`` (the one load driver and CPU meter), ``_report`` (the one
``Phase`` record, goals table and machine), ``_services`` (Kafka, PostgreSQL and the real
``sluice`` processes), ``_inputs`` (requests built from ``tests.payloads``).
"""
