"""Stage 7, the evidence: ``trained_checkpoint[target|variant]`` -> ``evaluation_report[target]``.

Every variant trains the same base model with the same hyperparameters, token budget and seeds
on different documents (see ``partitions.VARIANTS``), then is evaluated on the target task's
held-out examples and on held-out clean prose (``core/evaluation.py``). Checkpoints with equal
inputs are trained once: the refinement variants do not depend on the target, so the second
target reuses them and only evaluates.
"""

import base64
import json
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import dagster as dg
import polars as pl

from prox_assets.core.evaluation import evaluate
from prox_assets.core.influence import representation_similarity
from prox_assets.core.report import METRICS, comparisons, plot_report, summarize
from prox_assets.core.samples import heldout_prose
from prox_assets.core.shared_trunk import SharedTrunk
from prox_assets.core.training import checkpoint_version, train_lm
from prox_assets.core.training_loop import TrainConfig, lora_train_config
from prox_assets.core.variants import SELECTION_VARIANTS, refinement_documents, selection_documents
from prox_assets.ingest import raw_corpus
from prox_assets.layout import (
    HELDOUT_PROSE_KEY,
    checkpoint_prefix,
    evaluation_report_key,
    influence_scores_key,
    raw_paths,
    selection_key,
    target_key,
)
from prox_assets.lineage import consumed_refiner_version, content_version, recorded
from prox_assets.metadata import lineage, md_table
from prox_assets.partition_runs import MODEL_BACKFILL_POLICY, PartitionOutcome, materialize_each
from prox_assets.partitions import VARIANTS, checkpoint_partitions, target_partitions
from prox_assets.refinement import read_refined_pool, refined_pool
from prox_assets.selection import pool_frame, pool_refiner_version, selected_subset
from prox_assets.targets import target_set
from prox_resources.catalog import Catalog
from prox_resources.device import CPU_STEP, GPU_STEP, DeviceSettings
from prox_resources.engine import ModelEngine
from prox_resources.loader import LoadedModel
from prox_resources.models import fetch_model, manifest_key, train_into_store
from prox_resources.settings import downloads_dir
from prox_resources.store import ObjectStore


class CheckpointConfig(dg.Config):
    base_model: str = ""  # "" = the engine's base model (PROX_BASE_MODEL)
    seeds: list[int] = [0, 1]
    # the token budget: max_steps x batch_size x seq_len tokens for every variant
    max_steps: int = 8
    batch_size: int = 4
    seq_len: int = 128
    lr: float = 1e-3  # LoRA with a budget of a few steps: the high end of the usual range
    method: Literal["lora", "full"] = "lora"
    lora_r: int = 8
    lora_layers: int = 4  # adapters on the top N blocks; 0 = every block
    refiner_version: str = (
        ""  # raw / refined / rule_filtered: "" = the newest (refined_pool's last partition)
    )
    eval_examples: int = 40  # held-out target examples evaluated (0 = all)
    prose_passages: int = 16
    prose_tokens: int = 256
    max_new_tokens: int = 96  # GSM8K / SQuAD completions

    def train_config(self, seed: int) -> TrainConfig:
        return lora_train_config(
            method=self.method,
            lora_r=self.lora_r,
            lora_layers=self.lora_layers,
            lr=self.lr,
            max_steps=self.max_steps,
            batch_size=self.batch_size,
            warmup_steps=min(2, self.max_steps),
            max_seq_len=self.seq_len,
            seed=seed,
        )


def _target_task(catalog: Catalog, target: str) -> str:
    rows = catalog.named_query("target_task", target=target).rows()
    if not rows:
        raise dg.Failure(f"unknown target {target!r}: register it with `prox target add`")
    return rows[0][0]


@dataclass(frozen=True)
class CheckpointLineage:
    """What a checkpoint's documents came from; published in its materialization metadata."""

    refiner_version: str | None = None
    doc_sft_version: str | None = None
    chunk_sft_version: str | None = None
    selection_version: str | None = None
    influence_version: str | None = None

    @classmethod
    def of_pool(
        cls, store: ObjectStore, refiner_version: str | None, **selection
    ) -> "CheckpointLineage":
        if refiner_version is None:
            return cls(**selection)
        pool = read_refined_pool(store, refiner_version)
        return cls(refiner_version, pool.doc_sft_version, pool.chunk_sft_version, **selection)

    def metadata(self) -> dict[str, str]:
        return {k: v or "none" for k, v in asdict(self).items()}


@dataclass(frozen=True)
class VariantDocuments:
    """What a variant trains on: doc_id, text, weight; raw or refined text; where it came from."""

    docs: pl.DataFrame
    text_kind: str
    spec: str
    lineage: CheckpointLineage
    notes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SelectionInput:
    """The selection selected_subset[target] last materialized, and the pool it was chosen from."""

    chosen: pl.DataFrame  # doc_id, weight
    pool: pl.DataFrame  # doc_id, text
    spec: str
    lineage: CheckpointLineage


def _selection(
    store: ObjectStore, catalog: Catalog, instance: dg.DagsterInstance, target: str
) -> SelectionInput:
    """The selection of selected_subset[target]'s latest materialization (its data version)."""
    found = recorded(instance, "selected_subset", target)
    if found is None:
        raise dg.Failure(f"no selection for {target}: materialize selected_subset[{target}]")
    version, pool_spec = found.value("influence_version"), found.value("pool")
    chosen = store.read_parquet(selection_key(target, version)).select("doc_id", "weight")
    pool_ids = store.read_parquet(influence_scores_key(target, version)).select("doc_id")
    pool = pool_frame(store, catalog, pool_spec).join(pool_ids, on="doc_id", how="semi")
    lineage = CheckpointLineage.of_pool(
        store,
        pool_refiner_version(pool_spec),
        selection_version=found.value("selection_version"),
        influence_version=version,
    )
    return SelectionInput(chosen, pool, f"selection:{target}/{version} of {pool_spec}", lineage)


def _refinement_docs(store: ObjectStore, catalog: Catalog, version: str) -> pl.DataFrame:
    """doc_id, raw text, refined text, kept: every document of refined_pool[version]."""
    keys = list(read_refined_pool(store, version).shards.values())
    refined = pl.concat(
        [store.read_parquet(k).select("doc_id", "shard", "text", "kept") for k in keys]
    )
    raw = pl.concat(
        [
            store.read_parquet(k).select("doc_id", pl.col("text").alias("raw_text"))
            for k in raw_paths(catalog, refined["shard"].unique().sort().to_list()).values()
        ]
    )
    return refined.join(raw.unique("doc_id"), on="doc_id").sort("doc_id")


def variant_documents(
    store: ObjectStore,
    catalog: Catalog,
    instance: dg.DagsterInstance,
    target: str,
    variant: str,
    seed: int,
    refiner_version: str | None,
    embedding_scores=None,
) -> VariantDocuments:
    """The documents a variant trains on (``core/variants.py``). ``refiner_version``: the refined
    pool the refinement variants read (config, else the newest); the selection variants read their
    selection's pool."""
    if variant in SELECTION_VARIANTS:
        sel = _selection(store, catalog, instance, target)
        text_kind = "refined" if "of refined:" in sel.spec else "raw"
        chosen = selection_documents(
            variant, sel.pool, sel.chosen, seed, text_kind, embedding_scores
        )
        return VariantDocuments(chosen.docs, chosen.text_kind, sel.spec, sel.lineage, chosen.notes)
    if not refiner_version:
        raise dg.Failure(
            "no refiner version yet: materialize refiner, refined_corpus and refined_pool"
        )
    chosen = refinement_documents(variant, _refinement_docs(store, catalog, refiner_version))
    return VariantDocuments(
        chosen.docs,
        chosen.text_kind,
        f"refiner:{refiner_version}",
        CheckpointLineage.of_pool(store, refiner_version),
        chosen.notes,
    )


def _heldout_prose(store: ObjectStore, n: int) -> list[str]:
    """Held-out prose, written to the store once so that every run evaluates on the same texts."""
    if not store.exists(HELDOUT_PROSE_KEY):
        prose = pl.DataFrame({"text": heldout_prose(downloads_dir(), 64)})
        store.write_parquet(HELDOUT_PROSE_KEY, prose)
    texts = store.read_parquet(HELDOUT_PROSE_KEY)["text"].to_list()
    step = max(1, len(texts) // max(1, n))
    return texts[::step][:n]


@dg.asset(
    partitions_def=checkpoint_partitions,
    # what it trains on: the target's selection, and (refinement variants) the newest refiner
    # version's pool, one partition (a config refiner_version names another, recorded as metadata)
    deps=[
        # the target's held-out examples, and its selection
        dg.AssetDep(
            target_set, partition_mapping=dg.MultiToSingleDimensionPartitionMapping("target")
        ),
        dg.AssetDep(
            selected_subset, partition_mapping=dg.MultiToSingleDimensionPartitionMapping("target")
        ),
        dg.AssetDep(refined_pool, partition_mapping=dg.LastPartitionMapping()),
        dg.AssetDep(raw_corpus, partition_mapping=dg.AllPartitionMapping()),
    ],
    group_name="training",
    kinds={"pytorch", "safetensors"},
    owners=["team:data-platform"],
    **GPU_STEP,
    backfill_policy=MODEL_BACKFILL_POLICY,
    code_version="checkpoint-v1",
    description=(
        "The base model trained, with the same token budget, hyperparameters and seeds, on one "
        "variant's documents (influence / random / embedding / full pool; raw / refined / "
        "rule-filtered text; base = untrained), then evaluated on the target's held-out examples "
        "and on held-out prose. One checkpoint per seed under models/checkpoints/<target>/<variant>/."
    ),
)
def trained_checkpoint(
    context: dg.AssetExecutionContext,
    config: CheckpointConfig,
    store: ObjectStore,
    catalog: Catalog,
    engine: ModelEngine,
    device: DeviceSettings,
) -> dg.MaterializeResult:
    # A run may hold many variants (MODEL_BACKFILL_POLICY). Each trains its own copy of the base
    # model; a checkpoint two variants share (the same documents, e.g. `full` and `refined` when
    # the selection keeps the whole pool) is evaluated once per target in the run, and the blocks
    # its checkpoints leave untrained are computed once per target (RunEvaluations).
    evaluated = RunEvaluations()

    def train(key) -> dict:
        keys = checkpoint_partitions.get_partition_key_from_str(str(key)).keys_by_dimension
        return train_variant(
            context,
            config,
            store,
            catalog,
            engine.local(),
            device,
            keys["target"],
            keys["variant"],
            str(key),
            evaluated,
        )

    return materialize_each(context, train)


@dataclass
class RunEvaluations:
    """What the evaluations of one run of trained_checkpoint share: the metrics of the checkpoints
    evaluated so far (by target and version), and per target the base model's bottom blocks on
    the target's evaluation sets, which LoRA on the top ``lora_layers`` blocks leaves unchanged
    (``core/shared_trunk.py``: computed for the first model evaluated, replayed for the others,
    with the same results)."""

    metrics: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    trunks: dict[str, SharedTrunk | None] = field(default_factory=dict)

    def trunk(self, target: str, model, config: CheckpointConfig) -> SharedTrunk | None:
        if target not in self.trunks:
            self.trunks[target] = SharedTrunk.for_lora(
                model.config.num_hidden_layers, config.lora_layers, config.method
            )
        return self.trunks[target]


@dataclass(frozen=True)
class EvaluationSets:
    """What every checkpoint of a target is evaluated on."""

    task: str
    heldout: pl.DataFrame
    prose: list[str]

    def n(self, metric: str) -> int:
        return len(self.prose) if metric == "prose_perplexity" else self.heldout.height


@dataclass(frozen=True)
class SeedResult:
    """One seed of a variant: its checkpoint (none for base) and its metrics."""

    seed: int
    version: str
    metrics: dict[str, float]
    n_docs: int = 0
    report: dict = field(default_factory=dict)  # the train report
    checkpoint: dict | None = None  # its `checkpoints` row
    members: pl.DataFrame | None = None  # its `checkpoint_documents` rows

    def table_row(self) -> list:
        return [
            self.seed,
            self.version,
            self.n_docs,
            self.report.get("tokens_seen", 0),
            self.report.get("seconds", 0),
            *[round(self.metrics.get(m, float("nan")), 4) for m in METRICS],
        ]


def train_variant(
    context: dg.AssetExecutionContext,
    config: CheckpointConfig,
    store: ObjectStore,
    catalog: Catalog,
    engine: ModelEngine,
    device: DeviceSettings,
    target: str,
    variant: str,
    partition_key: str,
    evaluated: RunEvaluations,
) -> PartitionOutcome:
    """One partition of trained_checkpoint: its checkpoints, its catalog rows; returns its metadata
    (with what it came from: refiner version, SFT sets, selection) and its data version.
    ``evaluated``: what this run's evaluations share (filled here)."""
    # the base model by name in every version, manifest and row: the config's, else the engine's
    config = config.model_copy(update={"base_model": engine.base_or(config.base_model)})
    sets = _evaluation_sets(store, catalog, target, config)
    tags = lineage(context, partition_key)
    chosen = None
    if variant == "base":  # the untrained model: no seed, no documents
        results = [
            SeedResult(
                config.seeds[0],
                "base",
                _evaluate(context, engine, device, config, sets, None, target, evaluated),
            )
        ]
    else:
        refiner_version = consumed_refiner_version(context, config.refiner_version)
        scores = partial(
            _embedding_scores,
            engine,
            device,
            config,
            store.read_parquet(target_key(target, "target")),
        )
        choose = partial(
            variant_documents,
            store,
            catalog,
            context.instance,
            target,
            variant,
            refiner_version=refiner_version,
            embedding_scores=scores,
        )
        # Only a random draw depends on the seed; other variants' documents are read (and scored
        # or filtered) once for all seeds.
        shared = None if variant == "random" else choose(seed=config.seeds[0])
        results = []
        for seed in config.seeds:
            chosen = shared or choose(seed=seed)
            results.append(
                _train_seed(
                    context,
                    config,
                    store,
                    catalog,
                    engine,
                    device,
                    sets,
                    target,
                    variant,
                    seed,
                    chosen,
                    tags,
                    evaluated,
                )
            )
    where = {"target": target, "variant": variant}
    checkpoints = [r.checkpoint for r in results if r.checkpoint]
    members = [r.members for r in results if r.members is not None]
    catalog.replace_many(
        [
            ("checkpoints", where, pl.DataFrame(checkpoints) if checkpoints else None),
            ("checkpoint_documents", where, pl.concat(members) if members else None),
            (
                "checkpoint_evals",
                where,
                pl.DataFrame(
                    [
                        {
                            "target": target,
                            "variant": variant,
                            "seed": r.seed,
                            "version": r.version,
                            "task": sets.task,
                            "metric": m,
                            "value": v,
                            "n": sets.n(m),
                            **tags,
                        }
                        for r in results
                        for m, v in r.metrics.items()
                    ]
                ),
            ),
        ]
    )
    versions = [r.version for r in results]
    means: dict[str, list[float]] = {}
    for r in results:
        for m, v in r.metrics.items():
            means.setdefault(m, []).append(v)
    return PartitionOutcome(
        data_version=content_version(*versions) if variant != "base" else "base",
        metadata={
            "variant": variant,
            "task": sets.task,
            **(chosen.lineage if chosen else CheckpointLineage()).metadata(),
            "checkpoint_versions": ", ".join(versions),
            "seeds": len(results),
            "dagster/row_count": results[0].n_docs,
            "train_tokens_per_seed": results[0].report.get("tokens_seen", 0),
            "path": dg.MetadataValue.path(store.uri(checkpoint_prefix(target, variant, ""))),
            "per_seed": md_table(
                ["seed", "version", "docs", "train tokens", "train s", *METRICS],
                [r.table_row() for r in results],
            ),
            **{f"mean_{m}": round(sum(v) / len(v), 4) for m, v in means.items()},
            **{
                f"data/{k}": (json.dumps(v) if isinstance(v, list) else v)
                for k, v in (chosen.notes if chosen else {}).items()
            },
        },
    )


def _evaluation_sets(
    store: ObjectStore, catalog: Catalog, target: str, config: CheckpointConfig
) -> EvaluationSets:
    heldout = store.read_parquet(target_key(target, "heldout"))
    if config.eval_examples:
        heldout = heldout.head(config.eval_examples)
    return EvaluationSets(
        _target_task(catalog, target), heldout, _heldout_prose(store, config.prose_passages)
    )


def _evaluate(
    context: dg.AssetExecutionContext,
    engine: ModelEngine,
    device: DeviceSettings,
    config: CheckpointConfig,
    sets: EvaluationSets,
    checkpoint: Path | LoadedModel | None,
    target: str,
    evaluated: RunEvaluations,
) -> dict[str, float]:
    """The base model with ``checkpoint`` on top (None: untrained) on the evaluation sets: a
    checkpoint folder, or the model this run just trained, still in memory (the weights its folder
    loads to: LoRA merged into the fp32 base), evaluated without loading it again. The blocks
    below its adapters are computed once per target and run (``RunEvaluations``)."""
    started = time.monotonic()
    if isinstance(checkpoint, LoadedModel):
        loaded, source = checkpoint, "as trained, in memory"
    else:
        loaded, source = engine.load_model(device, config.base_model, adapter=checkpoint), "loaded"
    trunk = evaluated.trunk(target, loaded.model, config)
    replayed, computed = (trunk.replayed, trunk.computed) if trunk else (0, 0)
    with trunk.sharing(loaded.model) if trunk else nullcontext(False) as shared:
        metrics = evaluate(
            engine.serve(loaded, device),
            sets.task,
            sets.heldout.to_dicts(),
            sets.prose,
            config.max_new_tokens,
            config.prose_tokens,
        )
    if trunk and shared and trunk.replayed > replayed:
        calls = trunk.replayed - replayed + trunk.computed - computed
        source += (
            f"; bottom {trunk.depth} blocks replayed for {trunk.replayed - replayed} of {calls} "
            "forward calls"
        )
    context.log.info(
        f"evaluated in {time.monotonic() - started:.0f}s ({source}): "
        + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
    )
    return metrics


def _embedding_scores(
    engine: ModelEngine,
    device: DeviceSettings,
    config: CheckpointConfig,
    examples: pl.DataFrame,
    pool: pl.DataFrame,
) -> list[float]:
    """Each pool document's similarity to the target examples in the base model's hidden states."""
    model, tokenizer = engine.load_model(device, config.base_model)
    return representation_similarity(
        model,
        tokenizer,
        pool["text"].to_list(),
        [p + a for p, a in zip(examples["prompt"], examples["answer"])],
        max_len=config.seq_len,
    ).tolist()


def _train(
    engine: ModelEngine,
    device: DeviceSettings,
    config: CheckpointConfig,
    docs: pl.DataFrame,
    train_config: TrainConfig,
    keep: Callable[[LoadedModel], None],
    folder: str,
    progress,
) -> dict:
    """Trains into ``folder``; ``keep`` receives the trained model (for its evaluation)."""
    model, tokenizer = engine.load_model(device, config.base_model, train=True)
    trained = train_lm(
        model,
        tokenizer,
        docs["text"].to_list(),
        train_config,
        folder,
        docs["weight"].to_list(),
        progress=progress,
    )
    keep(LoadedModel(trained.model, tokenizer))
    return trained.report.to_dict()


def _train_seed(
    context: dg.AssetExecutionContext,
    config: CheckpointConfig,
    store: ObjectStore,
    catalog: Catalog,
    engine: ModelEngine,
    device: DeviceSettings,
    sets: EvaluationSets,
    target: str,
    variant: str,
    seed: int,
    chosen: VariantDocuments,
    tags: dict,
    evaluated: RunEvaluations,
) -> SeedResult:
    """One seed's checkpoint, trained once (an existing one of the same version is reused), then
    evaluated (once per run and target)."""
    docs = chosen.docs
    if docs.height == 0:
        raise dg.Failure(f"{variant}: no document to train on ({json.dumps(chosen.notes)})")
    train_config = config.train_config(seed)
    version = checkpoint_version(
        config.base_model, list(zip(docs["doc_id"], docs["weight"])), chosen.text_kind, train_config
    )
    prefix = _existing_checkpoint(store, catalog, version) or checkpoint_prefix(
        target, variant, version
    )
    manifest = {
        "target": target,
        "variant": variant,
        "seed": seed,
        "version": version,
        "base_model": config.base_model,
        "data_spec": chosen.spec,
        "text_kind": chosen.text_kind,
        "train_config": train_config.to_dict(),
    }
    if not store.exists(manifest_key(prefix)):
        context.log.info(
            f"seed {seed}: training {version} on {docs.height} documents ({chosen.spec}, "
            f"{chosen.text_kind})"
        )
    trained: list[LoadedModel] = []  # the model trained here, if it is: evaluated in memory
    report, reused = train_into_store(
        store,
        prefix,
        manifest,
        partial(_train, engine, device, config, docs, train_config, trained.append),
        context.log.info,
        log_every=4,
    )
    if reused:
        context.log.info(f"seed {seed}: checkpoint {version} exists ({prefix}): evaluating only")
    if (target, version) in evaluated.metrics:
        context.log.info(f"seed {seed}: checkpoint {version} was evaluated earlier in this run")
    else:
        evaluated.metrics[target, version] = _evaluate(
            context,
            engine,
            device,
            config,
            sets,
            trained[0] if trained else Path(fetch_model(store, prefix)),
            target,
            evaluated,
        )
    metrics = evaluated.metrics[target, version]
    row = {
        **manifest,
        "n_docs": docs.height,
        "train_tokens": report["tokens_seen"],
        "steps": report["steps"],
        "final_loss": report["losses"][-1] if report["losses"] else None,
        "seconds": report["seconds"],
        "config": json.dumps(train_config.to_dict()),
        "path": store.uri(prefix),
        **tags,
    }
    del row["train_config"]
    members = docs.select("doc_id", "weight").with_columns(
        version=pl.lit(version),
        target=pl.lit(target),
        variant=pl.lit(variant),
        seed=pl.lit(seed),
        **{k: pl.lit(v) for k, v in tags.items()},
    )
    return SeedResult(seed, version, metrics, docs.height, report, row, members)


def _existing_checkpoint(store: ObjectStore, catalog: Catalog, version: str) -> str | None:
    """Where a checkpoint of this version already is (trained for another target), if anywhere."""
    for (path,) in catalog.named_query("checkpoint_paths", version=version).rows():
        prefix = path[len(store.uri("")) :].strip("/") if path.startswith(store.uri("")) else None
        if prefix and store.exists(manifest_key(prefix)):
            return prefix
    return None


@dg.asset(
    partitions_def=target_partitions,
    deps=[
        dg.AssetDep(
            trained_checkpoint,
            partition_mapping=dg.MultiToSingleDimensionPartitionMapping("target"),
        )
    ],
    group_name="training",
    kinds={"parquet", "matplotlib"},
    owners=["team:data-platform"],
    code_version="report-v1",
    **CPU_STEP,
    description=(
        "Every variant's checkpoints side by side for one target: mean and spread over seeds of "
        "held-out task loss and accuracy (or exact match / F1) and held-out prose perplexity, "
        "the contrasts (influence vs random / embedding / full, refined vs raw / rule-filtered) "
        "and a plot. Written to reports/<target>/."
    ),
)
def evaluation_report(
    context: dg.AssetExecutionContext, store: ObjectStore, catalog: Catalog
) -> dg.MaterializeResult:
    target = context.partition_key
    evals = catalog.named_query("checkpoint_evals", target=target)
    if evals.is_empty():
        raise dg.Failure(
            f"no evaluated checkpoint for {target}: materialize trained_checkpoint[{target}|…]"
        )
    ckpts = catalog.named_query("checkpoint_sizes", target=target)
    summary = summarize(evals)
    metrics = [m for m in METRICS if m in set(summary["metric"])]
    cells = {
        (r["variant"], r["metric"]): f"{r['mean']:.4f} ± {r['std']:.4f}"
        for r in summary.iter_rows(named=True)
    }
    seeds = dict(summary.group_by("variant").agg(pl.col("seeds").max()).rows())
    sizes = {r["variant"]: (r["docs"], r["train_tokens"]) for r in ckpts.iter_rows(named=True)}
    present = [v for v in VARIANTS if v in seeds]
    table = [
        (v, seeds[v], *sizes.get(v, ("-", 0)), *[cells.get((v, m), "-") for m in metrics])
        for v in present
    ]
    task = evals["task"][0]
    png = plot_report(summary, evals, f"{target} ({task}): mean ± std over seeds")
    uri = store.write_parquet(evaluation_report_key(target, "parquet"), summary)
    png_uri = store.write_bytes(evaluation_report_key(target, "png"), png)
    missing = [v for v in VARIANTS if v not in seeds]
    return dg.MaterializeResult(
        metadata={
            "task": task,
            "variants": len(present),
            "missing_variants": ", ".join(missing) or "none",
            "held_out_examples": int(
                evals.filter(pl.col("metric") == "heldout_loss")["n"].max() or 0
            ),
            "results": md_table(["variant", "seeds", "docs", "train tokens", *metrics], table),
            "contrasts": md_table(
                ["contrast", "metric", "difference", "better"], comparisons(summary)
            ),
            "plot": dg.MetadataValue.md(
                f"![evaluation](data:image/png;base64,{base64.b64encode(png).decode()})"
            ),
            "plot_path": dg.MetadataValue.path(png_uri),
            "path": dg.MetadataValue.path(uri),
        }
    )
