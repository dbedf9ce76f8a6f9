"""Stage 1, ingestion: raw input files -> ``raw_corpus[shard]``.

A file dropped under ``incoming/`` in the store becomes a ``shard`` partition (the sensor below,
or ``prox ingest``), and materializing that partition normalises it into
``raw/<shard>.parquet`` and registers every document (and every quarantined input) in the
catalog.
"""


import re
from collections import Counter

import dagster as dg
import polars as pl

from prox_assets.core.ingest import (
    IngestResult,
    Quarantined,
    UnreadableInput,
    format_of,
    read_documents,
    shard_name,
)
from prox_assets.metadata import counts_table, histogram, lineage, md_table
from prox_assets.partitions import shard_partitions
from prox_resources.catalog import Catalog
from prox_resources.store import ObjectStore

INCOMING = "incoming/"


def incoming_files(store: ObjectStore) -> dict[str, str]:
    """shard -> store key of every supported file under incoming/."""
    out: dict[str, str] = {}
    for key in store.list(INCOMING):
        if format_of(key) is not None:
            out.setdefault(shard_name(key), key)
    return out


def raw_key(shard: str) -> str:
    return f"raw/{shard}.parquet"


def default_source(shard: str) -> str:
    """``pydocs-03`` -> ``pydocs``: the collection a shard belongs to."""
    return re.sub(r"[-_]?\d+$", "", shard) or shard


def _quarantine_frame(items: list[Quarantined], shard: str, source_file: str, tags: dict) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {"shard": shard, "source_file": source_file, "locator": q.locator, "reason": q.reason,
             "detail": q.detail[:1000], "sample": q.sample, **tags}
            for q in items
        ],
        schema={"shard": pl.String, "source_file": pl.String, "locator": pl.String, "reason": pl.String,
                "detail": pl.String, "sample": pl.String, "run_id": pl.String, "partition_key": pl.String},
    )


@dg.asset(
    partitions_def=shard_partitions,
    group_name="ingest",
    kinds={"parquet", "duckdb"},
    owners=["team:data-platform"],
    code_version="ingest-v1",
    description=(
        "One raw input file (JSONL, Parquet, HTML or WARC) normalised to the document schema "
        "(doc_id = content hash, source, url, text, metadata) in raw/<shard>.parquet. Every "
        "document is registered in the catalog; unreadable inputs are quarantined with a reason."
    ),
)
def raw_corpus(context: dg.AssetExecutionContext, store: ObjectStore, catalog: Catalog) -> dg.MaterializeResult:
    shard = context.partition_key
    tags = lineage(context)
    source_file = incoming_files(store).get(shard)
    if source_file is None:
        raise dg.Failure(f"no file for shard {shard!r} under {store.uri(INCOMING)}")
    context.log.info(f"reading {store.uri(source_file)}")

    try:
        with store.open_read(source_file) as f:
            result = read_documents(f, source_file, shard, default_source=default_source(shard))
    except UnreadableInput as exc:
        result = IngestResult(quarantined=[Quarantined("file", "unreadable_file", str(exc))])
    if not result.documents:
        _record(catalog, shard, source_file, result, None, tags)
        reasons = Counter(q.reason for q in result.quarantined)
        raise dg.Failure(
            f"nothing could be read from {store.uri(source_file)}: "
            f"{dict(reasons) or 'the file holds no records'}",
            metadata={"n_quarantined": len(result.quarantined)},
        )

    frame = result.frame()
    uri = store.write_parquet(raw_key(shard), frame)
    _record(catalog, shard, source_file, result, frame, tags)
    context.log.info(
        f"{shard}: read {result.n_read}, ingested {frame.height}, quarantined {len(result.quarantined)}"
    )

    preview = frame.head(5).select("doc_id", "source", "url", "n_words", "text").rows()
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": frame.height,
            "path": dg.MetadataValue.path(uri),
            "source_file": store.uri(source_file),
            "n_read": result.n_read,
            "n_ingested": frame.height,
            "n_quarantined": len(result.quarantined),
            "quarantine_reasons": counts_table(Counter(q.reason for q in result.quarantined), "reason"),
            "sources": counts_table(Counter(frame["source"].to_list()), "source"),
            "total_chars": int(frame["n_chars"].sum()),
            "words_per_document": histogram(frame["n_words"].to_list()),
            "preview": md_table(["doc_id", "source", "url", "words", "text"], preview),
        }
    )


def _record(catalog: Catalog, shard: str, source_file: str, result: IngestResult,
            frame: pl.DataFrame | None, tags: dict) -> None:
    """Documents, quarantine and counts of this shard, replacing any earlier ingestion of it."""
    documents = None
    if frame is not None:
        documents = frame.select("doc_id", "shard", "source", "url", "n_chars", "n_words").with_columns(
            raw_path=pl.lit(raw_key(shard)),
            row_index=pl.int_range(frame.height, dtype=pl.Int64),
            run_id=pl.lit(tags["run_id"]),
            partition_key=pl.lit(shard),
        )
    counts = pl.DataFrame([{
        "shard": shard, "source_file": source_file, "n_read": result.n_read,
        "n_ingested": len(result.documents), "n_quarantined": len(result.quarantined),
        "raw_path": raw_key(shard) if frame is not None else None, **tags,
    }])
    catalog.replace_many([
        ("documents", {"shard": shard}, documents),
        ("quarantine", {"shard": shard}, _quarantine_frame(result.quarantined, shard, source_file, tags)),
        ("ingestions", {"shard": shard}, counts),
    ])


@dg.sensor(
    target=[raw_corpus],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a shard partition for every new file under incoming/ and ingests it.",
)
def incoming_files_sensor(context: dg.SensorEvaluationContext, store: ObjectStore) -> dg.SensorResult:
    known = set(context.instance.get_dynamic_partitions(shard_partitions.name))
    new = sorted(set(incoming_files(store)) - known)
    if not new:
        return dg.SensorResult(skip_reason="no new files under incoming/")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=s, run_key=f"ingest:{s}") for s in new],
        dynamic_partitions_requests=[shard_partitions.build_add_request(new)],
    )
