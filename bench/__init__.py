"""On-demand benchmarks; never run in CI.

``python -m bench.ingress`` (or ``make bench-ingress``): the ingress against a no-op route
on the same aiohttp server, at rising concurrency, then paced at half the peak rate.
"""
