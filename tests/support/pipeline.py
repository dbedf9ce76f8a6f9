"""The pipeline on a test instance: materialize an asset in-process, ingest a shard, train the tiny
refiners and refine a shard through the assets, and the noisy documents the asset tests feed it."""

import json

import dagster as dg

from prox_assets.definitions import ASSETS, build_resources
from prox_assets.partitions import shard_partitions


def materialize(
    instance: dg.DagsterInstance,
    asset: str,
    partition_key: str | dg.MultiPartitionKey | None = None,
    config: dict | None = None,
    *,
    resources: dict | None = None,
    **kwargs,
) -> dg.ExecuteInProcessResult:
    """One run of ``asset`` (of the code location's ``ASSETS``) on ``instance``, in this process,
    with the code location's resources (``resources`` replaces some of them) and ``config`` as the
    asset's run config. ``kwargs``: ``raise_on_error``, ``tags``."""
    return dg.materialize(
        ASSETS,
        selection=[asset],
        partition_key=partition_key,
        instance=instance,
        resources={**build_resources(), **(resources or {})},
        run_config={"ops": {asset: {"config": config}}} if config is not None else None,
        **kwargs,
    )


def ingest_shard(instance: dg.DagsterInstance, shard: str, raise_on_error: bool = False):
    """Register ``shard`` as a partition and materialize its raw_corpus (a failure is returned)."""
    instance.add_dynamic_partitions(shard_partitions.name, [shard])
    return materialize(instance, "raw_corpus", shard, raise_on_error=raise_on_error)


NAV = [
    "Home | Products | Blog | Contact",
    "Share on Facebook | Tweet",
    "© 2026 Example Ltd. All rights reserved.",
]


def noisy_docs(n: int, noisy: bool) -> bytes:
    """``n`` JSONL documents of six paragraphs, wrapped in navigation and a footer if ``noisy``."""
    rows = []
    for i in range(n):
        body = [
            f"Paragraph {i}.{j}: the experiment measured how quickly water cools in a metal cup "
            f"compared with a ceramic one, and explained why."
            for j in range(6)
        ]
        rows.append(
            {"text": "\n".join((NAV[:2] if noisy else []) + body + (NAV[2:] if noisy else []))}
        )
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# --- refiners and refinement on tiny models --------------------------------------------------------
REFINER = {
    "max_steps": 2,
    "batch_size": 2,
    "eval_examples": 2,
    "max_new_tokens": 8,
    "quality_pages": 0,
    "quality_clean": 0,
    "max_seq_len": 512,
}
REFINE = {"batch_docs": 4, "doc_max_new_tokens": 6, "chunk_max_new_tokens": 16}


def train_refiners(instance: dg.DagsterInstance, model: str, **overrides) -> str:
    """Seed scores of the ``pipeline`` fixture's two shards, both SFT sets and both refiners
    (``REFINER`` with ``overrides``); returns the refiner version (the pair's partition key)."""
    for shard in ("web-00", "clean-00"):
        materialize(instance, "seed_scores", shard, {"seeds_per_shard": 6, "max_doc_tokens": 48})
    sft = {
        "refiner_base_model": model,
        "doc_max_tokens": 48,
        "window_tokens": 96,
        "chunk_docs_per_shard": 4,
    }
    for level in ("doc", "chunk"):
        materialize(instance, "sft_programs", level, sft)
    cfg = {**REFINER, "base_model": model, **overrides}
    materialize(instance, "refiner", "doc", cfg)
    return (
        materialize(instance, "refiner", "chunk", cfg)
        .asset_materializations_for_node("refiner")[0]
        .metadata["refiner_pair"]
        .value
    )


def refine(instance: dg.DagsterInstance, version: str, shard: str, **config):
    """refined_corpus[shard x version] with ``REFINE`` and ``config`` (a failure is returned)."""
    key = dg.MultiPartitionKey({"shard": shard, "refiner_version": version})
    return materialize(instance, "refined_corpus", key, {**REFINE, **config}, raise_on_error=False)
