"""The goals table every bench ends with: one row per goal, its ratio measured in the
same run, and a verdict.

Goals are ratios of two things measured in one run (or latencies under a load sized by
the same run), never absolute numbers compared across days: the machines are noisy and
differ 2x from one day to the next.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["Goal", "ratio_text", "render_goals", "verdict"]


@dataclass(frozen=True)
class Goal:
    """One row of the goals table.

    :param measured: what this run measured, as the report shows it ("-" if nothing).
    :param met: ``None`` when the run did not measure it (skipped, or a part failed).
    """

    measure: str
    measured: str
    goal: str
    met: bool | None

    def as_json(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "measured": self.measured,
            "goal": self.goal,
            "met": self.met,
        }


def verdict(met: bool | None) -> str:
    if met is None:
        return "not measured"
    return "met" if met else "NOT met"


def ratio_text(value: float, suffix: str = "") -> str:
    return "-" if math.isnan(value) else f"{value:.2f}{suffix}"


def render_goals(goals: list[Goal]) -> list[str]:
    """The table, its columns as wide as their widest cell."""
    header = ("measure", "measured", "goal", "verdict")
    rows = [(g.measure, g.measured, g.goal, verdict(g.met)) for g in goals]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    rule = "-+-".join("-" * width for width in widths)
    return ["", "goals:", line(header).rstrip(), rule, *(line(row).rstrip() for row in rows)]
