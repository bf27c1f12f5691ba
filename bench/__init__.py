"""On-demand benchmarks, never run in CI: ``python -m bench.ingress``, ``bench.pipeline``,
``bench.dedupe_memory`` and ``bench.orders`` (README, "Benchmarks"). They share one load
driver (``_load``), one report module (``_report``), the services they run on
(``_services``) and inputs built from the tests' payloads (``_inputs``)."""
