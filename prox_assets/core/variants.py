"""What each checkpoint variant trains on, given the documents it may choose from
(docs/methods.md#the-evidence-checkpoint-variants).

Selection variants choose from the pool a target's selection was made from: the ``influence``
subset itself (its weights repeat documents), a seeded ``random`` subset of the same size, the
``embedding`` subset of the same size (closest to the target examples), the ``full`` pool.
Refinement variants take the documents one refiner version processed: ``raw`` text, ``refined``
text (kept documents only), or raw text that passes the rule-based filters (``rule_filtered``).
``base`` trains on nothing: the untrained model is the reference row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import polars as pl

from prox_assets.core.quality_filters import rule_filter
from prox_assets.core.scoring import seed_sample

VARIANTS = ["base", "influence", "random", "embedding", "full", "raw", "refined", "rule_filtered"]
SELECTION_VARIANTS = ("influence", "random", "embedding", "full")
REFINEMENT_VARIANTS = ("raw", "refined", "rule_filtered")


@dataclass(frozen=True)
class ChosenDocuments:
    """doc_id, text, weight a variant trains on; raw or refined text; notes for the metadata."""

    docs: pl.DataFrame
    text_kind: str
    notes: dict = field(default_factory=dict)


def selection_documents(
    variant: str,
    pool: pl.DataFrame,
    chosen: pl.DataFrame,
    seed: int,
    text_kind: str,
    embedding_scores: Callable[[pl.DataFrame], list[float]] | None = None,
) -> ChosenDocuments:
    """``pool``: doc_id, text; ``chosen``: the selection's doc_id, weight."""
    notes: dict = {}
    k = chosen.height
    if variant == "influence":
        docs = pool.join(chosen, on="doc_id")
    elif variant == "random":
        ids = set(seed_sample(pool["doc_id"].to_list(), k, seed))
        docs = pool.filter(pl.col("doc_id").is_in(ids)).with_columns(weight=pl.lit(1.0))
    elif variant == "embedding":
        if embedding_scores is None:
            raise ValueError("the embedding variant needs embedding_scores")
        scores = embedding_scores(pool)
        order = sorted(range(pool.height), key=lambda i: -scores[i])[:k]
        docs = pool[sorted(order)].with_columns(weight=pl.lit(1.0))
        notes["embedding_similarity_mean"] = round(sum(scores[i] for i in order) / max(1, k), 4)
    elif variant == "full":
        docs = pool.with_columns(weight=pl.lit(1.0))
    else:
        raise ValueError(
            f"{variant!r} is not a selection variant ({', '.join(SELECTION_VARIANTS)})"
        )
    return ChosenDocuments(docs.select("doc_id", "text", "weight"), text_kind, notes)


def refinement_documents(variant: str, frame: pl.DataFrame) -> ChosenDocuments:
    """``frame``: doc_id, text (refined), raw_text, kept: every document a refiner version processed."""
    notes: dict = {"documents_refined": frame.height}
    if variant == "refined":
        docs = frame.filter(pl.col("kept")).select("doc_id", "text")
        notes["kept_by_refiner"] = docs.height
    elif variant in ("raw", "rule_filtered"):
        docs = frame.select("doc_id", pl.col("raw_text").alias("text"))
        if variant == "rule_filtered":
            reasons = rule_filter(docs["text"].to_list())
            dropped = pl.Series([r for r in reasons if r])
            notes["dropped_by_rules"] = (
                dropped.value_counts(sort=True).rows() if len(dropped) else []
            )
            docs = docs.filter(pl.Series([r is None for r in reasons]))
            notes["kept_by_rules"] = docs.height
    else:
        raise ValueError(
            f"{variant!r} is not a refinement variant ({', '.join(REFINEMENT_VARIANTS)})"
        )
    return ChosenDocuments(
        docs.with_columns(weight=pl.lit(1.0)), "refined" if variant == "refined" else "raw", notes
    )
