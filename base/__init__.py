"""Sluice's lowest layer: errors, the clock, settings, logging and metrics.

Every other package may import ``base``; ``base`` imports none of them (only the
standard library and third-party libraries), so it can never take part in a cycle.
"""
