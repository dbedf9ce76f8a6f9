"""Stage 6, data selection: a pool x a target -> ``landmark_influence[target]`` -> ``selected_subset[target]``.

The pool is the refined corpus of one refiner version (``refined_pool[<version>]``; default: the
newest, the partition the dependency maps to; kept documents only) or the raw corpus. Influence is
computed exactly on landmark samples and propagated to the pool through JVP embeddings
(``core/influence.py``); the subset is chosen from the estimates. The method as implemented:
docs/methods.md#influence-distillation.
"""

import copy
import hashlib
import json
import time
from typing import Literal

import dagster as dg
import polars as pl

from prox_assets.core.influence import (
    AdamState,
    InfluenceConfig,
    compute_influence,
    flops_ratio,
    warm_up_on_pool,
)
from prox_assets.core.precision import uses_bf16
from prox_assets.core.scoring import seed_sample
from prox_assets.core.selection import choose_subset
from prox_assets.ingest import raw_corpus
from prox_assets.layout import (
    influence_landmarks_key,
    influence_scores_key,
    raw_paths,
    selection_key,
    target_key,
)
from prox_assets.lineage import Recorded, consumed_refiner_version, content_version, recorded
from prox_assets.metadata import histogram, md_table, with_lineage
from prox_assets.partition_runs import MODEL_BACKFILL_POLICY, PartitionOutcome, materialize_each
from prox_assets.partitions import target_partitions
from prox_assets.refinement import read_refined_pool, refined_pool
from prox_assets.targets import target_set
from prox_resources.catalog import Catalog
from prox_resources.device import CPU_STEP, GPU_STEP, DeviceSettings
from prox_resources.engine import ModelEngine
from prox_resources.store import ObjectStore


class InfluenceAssetConfig(dg.Config):
    pool: Literal["refined", "raw"] = "refined"
    refiner_version: str = ""  # refined pool: "" = the newest refiner version
    pool_size: int = 0  # 0 = the whole pool; otherwise a seeded sample
    model: str = ""  # the selection model; "" = the engine's base model (PROX_BASE_MODEL)
    param_filter: str = "mlp.down_proj"
    jvp_blocks: int = 4
    jvp_directions: int = 2
    jvp_pooling: Literal["mean", "last"] = "mean"
    landmarks: int = 32  # 0 = every sample: the exact method
    landmark_method: Literal["uniform", "kmeans++"] = "uniform"
    ridge: float = 0.01
    centre: bool = True
    max_len: int = 128
    batch_size: int = 8
    warmup_steps: int = 16
    warmup_lr: float = 1e-5
    exact_holdout: int = 16
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 autocast where bf16 is fast
    seed: int = 0

    def influence(self) -> InfluenceConfig:
        fields = InfluenceConfig.__dataclass_fields__
        return InfluenceConfig(**{k: v for k, v in self.model_dump().items() if k in fields})


def pool_frame(store: ObjectStore, catalog: Catalog, spec: str) -> pl.DataFrame:
    """doc_id, text of a pool: ``raw`` (every raw shard) or ``refined:<version>`` (the kept
    documents of the shard files ``refined_pool[<version>]`` recorded, refined text)."""
    if spec.startswith("refined:"):
        pool = read_refined_pool(store, spec.split(":", 1)[1])
        frame = pl.concat(
            [
                store.read_parquet(k).filter(pl.col("kept")).select("doc_id", "text")
                for k in pool.shards.values()
            ]
        )
    else:
        frame = pl.concat(
            [store.read_parquet(k).select("doc_id", "text") for k in raw_paths(catalog).values()]
        )
    return frame.unique("doc_id", keep="first").sort("doc_id")


def load_pool(
    store: ObjectStore, catalog: Catalog, config: InfluenceAssetConfig, refiner_version: str | None
) -> tuple[pl.DataFrame, str]:
    """The pool and its spec; ``refiner_version``: the version this step consumes (its config's,
    else the refined_pool partition its dependency maps to)."""
    if config.pool == "refined":
        if not refiner_version:
            raise dg.Failure(
                "no refined corpus yet: materialize refined_corpus and refined_pool, or set pool: raw"
            )
        spec = f"refined:{refiner_version}"
    else:
        spec = "raw"
    frame = pool_frame(store, catalog, spec)
    if frame.height < 2:
        raise dg.Failure(
            f"the {spec} pool holds {frame.height} document(s): refine more shards or set pool: raw"
        )
    if config.pool_size and config.pool_size < frame.height:
        chosen = set(seed_sample(frame["doc_id"].to_list(), config.pool_size, config.seed))
        frame = frame.filter(pl.col("doc_id").is_in(chosen))
    return frame, spec


def pool_refiner_version(spec: str) -> str | None:
    return spec.split(":", 1)[1] if spec.startswith("refined:") else None


@dg.asset(
    partitions_def=target_partitions,
    # the refined pool it reads: the newest refiner version's (one partition, so a backfill of a new
    # version marks every target stale); a config refiner_version names another, recorded as metadata
    deps=[
        target_set,  # the target's examples (same partition)
        dg.AssetDep(refined_pool, partition_mapping=dg.LastPartitionMapping()),
        dg.AssetDep(raw_corpus, partition_mapping=dg.AllPartitionMapping()),
    ],
    group_name="selection",
    kinds={"pytorch", "parquet"},
    owners=["team:data-platform"],
    **GPU_STEP,
    backfill_policy=MODEL_BACKFILL_POLICY,
    code_version="influence-v2",
    description=(
        "Influence of every pool document on the target's examples (Influence Distillation): "
        "after a short AdamW warm-up, exact cosines between Adam-preconditioned pool gradients "
        "and target gradients (full MLP down-projections, no projection) on landmark samples, "
        "propagated to the pool by kernel ridge regression on JVP embeddings. doc_id, estimated "
        "score (mean and per target example), landmark flag, exact score where computed."
    ),
)
def landmark_influence(
    context: dg.AssetExecutionContext,
    config: InfluenceAssetConfig,
    store: ObjectStore,
    catalog: Catalog,
    engine: ModelEngine,
    device: DeviceSettings,
) -> dg.MaterializeResult:
    # A run may hold many targets (MODEL_BACKFILL_POLICY): the pool and the model are read and
    # the model warmed up on the pool once (it does not depend on the target); each target works
    # on its own copy of the warmed-up model.
    # The model by name in the influence version: the config's, else the engine's base model.
    config = config.model_copy(update={"model": engine.base_or(config.model)})
    pool, spec = load_pool(
        store, catalog, config, consumed_refiner_version(context, config.refiner_version)
    )
    dev = device.resolve_device()
    started = time.monotonic()
    model, tokenizer = engine.load_model(device, config.model)  # on the device resource's device
    context.log.info(
        f"loaded model {config.model} (device {dev}) in {time.monotonic() - started:.1f}s"
    )
    several = len(context.partition_keys) > 1
    warmed = (
        warm_up_on_pool(
            model, tokenizer, pool["text"].to_list(), config.influence(), context.log.info
        )
        if several
        else None
    )
    return materialize_each(
        context,
        lambda target: target_influence(
            context,
            config,
            store,
            catalog,
            copy.deepcopy(model) if several else model,
            tokenizer,
            pool,
            spec,
            dev,
            target,
            warmed,
        ),
    )


def target_influence(
    context: dg.AssetExecutionContext,
    config: InfluenceAssetConfig,
    store: ObjectStore,
    catalog: Catalog,
    model,
    tokenizer,
    pool: pl.DataFrame,
    spec: str,
    dev: str,
    target: str,
    warmed: AdamState | None = None,
) -> PartitionOutcome:
    """One partition of landmark_influence: its files, its catalog rows; returns its metadata and
    its data version (the influence version). ``warmed``: ``model`` is already warmed up on the
    pool (``compute_influence``)."""
    examples = store.read_parquet(target_key(target, "target"))
    icfg = config.influence()
    context.log.info(
        f"{target}: pool {spec} with {pool.height} documents, {examples.height} target examples, "
        f"model on {dev}"
    )
    texts, doc_ids = pool["text"].to_list(), pool["doc_id"].to_list()
    result = compute_influence(
        model,
        tokenizer,
        texts,
        examples["prompt"].to_list(),
        examples["answer"].to_list(),
        icfg,
        log=context.log.info,
        warmed=warmed,
    )

    scores = result.scores
    exact = {i: float(v) for i, v in zip(result.landmarks, result.exact_landmarks.mean(1))}
    exact |= {i: float(v) for i, v in zip(result.holdout, result.exact_holdout.mean(1))}
    landmarks = set(result.landmarks)
    frame = pl.DataFrame(
        {
            "doc_id": doc_ids,
            "score": scores.mean(1).tolist(),
            "scores_per_example": scores.tolist(),
            "is_landmark": [i in landmarks for i in range(len(doc_ids))],
            "exact_score": [exact.get(i) for i in range(len(doc_ids))],
        },
        schema_overrides={"exact_score": pl.Float64},
    )
    # the device and whether bf16 autocast ran change the numbers a little: part of the version
    bf16 = uses_bf16(dev, icfg.dtype)
    version = hashlib.sha256(
        json.dumps(
            [target, spec, sorted(doc_ids), config.model_dump(), dev, bf16], sort_keys=True
        ).encode()
    ).hexdigest()[:12]
    uri = store.write_parquet(influence_scores_key(target, version), frame)
    store.write_parquet(
        influence_landmarks_key(target, version), frame.filter(pl.col("is_landmark"))
    )
    catalog.replace_rows(
        "influence_scores",
        {"target": target, "version": version},
        with_lineage(
            frame.select("doc_id", "score", "is_landmark", "exact_score"),
            context,
            partition_key=target,
            target=target,
            version=version,
            pool=spec,
        ),
    )

    timings = result.timings
    n_layers = model.config.num_hidden_layers
    return PartitionOutcome(
        data_version=version,
        metadata={
            "influence_version": version,
            "path": dg.MetadataValue.path(uri),
            "pool": spec,
            "refiner_version": pool_refiner_version(spec) or "none (raw pool)",
            "device": dev,
            "dagster/row_count": frame.height,
            "landmarks": len(landmarks),
            "target_examples": examples.height,
            "score_histogram": histogram(frame["score"].to_list(), log=False),
            "approximation_on_held_out_non_landmarks": md_table(
                ["metric", "value"], [(k, round(v, 3)) for k, v in result.accuracy.items()]
            ),
            "warmup_adam_factor": md_table(
                ["statistic", "value"], [(k, f"{v:.4g}") for k, v in result.adam.items()]
            ),
            "timings_s": md_table(
                ["phase", "seconds"], [(k, round(v, 1)) for k, v in timings.items()]
            ),
            "wall_clock_vs_exact": round(
                timings["exact_method_estimate_s"] / max(timings["landmark_method_s"], 1e-9), 2
            ),
            "flops_vs_rds_model": round(
                flops_ratio(
                    n_layers, icfg.jvp_blocks, icfg.jvp_directions, len(landmarks), frame.height
                ),
                3,
            ),
        },
    )


class SelectionConfig(dg.Config):
    budget_fraction: float = 0.25
    budget: int = 0  # when > 0, overrides budget_fraction
    method: Literal["round_robin", "top_k", "simplex"] = "round_robin"
    seed: int = 0  # round robin: the order of target examples in each round


@dg.asset(
    partitions_def=target_partitions,
    deps=[landmark_influence],
    group_name="selection",
    kinds={"parquet"},
    owners=["team:data-platform"],
    code_version="selection-v1",
    **CPU_STEP,
    description=(
        "The training subset chosen for a target from its influence estimates: round-robin over "
        "the target's examples (the reference's default), top-k of the mean, or the first-order "
        "simplex weights. doc_id, weight, rank, budget k."
    ),
)
def selected_subset(
    context: dg.AssetExecutionContext, config: SelectionConfig, store: ObjectStore, catalog: Catalog
) -> dg.MaterializeResult:
    target = context.partition_key
    influence = consumed_influence(context.instance, target)
    version, spec = influence.value("influence_version"), influence.value("pool")
    chosen = choose_subset(
        store.read_parquet(influence_scores_key(target, version)),
        config.method,
        config.budget,
        config.budget_fraction,
        config.seed,
    )
    # the selection's data version: the influence version and what was chosen from it
    selection_version = f"{version}-{content_version(config.model_dump_json(), chosen.members)[:6]}"
    uri = store.write_parquet(selection_key(target, version), chosen.frame)
    catalog.replace_rows(
        "selections",
        {"target": target, "version": version},
        with_lineage(
            chosen.frame.drop("score"),
            context,
            target=target,
            version=version,
            method=config.method,
        ),
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(selection_version),
        metadata={
            "selection_version": selection_version,
            "influence_version": version,
            "pool": spec,
            "refiner_version": pool_refiner_version(spec) or "none (raw pool)",
            "path": dg.MetadataValue.path(uri),
            "dagster/row_count": chosen.frame.height,
            "budget": chosen.budget,
            "pool_size": chosen.pool_size,
            "method": config.method,
            "selected_score_mean": round(chosen.selected_score_mean, 6),
            "pool_score_mean": round(chosen.pool_score_mean, 6),
            "top": md_table(["rank", "doc_id", "weight", "score"], chosen.top(8)),
        },
    )


def consumed_influence(instance: dg.DagsterInstance, target: str) -> Recorded:
    """landmark_influence[target]'s latest materialization: the influence scores this selection
    reads (the event log, not the newest catalog row)."""
    found = recorded(instance, "landmark_influence", target)
    if found is None:
        raise dg.Failure(
            f"no influence scores for {target}: materialize landmark_influence[{target}]"
        )
    return found
