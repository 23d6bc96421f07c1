"""The summary table: one row per metric, a column per server (median and spread over rounds), and the ratio."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Metric:
    """One measured quantity, with one value per round for each server label."""

    name: str
    unit: str
    higher_is_better: bool | None  # None: a fact, not a score (no ratio is shown)
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, label: str, value: float) -> None:
        self.values.setdefault(label, []).append(value)

    def median(self, label: str) -> float:
        found = self.values.get(label)
        return statistics.median(found) if found else math.nan


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def _cell(metric: Metric, label: str) -> str:
    found = metric.values.get(label)
    if not found:
        return "-"
    text = _fmt(metric.median(label))
    if len(found) > 1:
        text += f" ({_fmt(min(found))}-{_fmt(max(found))})"
    return text


def _ratio(metric: Metric, labels: Sequence[str]) -> str:
    if len(labels) != 2 or metric.higher_is_better is None:
        return ""
    mine, base = (metric.median(label) for label in labels)
    if math.isnan(mine) or math.isnan(base) or base == 0:
        return "-"
    ratio = mine / base
    if abs(ratio - 1) < 0.02:
        return f"{ratio:.2f}x same"
    better = (ratio > 1) == metric.higher_is_better
    return f"{ratio:.2f}x {'better' if better else 'worse'}"


def table(metrics: Sequence[Metric], labels: Sequence[str]) -> str:
    """A Markdown table: metric, unit, one column per label (median (min-max)), and labels[0]/labels[1]."""
    head = ["metric", "unit", *(f"{label} median (min-max)" for label in labels)]
    if len(labels) == 2:
        head.append(f"{labels[0]}/{labels[1]}")
    rows = [head]
    for metric in metrics:
        if any(metric.values.get(label) for label in labels):
            row = [metric.name, metric.unit, *(_cell(metric, label) for label in labels)]
            if len(labels) == 2:
                row.append(_ratio(metric, labels))
            rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |" for row in rows]
    lines.insert(1, "| " + " | ".join("-" * width for width in widths) + " |")
    return "\n".join(lines)
