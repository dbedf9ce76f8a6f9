"""Materialization metadata that reads well in the Dagster UI: tables, histograms, previews."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence

import dagster as dg
import polars as pl


def lineage(context: dg.AssetExecutionContext, partition_key=None) -> dict[str, str]:
    """The run and partition that wrote a catalog row: every row carries them. ``partition_key``:
    the partition being written, in a run of several (``context.partition_key`` is the run's one)."""
    key = context.partition_key if partition_key is None else partition_key
    return {"run_id": context.run.run_id, "partition_key": str(key)}


def with_lineage(
    frame: pl.DataFrame, context: dg.AssetExecutionContext, *, partition_key=None, **columns
) -> pl.DataFrame:
    """``frame`` plus constant ``columns`` and the lineage columns."""
    return frame.with_columns(
        **{k: pl.lit(v) for k, v in {**columns, **lineage(context, partition_key)}.items()}
    )


def _cell(value: object, width: int = 80) -> str:
    text = str(value).replace("\n", " ⏎ ").replace("|", "\\|")
    return text if len(text) <= width else text[: width - 1] + "…"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> dg.MetadataValue:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def counts_table(counter: Counter, key_name: str) -> dg.MetadataValue:
    return md_table([key_name, "count"], counter.most_common())


def histogram(
    values: Sequence[float], bins: int = 12, log: bool = True, unit: str = ""
) -> dg.MetadataValue:
    """A text histogram (log-spaced bins by default) that renders anywhere Markdown does."""
    values = [v for v in values if v is not None]
    if not values:
        return dg.MetadataValue.md("_no values_")
    lo, hi = min(values), max(values)
    if log and lo > 0:
        edges = [
            math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * i / bins)
            for i in range(bins + 1)
        ]
    else:
        edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    counts = [0] * bins
    for v in values:
        i = bins - 1
        for j in range(bins):
            if v <= edges[j + 1]:
                i = j
                break
        counts[i] += 1
    peak = max(counts) or 1
    rows = []
    for j, c in enumerate(counts):
        bar = "█" * max(1 if c else 0, round(24 * c / peak))
        rows.append((f"{edges[j]:,.0f}–{edges[j + 1]:,.0f}{unit}", c, bar))
    return md_table(["range", "count", ""], rows)
