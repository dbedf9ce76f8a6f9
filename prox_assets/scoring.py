"""Stage 2, seed scoring: ``raw_corpus[shard]`` -> ``seed_scores[shard]``.

A seeded sample of each shard is scored 0-5 with two rubrics (educational value; format and
extraction quality) by the engine's model; the scores decide the document-level SFT labels.
"""

import time
from collections import Counter

import dagster as dg
import polars as pl

from prox_assets.core.prompts import SCORE_PROMPT_VERSION
from prox_assets.core.scoring import prox_keep, score_documents, seed_sample
from prox_assets.ingest import raw_corpus, raw_key
from prox_assets.layout import scores_key
from prox_assets.metadata import md_table, with_lineage
from prox_assets.partition_runs import MODEL_BACKFILL_POLICY, materialize_each
from prox_assets.partitions import shard_partitions
from prox_resources.catalog import Catalog
from prox_resources.device import GPU_STEP, DeviceSettings
from prox_resources.engine import ModelEngine
from prox_resources.store import ObjectStore


class SeedScoresConfig(dg.Config):
    seeds_per_shard: int = 6  # the CPU demo budget; ProX scores ~50K documents
    seed: int = 0
    max_doc_tokens: int = 256  # the scorer sees the start of each document
    with_critique: bool = False  # write a short critique first (costly on a CPU; ProX's setting)
    critique_tokens: int = 96


def _score_table(frame: pl.DataFrame) -> dg.MetadataValue:
    rows = []
    for value in range(6):
        rows.append(
            (
                value,
                int((frame["edu_score"] == value).sum()),
                int((frame["format_score"] == value).sum()),
            )
        )
    return md_table(["score", "educational value", "format quality"], rows)


@dg.asset(
    partitions_def=shard_partitions,
    deps=[raw_corpus],
    group_name="scoring",
    kinds={"pytorch", "parquet"},
    owners=["team:data-platform"],
    **GPU_STEP,
    backfill_policy=MODEL_BACKFILL_POLICY,
    code_version=SCORE_PROMPT_VERSION,
    description=(
        "A seeded sample of the shard's documents scored 0-5 with two rubrics (educational value, "
        "format/extraction quality): the parsed score line and the expected score from the "
        "model's next-token probabilities over 0..5. Decides the document-level SFT labels."
    ),
)
def seed_scores(
    context: dg.AssetExecutionContext,
    config: SeedScoresConfig,
    store: ObjectStore,
    catalog: Catalog,
    engine: ModelEngine,
    device: DeviceSettings,
) -> dg.MaterializeResult:
    # A run may hold many shards (a backfill range, MODEL_BACKFILL_POLICY): one model load for all.
    backend = engine.load(device, log=context.log.info)
    return materialize_each(
        context, lambda shard: score_shard(context, config, store, catalog, backend, shard)
    )


def score_shard(
    context: dg.AssetExecutionContext,
    config: SeedScoresConfig,
    store: ObjectStore,
    catalog: Catalog,
    backend,
    shard: str,
) -> dict:
    """One partition of seed_scores: its file, its catalog rows; returns its metadata."""
    raw = store.read_parquet(raw_key(catalog, shard)).select("doc_id", "text")
    chosen = set(seed_sample(raw["doc_id"].to_list(), config.seeds_per_shard, config.seed))
    seeds = raw.filter(pl.col("doc_id").is_in(chosen)).sort("doc_id")
    shown = [backend.truncate(t, config.max_doc_tokens) for t in seeds["text"]]
    context.log.info(
        f"{shard}: scoring {seeds.height} seed documents with {backend.model_id} ({backend.name})"
    )

    started = time.monotonic()
    usage_before = Counter(getattr(backend, "usage", {}))
    results = {}
    for rubric in ("edu", "format"):

        def progress(done, total, rubric=rubric):
            context.log.info(f"{rubric} rubric: {done}/{total} documents")

        results[rubric] = score_documents(
            backend, shown, rubric, config.with_critique, config.critique_tokens, progress=progress
        )
    took = time.monotonic() - started
    usage = Counter(getattr(backend, "usage", {}))
    usage.subtract(usage_before)

    rows = []
    for i, doc_id in enumerate(seeds["doc_id"]):
        edu, fmt = results["edu"][i], results["format"][i]
        rows.append(
            {
                "doc_id": doc_id,
                "shard": shard,
                "edu_score": edu.score,
                "edu_expected": edu.expected,
                "edu_probs": list(edu.probs),
                "edu_mass": edu.mass,
                "edu_method": edu.method,
                "edu_critique": edu.critique,
                "format_score": fmt.score,
                "format_expected": fmt.expected,
                "format_probs": list(fmt.probs),
                "format_mass": fmt.mass,
                "format_method": fmt.method,
                "format_critique": fmt.critique,
                "keep": prox_keep(edu.score, fmt.score),
                "model": backend.model_id,
                "backend": backend.name,
                "prompt_version": SCORE_PROMPT_VERSION,
            }
        )
    frame = pl.DataFrame(
        rows, schema_overrides={"edu_critique": pl.String, "format_critique": pl.String}
    )
    uri = store.write_parquet(scores_key(shard), frame)
    catalog.replace_rows(
        "seed_scores",
        {"shard": shard},
        with_lineage(
            frame.drop("edu_probs", "format_probs", "edu_mass", "format_mass"),
            context,
            partition_key=shard,
        ),
    )
    methods = Counter(frame["edu_method"].to_list() + frame["format_method"].to_list())
    return {
        "dagster/row_count": frame.height,
        "path": dg.MetadataValue.path(uri),
        "model": backend.model_id,
        "backend": backend.name,
        "prompt_version": SCORE_PROMPT_VERSION,
        "score_histogram": _score_table(frame),
        "mean_edu_expected": round(float(frame["edu_expected"].mean()), 3),
        "mean_format_expected": round(float(frame["format_expected"].mean()), 3),
        "mean_digit_probability_mass": round(
            float((frame["edu_mass"].mean() + frame["format_mass"].mean()) / 2), 3
        ),
        "score_methods": dict(methods),
        "keep_ratio": round(float(frame["keep"].mean()), 3),
        "documents_per_second": round(frame.height / took, 3),
        # The rubric head shared by a batch's prompts runs once (the engine's prefix cache).
        "prompt_tokens": usage["prompt_tokens"],
        "prompt_tokens_reused_from_prefix_cache": usage["prefix_tokens_reused"],
    }
