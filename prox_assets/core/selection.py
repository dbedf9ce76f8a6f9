"""The training subset of a target, chosen from its pool's influence scores as a table
(``core/influence.py`` chooses the rows; docs/methods.md#influence-distillation)."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl
import torch

from prox_assets.core.influence import select_subset


@dataclass(frozen=True)
class ChosenSubset:
    """The rows chosen from a pool: ``frame`` holds doc_id, weight, rank, budget and score (the
    mean influence estimate), in rank order."""

    frame: pl.DataFrame
    budget: int
    pool_size: int
    pool_score_mean: float  # the mean estimate over the whole pool

    @property
    def members(self) -> list[tuple]:
        """(doc_id, weight) of every chosen row: what a checkpoint trains on."""
        return self.frame.select("doc_id", "weight").rows()

    @property
    def selected_score_mean(self) -> float:
        return float(self.frame["score"].mean())  # type: ignore[arg-type]

    def top(self, n: int = 8) -> list[tuple]:
        """(rank, doc_id, weight, score) of the first ``n`` rows, rounded for reading."""
        rows = self.frame.head(n).select("rank", "doc_id", "weight", "score").iter_rows()
        return [(r, d, round(w, 3), round(s, 6)) for r, d, w, s in rows]


def choose_subset(
    scores: pl.DataFrame, method: str, budget: int = 0, budget_fraction: float = 0.25, seed: int = 0
) -> ChosenSubset:
    """``budget`` rows (or ``budget_fraction`` of the pool) of ``scores`` (doc_id, score,
    scores_per_example: a pool's influence scores) by ``method`` (``select_subset``)."""
    picked = select_subset(
        torch.tensor(scores["score"].to_list()),
        torch.tensor(scores["scores_per_example"].to_list()),
        method,
        budget,
        budget_fraction,
        seed,
    )
    frame = pl.DataFrame(
        {
            "doc_id": [scores["doc_id"][i] for i in picked.chosen],
            "weight": picked.weights,
            "rank": list(range(1, len(picked.chosen) + 1)),
            "budget": [picked.budget] * len(picked.chosen),
            "score": [float(picked.mean[i]) for i in picked.chosen],
        }
    )
    return ChosenSubset(frame, picked.budget, picked.pool_size, float(picked.mean.mean()))
