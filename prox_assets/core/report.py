"""The evaluation report of a target's checkpoints: summary over seeds, the contrasts the
comparison exists for, and the plot. Pure functions over the catalog's ``checkpoint_evals`` rows."""

from __future__ import annotations

import io
from typing import NamedTuple

import polars as pl

from prox_assets.core.variants import VARIANTS

# metric -> True when higher is better
METRICS = {
    "heldout_loss": False,
    "accuracy": True,
    "acc_per_char": True,
    "exact_match": True,
    "f1": True,
    "prose_perplexity": False,
}


def summarize(evals: pl.DataFrame) -> pl.DataFrame:
    """variant, metric, mean, std (over seeds; 0 with one seed), seeds."""
    return (
        evals.group_by("variant", "metric")
        .agg(
            mean=pl.col("value").mean(),
            std=pl.col("value").std(ddof=1).fill_null(0.0),
            seeds=pl.len(),
        )
        .sort("variant", "metric")
    )


class Contrast(NamedTuple):
    contrast: str  # "a − b"
    metric: str
    difference: float  # mean of a minus mean of b
    better: str  # "yes" when a beats b on this metric


def comparisons(summary: pl.DataFrame) -> list[Contrast]:
    """The contrasts the report exists for."""
    values = {(r["variant"], r["metric"]): r["mean"] for r in summary.iter_rows(named=True)}
    out = []
    for a, b in (
        ("influence", "random"),
        ("influence", "embedding"),
        ("influence", "full"),
        ("refined", "raw"),
        ("refined", "rule_filtered"),
        ("rule_filtered", "raw"),
    ):
        for metric, higher in METRICS.items():
            if (a, metric) in values and (b, metric) in values:
                diff = values[(a, metric)] - values[(b, metric)]
                out.append(
                    Contrast(
                        f"{a} − {b}",
                        metric,
                        round(diff, 4),
                        "yes" if (diff > 0) == higher and diff else "no",
                    )
                )
    return out


def plot_report(summary: pl.DataFrame, evals: pl.DataFrame, title: str) -> bytes:
    """One panel per metric: mean over seeds (bar), spread (error bar), each seed (dot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if m in set(summary["metric"])]
    variants = [v for v in VARIANTS if v in set(summary["variant"])]
    ncols = min(2, len(metrics))  # two panels a row: fits the UI's metadata dialog
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        rows = {
            r["variant"]: r
            for r in summary.filter(pl.col("metric") == metric).iter_rows(named=True)
        }
        xs = [v for v in variants if v in rows]
        ax.bar(
            range(len(xs)),
            [rows[v]["mean"] for v in xs],
            yerr=[rows[v]["std"] for v in xs],
            color=[
                "#999999"
                if v == "base"
                else "#4477aa"
                if v in ("influence", "refined")
                else "#bbccee"
                for v in xs
            ],
            capsize=3,
        )
        for i, v in enumerate(xs):
            seeds = evals.filter((pl.col("metric") == metric) & (pl.col("variant") == v))[
                "value"
            ].to_list()
            ax.scatter([i] * len(seeds), seeds, color="black", s=8, zorder=3)
        low = min(
            min(rows[v]["mean"] - rows[v]["std"] for v in xs),
            0 if METRICS[metric] else float("inf"),
        )
        high = max(rows[v]["mean"] + rows[v]["std"] for v in xs)
        if not METRICS[metric]:  # losses and perplexities: zoom on the differences
            pad = (high - low) * 0.5 or 0.01
            ax.set_ylim(low - pad, high + pad)
        ax.set_xticks(range(len(xs)), xs, rotation=40, ha="right", fontsize=8)
        ax.set_title(f"{metric} ({'higher' if METRICS[metric] else 'lower'} is better)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()
