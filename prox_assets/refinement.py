"""Stage 5, refinement: ``raw_corpus[shard]`` x refiners -> ``refined_corpus[shard x refiner_version]``.

The document refiner keeps or drops each document; kept documents are windowed and the chunk
refiner writes one program per window; the executor runs them. Each refiner version writes under
its own path (``refined/<refiner_version>/<shard>.parquet``), so older versions' outputs stay
untouched and an audit can show a document under every version.

One document never fails the partition: a document one of whose stages raises (a text the
tokenizer rejects, a prompt the engine rejects, an executor failure, a generation that is not
text) gets a row with ``status`` ``error``, ``kept`` false, ``reason`` ``refine_error``, its raw
text and the stage and exception in ``error``; the others are refined. ``documents_in = kept +
dropped + errored``, in the metadata and in the catalog's ``program_runs``. Failures that are not
a document's (a model that cannot load, an engine that fails on an ordinary probe document too,
a store that cannot be written) still fail the partition.

Resumable: documents are processed in batches, each written atomically as a part file; a killed
run restarts and skips the batches whose parts exist. The final file and the catalog rows are
written once all parts are done.

One run refines many shards (a backfill range, ``MODEL_BACKFILL_POLICY``) and loads each refiner
once for all of them; a shard that fails does not stop the others (``partition_runs``).
"""

import json
import time
from dataclasses import asdict, astuple, dataclass

import dagster as dg
import polars as pl

from prox_assets.core.chunking import hf_token_counter
from prox_assets.core.refinement import refined_rows
from prox_assets.core.refiner_training import FALLBACK_PROGRAM_TOKENS
from prox_assets.core.scoring import seed_sample
from prox_assets.ingest import raw_corpus, raw_key
from prox_assets.layout import (
    inputs_digest,
    pool_manifest_key,
    refined_key,
    refined_part_key,
    refined_parts_prefix,
    refined_shard_keys,
    refiner_prefix,
)
from prox_assets.lineage import content_version, newest_refiner_version, recorded
from prox_assets.metadata import histogram, md_table, with_lineage
from prox_assets.partition_runs import (
    MODEL_BACKFILL_POLICY,
    PARTITIONS_PER_RUN,
    PartitionOutcome,
    materialize_each,
    partition_ranges,
    partition_run_request,
)
from prox_assets.partitions import refined_partitions, refiner_version_partitions, shard_partitions
from prox_assets.refiner_training import refiner
from prox_resources.catalog import Catalog
from prox_resources.device import CPU_STEP, GPU_STEP, DeviceSettings
from prox_resources.engine import ModelEngine
from prox_resources.models import fetch_model
from prox_resources.store import ObjectStore


class RefineConfig(dg.Config):
    max_docs: int = 0  # 0 = every document of the shard; the CPU demo refines a seeded sample
    sample_max_chars: int = 0  # with max_docs: sample among documents this short (a CPU budget)
    seed: int = 0
    batch_docs: int = 16  # the unit of resumption
    doc_max_new_tokens: int = 8
    chunk_max_new_tokens: int = (
        0  # 0: the chunk refiner's own budget, sized from its training programs
    )


def latest_refiner_version(instance: dg.DagsterInstance) -> str | None:
    """The newest registered refiner_version key (doc + chunk refiner pair), if any: the
    partition that ``refined_pool``'s ``LastPartitionMapping`` dependents read."""
    return newest_refiner_version(instance)


@dataclass(frozen=True)
class RefinerPair:
    """A refiner_version key's doc and chunk refiners, their SFT sets, and the input sizes each
    was trained on."""

    doc: str
    chunk: str
    doc_sft_version: str
    chunk_sft_version: str
    doc_max_tokens: int
    window_tokens: int
    chunk_max_new_tokens: int
    heldout_pages: float | None  # the docs pages the chunk SFT set left out (None: no page split)
    split_seed: int


def refiner_pair(catalog: Catalog, version: str) -> RefinerPair:
    """The doc and chunk refiner versions of a pair key, and the input sizes each was trained on."""
    rows = catalog.named_query("refiner_pair", refiner_version=version).rows(named=True)
    if not rows:
        raise dg.Failure(
            f"unknown refiner_version {version!r}: materialize refiner[doc] and refiner[chunk]"
        )
    row = rows[0]
    doc_sft, chunk_sft = json.loads(row["doc_sft"]), json.loads(row["chunk_sft"])
    return RefinerPair(
        doc=row["doc_version"],
        chunk=row["chunk_version"],
        doc_sft_version=row["doc_sft_version"],
        chunk_sft_version=row["chunk_sft_version"],
        doc_max_tokens=doc_sft["doc_max_tokens"],
        window_tokens=chunk_sft["window_tokens"],
        chunk_max_new_tokens=json.loads(row["chunk_report"] or "{}").get(
            "max_new_tokens", FALLBACK_PROGRAM_TOKENS
        ),
        heldout_pages=chunk_sft.get("heldout_pages"),
        split_seed=chunk_sft.get("seed", 0),
    )


ROW_SCHEMA = {
    "doc_id": pl.String,
    "shard": pl.String,
    "refiner_version": pl.String,
    "text": pl.String,
    "kept": pl.Boolean,
    "status": pl.String,
    "reason": pl.String,
    "error": pl.String,
    "doc_program": pl.String,
    "chunk_programs": pl.String,
    "windows": pl.String,
    "edits": pl.String,
    "errors": pl.String,
    "program_ignored": pl.Boolean,
    "windows_ignored": pl.Int64,
    "lines_removed": pl.Int64,
    "n_chars_before": pl.Int64,
    "n_chars_after": pl.Int64,
    "n_tokens_before": pl.Int64,
    "n_tokens_after": pl.Int64,
}


def refine_batch(
    doc_backend,
    chunk_backend,
    batch: pl.DataFrame,
    shard: str,
    version: str,
    pair: RefinerPair,
    config: RefineConfig,
) -> pl.DataFrame:
    """One row per document of ``batch``, in order (``core.refinement.refined_rows``): kept, dropped,
    or (status ``error``) a document one of whose stages raised; the others are refined all the same."""
    rows = refined_rows(
        doc_backend,
        chunk_backend,
        batch["text"].to_list(),
        doc_max_tokens=pair.doc_max_tokens,
        window_tokens=pair.window_tokens,
        doc_max_new_tokens=config.doc_max_new_tokens,
        chunk_max_new_tokens=config.chunk_max_new_tokens or pair.chunk_max_new_tokens,
        count_tokens=hf_token_counter(chunk_backend.tokenizer),
    )
    return pl.DataFrame(
        [
            {"doc_id": doc_id, "shard": shard, "refiner_version": version, **row.to_dict()}
            for doc_id, row in zip(batch["doc_id"], rows)
        ],
        schema=ROW_SCHEMA,
    )


def _conform(part: pl.DataFrame) -> pl.DataFrame:
    """A part file in the row schema (a part written before ``status`` and ``error`` existed,
    or with an all-null column, still concatenates with the others)."""
    if "status" not in part.columns:
        part = part.with_columns(
            status=pl.when(pl.col("kept")).then(pl.lit("kept")).otherwise(pl.lit("dropped"))
        )
    if "error" not in part.columns:
        part = part.with_columns(error=pl.lit(None, pl.String))
    return part.select([pl.col(c).cast(t) for c, t in ROW_SCHEMA.items()])


@dg.asset(
    partitions_def=refined_partitions,
    deps=[
        dg.AssetDep(
            raw_corpus,
            partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
                partition_dimension_name="shard"
            ),
        ),
        dg.AssetDep(refiner, partition_mapping=dg.AllPartitionMapping()),
    ],
    group_name="refinement",
    kinds={"pytorch", "parquet"},
    owners=["team:data-platform"],
    **GPU_STEP,
    backfill_policy=MODEL_BACKFILL_POLICY,
    code_version="refine-v3",
    description=(
        "A raw shard refined by one refiner version (a document refiner and a chunk refiner): "
        "doc_id, refined text, kept, status (kept, dropped or error), reason, error, both programs, "
        "edits and errors, under refined/<refiner_version>/<shard>.parquet. A document that cannot "
        "be refined is recorded with its error; the others are refined. Every program run goes "
        "into the catalog."
    ),
)
def refined_corpus(
    context: dg.AssetExecutionContext,
    config: RefineConfig,
    store: ObjectStore,
    catalog: Catalog,
    engine: ModelEngine,
    device: DeviceSettings,
) -> dg.MaterializeResult:
    # A run may hold many partitions (a backfill range, MODEL_BACKFILL_POLICY): the partitions of
    # one refiner version share its two models, loaded once per run (the engine caches them).
    local = engine.local()
    pairs: dict[str, RefinerPair] = {}

    def refine(key) -> dict:
        keys = refined_partitions.get_partition_key_from_str(str(key)).keys_by_dimension
        shard, version = keys["shard"], keys["refiner_version"]
        if version not in pairs:
            pairs[version] = refiner_pair(catalog, version)
        pair = pairs[version]
        doc_backend = local.load(
            device,
            model=str(fetch_model(store, refiner_prefix("doc", pair.doc))),
            log=context.log.info,
        )
        chunk_backend = local.load(
            device,
            model=str(fetch_model(store, refiner_prefix("chunk", pair.chunk))),
            log=context.log.info,
        )
        return refine_shard(
            context,
            config,
            store,
            catalog,
            doc_backend,
            chunk_backend,
            shard,
            version,
            pair,
            str(key),
        )

    return materialize_each(context, refine)


def _part_settings(config: RefineConfig, pair: RefinerPair) -> str:
    """Everything besides the documents that decides a part's rows (the sample's own settings are
    covered by the documents themselves)."""
    return repr(
        (
            config.doc_max_new_tokens,
            config.chunk_max_new_tokens,
            astuple(pair),
        )
    )


def refine_shard(
    context: dg.AssetExecutionContext,
    config: RefineConfig,
    store: ObjectStore,
    catalog: Catalog,
    doc_backend,
    chunk_backend,
    shard: str,
    version: str,
    pair: RefinerPair,
    partition_key: str,
) -> PartitionOutcome:
    """One partition of refined_corpus: its file, its catalog rows; returns its metadata and its
    content version (the refiner version and what became of each document)."""
    raw = store.read_parquet(raw_key(catalog, shard)).select("doc_id", "text")
    if config.max_docs:
        eligible = (
            raw.filter(pl.col("text").str.len_chars() <= config.sample_max_chars)
            if config.sample_max_chars
            else raw
        )
        chosen = set(seed_sample(eligible["doc_id"].to_list(), config.max_docs, config.seed))
        raw = raw.filter(pl.col("doc_id").is_in(chosen))
    raw = raw.sort("doc_id")  # a fixed order makes batch k the same documents on every attempt
    n_batches = (raw.height + config.batch_docs - 1) // config.batch_docs
    parts = refined_parts_prefix(version, shard)
    # A part is named by what made it (its documents, the refiners and the generation settings),
    # not by its position only: a run resumed after the shard was re-ingested, or with another
    # sample or budget, recomputes every batch whose inputs changed instead of reusing a part of
    # documents that are no longer in the shard.
    settings = _part_settings(config, pair)
    part_keys = [
        refined_part_key(
            version,
            shard,
            b,
            n_batches,
            inputs_digest(
                raw["doc_id"].slice(b * config.batch_docs, config.batch_docs).to_list(), settings
            ),
        )
        for b in range(n_batches)
    ]
    started, done_now = time.monotonic(), 0
    for b in range(n_batches):
        part = part_keys[b]
        if store.exists(part):
            context.log.info(f"batch {b + 1}/{n_batches}: done by an earlier attempt, skipped")
            continue
        batch = raw.slice(b * config.batch_docs, config.batch_docs)
        rows = refine_batch(doc_backend, chunk_backend, batch, shard, version, pair, config)
        store.write_parquet(part, rows)
        for doc_id, error in (
            rows.filter(pl.col("status") == "error").select("doc_id", "error").iter_rows()
        ):
            context.log.warning(
                f"document {doc_id} not refined ({error}); recorded as status 'error'"
            )
        done_now += batch.height
        context.log.info(
            f"batch {b + 1}/{n_batches}: {batch.height} documents "
            f"({done_now / (time.monotonic() - started):.2f} docs/s)"
        )
    took = time.monotonic() - started

    frame = (
        pl.concat([_conform(store.read_parquet(part)) for part in part_keys])
        if n_batches
        else pl.DataFrame(schema=ROW_SCHEMA)
    )
    n_in = frame.height  # every document has a row: kept, dropped or error
    kept, dropped, errored = (
        int((frame["status"] == s).sum()) for s in ("kept", "dropped", "error")
    )
    if kept + dropped + errored != n_in or n_in != raw.height:
        raise dg.Failure(
            f"{raw.height} documents in, {n_in} rows: {kept} kept + {dropped} dropped + "
            f"{errored} errored (parts of another sample under {parts}/?)"
        )
    uri = store.write_parquet(refined_key(version, shard), frame)
    catalog.replace_rows(
        "program_runs",
        {"shard": shard, "refiner_version": version},
        with_lineage(
            frame.drop(
                "text",
                "program_ignored",
                "windows_ignored",
                "lines_removed",
                "n_tokens_before",
                "n_tokens_after",
            ),
            context,
            partition_key=partition_key,
            refined_path=refined_key(version, shard),
        ),
    )
    for key in store.list(parts + "/"):
        store.delete(key)

    reasons = _by_count(frame.filter(pl.col("status") == "dropped")["reason"]) if dropped else []
    failures = frame.filter(pl.col("status") == "error")
    stages = _by_count(failures["error"].str.extract(r"^(\w+):")) if errored else []
    examples = frame.filter(pl.col("kept") & (pl.col("lines_removed") > 0)).head(3)
    before = dict(raw.iter_rows())
    return PartitionOutcome(
        data_version=shard_content_version(version, frame),
        metadata={
            "dagster/row_count": n_in,
            "path": dg.MetadataValue.path(uri),
            "refiner_version": version,
            "doc_refiner": pair.doc,
            "chunk_refiner": pair.chunk,
            "documents_in": n_in,
            "kept": kept,
            "dropped": dropped,
            "errored": errored,
            "kept_ratio": round(kept / max(n_in, 1), 3),
            "tokens_kept_ratio": round(
                int(frame["n_tokens_after"].sum()) / max(int(frame["n_tokens_before"].sum()), 1), 3
            ),
            "lines_removed": int(frame["lines_removed"].sum()),
            "executor_errors": int(
                frame["errors"]
                .map_elements(
                    lambda e: sum(i["kind"] != "document_error" for i in json.loads(e)),
                    return_dtype=pl.Int64,
                )
                .sum()
            ),
            "programs_ignored": int(frame["program_ignored"].sum()),
            "windows_ignored": int(frame["windows_ignored"].sum()),
            "drop_reasons": md_table(["reason", "count"], reasons),
            "error_stages": md_table(["stage", "documents"], stages),
            "errored_documents": md_table(
                ["doc_id", "error"], failures.select("doc_id", "error").head(10).rows()
            ),
            "chars_kept_per_document": histogram(frame["n_chars_after"].to_list(), log=False),
            "before_after": md_table(
                ["doc_id", "before", "after"],
                [
                    (r["doc_id"], before[r["doc_id"]][:300], r["text"][:300])
                    for r in examples.iter_rows(named=True)
                ],
            ),
            "documents_per_second": round(done_now / took, 3) if done_now else 0.0,
            "tokens_per_second": round(int(frame["n_tokens_before"].sum()) / took, 1)
            if done_now
            else 0.0,
        },
    )


def shard_content_version(version: str, frame: pl.DataFrame) -> str:
    """``<refiner_version>@<hash>`` of a refined shard: which documents, what became of each."""
    rows = frame.select("doc_id", "status", "n_chars_after").sort("doc_id").rows()
    return f"{version}@{content_version(version, rows)}"


# --- the pool of one refiner version -------------------------------------------------------------
@dataclass(frozen=True)
class RefinedPool:
    """What ``refined_pool[<refiner_version>]`` recorded: the finished shard files of one refiner
    version, their counts, the refiners and SFT sets behind them. Readers of the pool read exactly
    these files."""

    refiner_version: str
    doc_refiner: str
    chunk_refiner: str
    doc_sft_version: str
    chunk_sft_version: str
    shards: dict[str, str]  # shard -> refined file key
    documents: int
    kept: int
    content_hash: str

    @property
    def data_version(self) -> str:
        return f"{self.refiner_version}@{self.content_hash}"

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()


def read_refined_pool(store: ObjectStore, version: str) -> RefinedPool:
    """The pool that ``refined_pool[version]`` recorded; a Failure when it was never materialized."""
    key = pool_manifest_key(version)
    if not store.exists(key):
        raise dg.Failure(
            f"no refined pool for refiner version {version}: materialize refined_corpus for its "
            f"shards, then refined_pool[{version}]"
        )
    return RefinedPool(**json.loads(store.read_bytes(key)))


def build_refined_pool(store: ObjectStore, catalog: Catalog, version: str) -> RefinedPool:
    keys = refined_shard_keys(store, version)
    if not keys:
        raise dg.Failure(
            f"no refined shard for refiner version {version}: materialize refined_corpus first"
        )
    pair = refiner_pair(catalog, version)
    frames = {
        k: store.read_parquet(k).select("doc_id", "status", "n_chars_after", "kept")
        for k in sorted(keys)
    }
    shards = {k.rsplit("/", 1)[-1].removesuffix(".parquet"): k for k in sorted(keys)}
    return RefinedPool(
        refiner_version=version,
        doc_refiner=pair.doc,
        chunk_refiner=pair.chunk,
        doc_sft_version=pair.doc_sft_version,
        chunk_sft_version=pair.chunk_sft_version,
        shards=shards,
        documents=sum(f.height for f in frames.values()),
        kept=sum(int(f["kept"].sum()) for f in frames.values()),
        content_hash=content_version(
            *(shard_content_version(version, frames[k]) for k in sorted(frames))
        ),
    )


@dg.asset(
    partitions_def=refiner_version_partitions,
    deps=[
        dg.AssetDep(
            refined_corpus,
            partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
                partition_dimension_name="refiner_version"
            ),
        )
    ],
    group_name="refinement",
    kinds={"json"},
    **CPU_STEP,
    owners=["team:data-platform"],
    code_version="pool-v1",
    description=(
        "The pool of one refiner version: which refined shard files it holds, their documents and "
        "kept counts, and the refiners and SFT sets behind it (pools/refined/<refiner_version>.json). "
        "Selection and training read a refined pool only through it, so the newest refiner version "
        "is one partition upstream of them (their LastPartitionMapping): a backfill of a new version "
        "marks them stale, whatever the number of shards."
    ),
)
def refined_pool(
    context: dg.AssetExecutionContext, store: ObjectStore, catalog: Catalog
) -> dg.MaterializeResult:
    pool = build_refined_pool(store, catalog, context.partition_key)
    uri = store.write_bytes(pool_manifest_key(pool.refiner_version), pool.to_json())
    return dg.MaterializeResult(
        data_version=dg.DataVersion(pool.data_version),
        metadata={
            "refiner_version": pool.refiner_version,
            "doc_refiner": pool.doc_refiner,
            "chunk_refiner": pool.chunk_refiner,
            "doc_sft_version": pool.doc_sft_version,
            "chunk_sft_version": pool.chunk_sft_version,
            "shards": len(pool.shards),
            "documents": pool.documents,
            "kept": pool.kept,
            "dagster/row_count": pool.kept,
            "path": dg.MetadataValue.path(uri),
        },
    )


@dg.sensor(
    target=[refined_corpus],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="When enabled: refines every ingested shard that the newest refiner version has not refined yet.",
)
def refine_new_shards_sensor(
    context: dg.SensorEvaluationContext, catalog: Catalog
) -> dg.SensorResult:
    version = latest_refiner_version(context.instance)
    if version is None:
        return dg.SensorResult(skip_reason="no refiner version yet")
    shards = set(context.instance.get_dynamic_partitions(shard_partitions.name))
    done = set(catalog.named_query("refined_shards", refiner_version=version)["shard"])
    # Shards requested on an earlier tick are not requested again (as a run key per shard did):
    # the cursor holds them for the newest version; a failed one is retried by a backfill.
    cursor = json.loads(context.cursor) if context.cursor else {}
    requested = set(cursor.get("requested", [])) if cursor.get("version") == version else set()
    todo = sorted(shards - done - requested)
    if not todo:
        return dg.SensorResult(skip_reason=f"every shard refined or requested for {version}")
    keys = [str(dg.MultiPartitionKey({"shard": s, "refiner_version": version})) for s in todo]
    # As a backfill would: contiguous ranges of up to PARTITIONS_PER_RUN shards, one run each, so
    # the refiners load once per range, not once per shard.
    runs = partition_ranges(refined_partitions, keys, PARTITIONS_PER_RUN, context.instance)
    return dg.SensorResult(
        run_requests=[partition_run_request(f"refine:{version}", run) for run in runs],
        cursor=json.dumps({"version": version, "requested": sorted(requested | set(todo))}),
    )


@dg.sensor(
    target=[refined_pool],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "When enabled: records refined_pool[<newest refiner version>] once every shard is refined by "
        "that version and a shard is newer than the pool (with refine_new_shards_sensor: new shards "
        "reach selection and training, which the pool then marks stale)."
    ),
)
def refined_pool_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
    version = latest_refiner_version(context.instance)
    if version is None:
        return dg.SensorResult(skip_reason="no refiner version yet")
    shards = context.instance.get_dynamic_partitions(shard_partitions.name)
    keys = [str(dg.MultiPartitionKey({"shard": s, "refiner_version": version})) for s in shards]
    done = context.instance.get_materialized_partitions(refined_corpus.key)
    missing = [k for k in keys if k not in done]
    if not keys or missing:
        return dg.SensorResult(
            skip_reason=f"{len(missing)} of {len(keys)} shards not refined by {version} yet"
        )
    newest = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=refined_corpus.key, asset_partitions=keys), limit=1
    ).records[0]
    pool = recorded(context.instance, "refined_pool", version)
    if pool is not None and pool.storage_id > newest.storage_id:
        return dg.SensorResult(skip_reason=f"refined_pool[{version}] is newer than its shards")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=version, run_key=f"pool:{version}:{newest.storage_id}")
        ]
    )


def _by_count(values: pl.Series) -> list[tuple]:
    """(value, count) rows, most frequent first, ties by value: the same table on every run."""
    return sorted(values.value_counts().rows(), key=lambda r: (-r[1], str(r[0])))
