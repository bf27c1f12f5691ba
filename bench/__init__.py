"""On-demand benchmarks; never run in CI.

``python -m bench.ingress`` (or ``make bench-ingress``): the ingress against a no-op route
on the same aiohttp server, at rising concurrency, then paced at half the peak rate.

``python -m bench.pipeline``: webhooks end to end to Postgres rows, and the normalise
agent against a bare confluent-kafka loop and Quix Streams.

``python -m bench.orders`` (or ``make bench-orders``): orders and their payments end to
end to PAID rows, against the payments rows of the same webhooks.
"""
