"""What every bench report shares: number formats, the noise warning, JSON clean-up,
the work directory and the SIGTERM handling of ``main``."""

from __future__ import annotations

import contextlib
import math
import signal
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bench._pipeline_input import Distribution

__all__ = [
    "NOISE_PERCENT",
    "cpu_line",
    "dist_line",
    "ms",
    "no_nan",
    "noise_warning",
    "num",
    "temp_workdir",
    "unwind_on_sigterm",
]

#: CPU (% of one core) used outside the bench's processes that makes a run suspect.
NOISE_PERCENT = 25.0


def no_nan(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by ``None`` (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: no_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [no_nan(item) for item in value]
    return value


def ms(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def num(value: float, digits: int = 0) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def cpu_line(percent: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.0f}%" for name, value in percent.items())


def dist_line(distribution: Distribution) -> str:
    return (
        f"p50 {ms(distribution.p50_ms)}, p99 {ms(distribution.p99_ms)}, "
        f"max {ms(distribution.max_ms)}"
    )


def noise_warning(noisy: Sequence[str]) -> list[str]:
    """The line warning that ``noisy`` runs shared the machine, if any did."""
    if not noisy:
        return []
    return [
        f"warning: {', '.join(noisy)} shared the machine with other work (>= "
        f"{NOISE_PERCENT:g}% of a core outside the bench's processes); rerun on a quiet "
        "machine before quoting the numbers"
    ]


@contextlib.contextmanager
def temp_workdir(given: Path | None, prefix: str) -> Iterator[Path]:
    """``given`` (kept afterwards, with every log), or a temporary directory."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        if any(given.iterdir()):
            raise SystemExit(f"--workdir {given} is not empty")
        yield given
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def unwind_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C, so every child process and embedded server is
    stopped by the ``finally`` blocks on the way out."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt
