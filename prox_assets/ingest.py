"""Stage 1, ingestion: raw input files -> ``raw_corpus[shard]``.

A file dropped under ``incoming/`` in the store becomes a ``shard`` partition (the sensor below,
or ``prox ingest``), and materializing that partition normalises it into
``raw/<shard>.parquet`` and registers every document (and every quarantined input) in the
catalog.

One run ingests many shards: a backfill, the sensor and ``prox ingest`` give a run up to
``PROX_PARTITIONS_PER_RUN`` shards (default 32) as a partition key range
(``INGEST_BACKFILL_POLICY``), so the run's process start and Dagster import are paid once for
all of them. The shards of a run are ingested one after the other, each exactly as a run of its
own would (its own raw file, its catalog rows in one commit, its stale raw files deleted after
it, its own materialization and metadata); one that fails fails only itself (``partition_runs``).
raw_corpus has no asset checks, so nothing reports once per run.
"""

import hashlib
import os
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import polars as pl

from prox_assets.core.errors import UserError
from prox_assets.core.ingest import (
    IngestTally,
    Quarantined,
    UnreadableInput,
    format_of,
    write_shard,
)
from prox_assets.core.names import InvalidName, check_input_file_name, shard_name
from prox_assets.core.unicode import printable
from prox_assets.layout import (
    INCOMING,
    incoming_key,
    legacy_raw_key,
    raw_paths,
    raw_prefix,
    raw_run_key,
)
from prox_assets.metadata import counts_table, histogram, lineage, md_table
from prox_assets.partition_runs import (
    INGEST_BACKFILL_POLICY,
    PARTITIONS_PER_RUN,
    materialize_each,
    partition_run_request,
)
from prox_assets.partitions import shard_partitions
from prox_resources.catalog import Catalog, ParquetRows
from prox_resources.device import CPU_STEP
from prox_resources.settings import file_lock, lock_path, owned_tempdir, settings
from prox_resources.store import ObjectStore


@dataclass
class IncomingScan:
    """What incoming/ holds: the files that are shard sources, and those that cannot be."""

    files: dict[str, str] = field(default_factory=dict)  # shard -> store key
    collisions: dict[str, list[str]] = field(
        default_factory=dict
    )  # shard -> keys that all map to it
    refused: dict[str, str] = field(default_factory=dict)  # key -> why it is no shard source

    def problems(self) -> list[str]:
        out = [
            f"shard {shard!r} is ambiguous: {', '.join(keys)} all map to it; none is ingested "
            "until all but one are removed"
            for shard, keys in sorted(self.collisions.items())
        ]
        return out + [f"{key}: refused, {why}" for key, why in sorted(self.refused.items())]


def scan_incoming(store: ObjectStore) -> IncomingScan:
    """Every supported file under incoming/, by shard. Symbolic links and bad names are refused;
    two files that map to one shard are a collision, reported and used for neither, never settled
    by their order."""
    scan = IncomingScan()
    by_shard: dict[str, list[str]] = defaultdict(list)
    for key in store.list(INCOMING):
        if format_of(key) is None:
            continue
        if store.is_link(key):
            scan.refused[key] = "a symbolic link (the store does not follow links)"
            continue
        try:
            check_input_file_name(key)
        except InvalidName as exc:
            scan.refused[key] = str(exc)
            continue
        by_shard[shard_name(key)].append(key)
    for shard, keys in by_shard.items():
        if len(keys) == 1:
            scan.files[shard] = keys[0]
        else:
            scan.collisions[shard] = sorted(keys)
    return scan


def incoming_files(store: ObjectStore) -> dict[str, str]:
    """shard -> store key of every file under incoming/ that is the one source of its shard."""
    return scan_incoming(store).files


def incoming_file(store: ObjectStore, shard: str) -> str:
    """The store key of ``shard``'s file, or a Failure that says why there is none."""
    scan = scan_incoming(store)
    if shard in scan.files:
        return scan.files[shard]
    if shard in scan.collisions:
        raise dg.Failure(
            f"shard {shard!r} is ambiguous: {', '.join(scan.collisions[shard])} all map to it; "
            "remove all but one from incoming/"
        )
    refused = [f"{key}: {why}" for key, why in scan.refused.items() if shard_name(key) == shard]
    raise dg.Failure(
        f"no file for shard {shard!r} under {store.uri(INCOMING)}"
        + (f" ({'; '.join(refused)})" if refused else "")
    )


def raw_key(catalog: Catalog, shard: str) -> str:
    """The current raw file of ``shard``; a clear failure if it was never ingested."""
    path = raw_paths(catalog, [shard]).get(shard)
    if path is None:
        raise dg.Failure(
            f"shard {shard!r} has no ingested documents: materialize raw_corpus[{shard}] first"
        )
    return path


def default_source(shard: str) -> str:
    """``pydocs-03`` -> ``pydocs``: the collection a shard belongs to."""
    return re.sub(r"[-_]?\d+$", "", shard) or shard


def _quarantine_frame(
    items: list[Quarantined], shard: str, source_file: str, tags: dict
) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "shard": shard,
                "source_file": source_file,
                "locator": q.locator,
                "reason": q.reason,
                "detail": printable(q.detail[:1000]),
                "sample": printable(q.sample),
                "n_records": q.n_records,
                **tags,
            }
            for q in items
        ],
        schema={
            "shard": pl.String,
            "source_file": pl.String,
            "locator": pl.String,
            "reason": pl.String,
            "detail": pl.String,
            "sample": pl.String,
            "n_records": pl.Int64,
            "run_id": pl.String,
            "partition_key": pl.String,
        },
    )


class _NothingIngested(Exception):
    """Raised inside the raw file's atomic write so that no empty file is committed."""


@dg.asset(
    partitions_def=shard_partitions,
    group_name="ingest",
    kinds={"parquet", "duckdb"},
    owners=["team:data-platform"],
    code_version="ingest-v1",
    **CPU_STEP,
    backfill_policy=INGEST_BACKFILL_POLICY,
    description=(
        "One raw input file (JSONL, Parquet, HTML or WARC) normalised to the document schema "
        "(doc_id = content hash, source, url, text, metadata) in raw/<shard>.parquet. Every "
        "document is registered in the catalog; unreadable inputs are quarantined with a reason."
    ),
)
def raw_corpus(
    context: dg.AssetExecutionContext, store: ObjectStore, catalog: Catalog
) -> dg.MaterializeResult:
    # A run may hold many shards (a backfill range, INGEST_BACKFILL_POLICY; the sensor's ranges;
    # `prox ingest`): one process start and one Dagster import for all of them. Each shard is
    # ingested on its own; one that fails fails only itself (materialize_each).
    return materialize_each(
        context, lambda shard: ingest_shard(context, store, catalog, str(shard))
    )


def ingest_shard(
    context: dg.AssetExecutionContext, store: ObjectStore, catalog: Catalog, shard: str
) -> dict:
    """One partition of raw_corpus: its raw file, its catalog rows (documents, quarantine, counts)
    committed together, then the shard's stale raw files deleted; returns its metadata. Raises a
    Failure, after recording the counts and quarantine, when nothing could be read.

    Two ingestions of one shard (the sensor beside ``prox ingest --replace``, a backfill beside
    either) run one after the other under the shard's lock: each one's write, commit and clean-up
    happen while no other ingestion of the shard is between its write and its commit, so the
    clean-up can never delete the file another run is about to name. The lock is this machine's
    (``$PROX_HOME/locks``); workers on other machines share no lock, and there the clean-up still
    keeps the file the catalog names at that moment."""
    with file_lock(lock_path(f"ingest-{shard}"), timeout_s=SHARD_LOCK_TIMEOUT_S):
        return _ingest_shard_locked(context, store, catalog, shard)


# an ingestion waits this long for another ingestion of the same shard (a big file) before failing
SHARD_LOCK_TIMEOUT_S = 6 * 3600.0


def _ingest_shard_locked(
    context: dg.AssetExecutionContext, store: ObjectStore, catalog: Catalog, shard: str
) -> dict:
    tags = lineage(context, partition_key=shard)
    source_file = incoming_file(store, shard)  # read under the lock: the newest upload wins
    context.log.info(f"{shard}: reading {store.uri(source_file)}")
    key = raw_run_key(shard, tags["run_id"])
    html_text = settings().html_text  # PROX_HTML_TEXT: how HTML pages become text

    with owned_tempdir("prox-ingest-") as tmp:
        index_path = os.path.join(tmp, "index.parquet")
        try:
            with store.open_read(source_file) as f, store.open_write(key) as out:
                tally = write_shard(
                    f,
                    source_file,
                    shard,
                    out,
                    index_path,
                    default_source=default_source(shard),
                    html_text=html_text,
                )
                if tally.n_ingested == 0:
                    raise _NothingIngested
        except UnreadableInput as exc:
            tally = IngestTally()
            tally.quarantine(Quarantined("file", "unreadable_file", str(exc)))
        except _NothingIngested:
            pass
        ingested = tally.n_ingested > 0
        _record(catalog, shard, source_file, tally, index_path if ingested else None, key, tags)
        stats = _index_stats(index_path) if ingested else None
    _delete_stale_raw_files(store, catalog, shard)

    if not ingested or stats is None:
        raise dg.Failure(
            f"nothing could be read from {store.uri(source_file)}: "
            f"{dict(tally.reasons) or 'the file holds no records'}",
            metadata={"n_read": tally.n_read, "n_quarantined": tally.n_quarantined},
        )
    duplicates = duplicates_in_other_shards(catalog, shard)
    context.log.info(
        f"{shard}: read {tally.n_read}, ingested {tally.n_ingested}, quarantined {tally.n_quarantined}"
        + (
            f"; {sum(duplicates.values())} documents also in other shards {dict(duplicates)}"
            if duplicates
            else ""
        )
    )
    preview = [(d["doc_id"], d["source"], d["url"], d["n_words"], d["text"]) for d in tally.preview]
    return {
        "dagster/row_count": tally.n_ingested,
        "path": dg.MetadataValue.path(store.uri(key)),
        "source_file": store.uri(source_file),
        "html_text": html_text,
        "n_read": tally.n_read,
        "n_ingested": tally.n_ingested,
        "n_quarantined": tally.n_quarantined,
        "n_quarantine_rows_not_sampled": tally.n_unsampled,
        "quarantine_reasons": counts_table(tally.reasons, "reason"),
        "duplicates_in_other_shards": counts_table(duplicates, "other shard"),
        "sources": counts_table(stats["sources"], "source"),
        "total_chars": stats["total_chars"],
        "words_per_document": stats["words_per_document"],
        "preview": md_table(["doc_id", "source", "url", "words", "text"], preview),
    }


def _index_stats(index_path: str) -> dict:
    index = pl.scan_parquet(index_path)
    sources = index.group_by("source").len().sort("len", descending=True).head(50).collect()
    words = index.select("n_words").collect()["n_words"]
    return {
        "sources": Counter(dict(sources.rows())),
        "total_chars": int(index.select(pl.col("n_chars").sum()).collect().item()),
        # a histogram needs the values; a sample of them bounds memory on huge shards
        "words_per_document": histogram(words.sample(min(len(words), 100_000), seed=0).to_list()),
    }


def duplicates_in_other_shards(catalog: Catalog, shard: str) -> Counter:
    """other shard -> documents of ``shard`` it holds too (both are kept; this is a report)."""
    return Counter(dict(catalog.named_query("shards_sharing_documents", shard=shard).rows()))


def _delete_stale_raw_files(store: ObjectStore, catalog: Catalog, shard: str) -> None:
    """Remove the raw files of ``shard`` that the catalog does not name now (earlier runs' files,
    killed runs' orphans and half-written ``.tmp-`` files), under the shard's lock."""
    current = raw_paths(catalog, [shard]).get(shard)
    stale = [*store.list(raw_prefix(shard), temporary=True), legacy_raw_key(shard)]
    for key in stale:  # and the old one-file layout
        if key != current:
            store.delete(key)


def _record(
    catalog: Catalog,
    shard: str,
    source_file: str,
    tally: IngestTally,
    index_path: str | None,
    key: str,
    tags: dict,
) -> None:
    """Documents, quarantine and counts of this shard, replacing any earlier ingestion of it.

    A failed ingestion (``index_path`` None) leaves the shard without documents: the shard is what
    its file holds now. Its counts and quarantine are recorded all the same.
    """
    counts = pl.DataFrame(
        [
            {
                "shard": shard,
                "source_file": source_file,
                "n_read": tally.n_read,
                "n_ingested": tally.n_ingested,
                "n_quarantined": tally.n_quarantined,
                "n_quarantine_unsampled": tally.n_unsampled,
                "raw_path": key if index_path else None,
                **tags,
            }
        ]
    )
    writes = [
        (
            "quarantine",
            {"shard": shard},
            _quarantine_frame(tally.samples, shard, source_file, tags),
        ),
        ("ingestions", {"shard": shard}, counts),
    ]
    documents = ParquetRows(index_path, {"raw_path": key, **tags}) if index_path else None
    catalog.replace_many([*writes, ("documents", {"shard": shard}, documents)])


@dg.sensor(
    target=[raw_corpus],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Adds a shard partition for every new file under incoming/ and ingests them, up to "
    "PROX_PARTITIONS_PER_RUN shards a run.",
)
def incoming_files_sensor(
    context: dg.SensorEvaluationContext, store: ObjectStore
) -> dg.SensorResult:
    known = set(context.instance.get_dynamic_partitions(shard_partitions.name))
    scan = scan_incoming(store)
    problems = scan.problems()
    for problem in problems:  # loud, every tick, until someone removes the file
        context.log.warning(problem)
    new = sorted(set(scan.files) - known)
    if not new:
        return dg.SensorResult(
            skip_reason="; ".join(["no new files under incoming/", *problems])[:2000]
        )
    # As a backfill would (INGEST_BACKFILL_POLICY): runs of up to PARTITIONS_PER_RUN new shards,
    # each a partition key range. The daemon adds the new keys in one insert, in this order, before
    # it creates the runs, so each run's keys are a contiguous stretch of the definition. The run
    # key names the range (a single shard keeps its key "ingest:<shard>"): nothing is asked twice.
    runs = [new[i : i + PARTITIONS_PER_RUN] for i in range(0, len(new), PARTITIONS_PER_RUN)]
    return dg.SensorResult(
        run_requests=[partition_run_request("ingest", run) for run in runs],
        dynamic_partitions_requests=[shard_partitions.build_add_request(new)],
    )


# --- uploads: what `prox ingest` does -----------------------------------------------------------
def _no_follow(path, flags):
    return os.open(path, flags | os.O_NOFOLLOW)


def _input_files(paths: list[Path]) -> list[Path]:
    """The files to ingest: every argument that is a file, every supported file under a folder.
    Symbolic links are refused (they could point anywhere), never followed."""
    files: list[Path] = []
    for p in paths:
        if p.is_symlink():
            raise UserError(f"{p}: a symbolic link; give the file itself (links are not followed)")
        if p.is_dir():
            for root, dirs, names in os.walk(p):  # does not descend into linked folders
                dirs.sort()
                for name in sorted(dirs + names):
                    q = Path(root) / name
                    if q.is_symlink() and (name in dirs or format_of(name)):
                        raise UserError(f"{q}: a symbolic link; links are not followed")
                files += [
                    Path(root) / n
                    for n in sorted(names)
                    if format_of(n) and (Path(root) / n).is_file()
                ]
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"{p}: no such file or directory")
    return files


def _same_content(store, key: str, path: Path) -> bool:
    if store.size(key) != path.stat().st_size:
        return False
    digests = []
    for opener in (lambda: store.open_read(key), lambda: open(path, "rb", opener=_no_follow)):  # noqa: SIM115
        h = hashlib.sha256()
        with opener() as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digests.append(h.digest())
    return digests[0] == digests[1]


def ingest_paths(
    paths: list[Path], run: bool = True, echo: Callable[[str], None] = print, replace: bool = False
) -> dict[str, str]:
    """Upload files to incoming/, add their shard partitions, and (optionally) ingest them.

    Returns shard -> "ok" | "failed: <message>" | "registered". Everything is checked before
    anything is uploaded: file names (``core/names.py``), symbolic links, and shard collisions
    with each other and with what incoming/ holds. An upload never overwrites another file: the
    object is created only if its key is free (``ObjectStore.create_file``), under a lock shared by
    the commands of this machine; the same bytes again are fine, other bytes need ``replace``.
    If registering fails, the objects this call created are deleted again.
    """
    from prox_assets.runs import instance as current_instance
    from prox_assets.runs import materialize_partitions

    files = _input_files(paths)
    plan: dict[str, tuple[Path, str]] = {}  # shard -> (file, key)
    for f in files:
        if format_of(f.name) is None:
            raise UserError(f"{f}: unsupported format")
        try:
            check_input_file_name(f.name)
        except InvalidName as exc:
            raise UserError(f"{f}: {exc}") from exc
        shard = shard_name(f.name)
        if shard in plan:
            raise UserError(f"{f}: shard {shard!r} already comes from {plan[shard][0]}")
        plan[shard] = (f, incoming_key(f.name))
    instance = current_instance()  # before any upload: a failure here leaves nothing behind
    store = ObjectStore()
    created: list[str] = []
    with file_lock(lock_path("incoming")):
        scan = scan_incoming(store)
        for shard, (f, key) in plan.items():
            if shard in scan.collisions:
                raise UserError(
                    f"{f}: shard {shard!r} is ambiguous in incoming/: "
                    f"{', '.join(scan.collisions[shard])}; remove all but one"
                )
            other = scan.files.get(shard)
            if other is not None and other != key:
                raise UserError(f"{f}: shard {shard!r} already comes from {store.uri(other)}")
            if key in scan.refused:
                raise UserError(f"{f}: {store.uri(key)} exists and is refused: {scan.refused[key]}")
        try:
            for f, key in plan.values():
                if not store.exists(key):
                    with open(f, "rb", opener=_no_follow) as src:
                        try:
                            store.create_file(src, key)
                            created.append(key)
                            continue
                        except FileExistsError:  # created since: by a process outside this lock
                            pass
                if _same_content(store, key, f):
                    continue
                if not replace:
                    raise UserError(
                        f"{f}: {store.uri(key)} exists with other content; rename the file, or pass --replace"
                    )
                with open(f, "rb", opener=_no_follow) as src, store.open_write(key) as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            instance.add_dynamic_partitions(shard_partitions.name, list(plan))
        except BaseException:
            for key in created:  # an upload that is not registered leaves nothing behind
                store.delete(key)
            raise
    shards = list(plan)
    echo(f"registered {len(shards)} shard(s) under {store.uri(INCOMING)}")
    if not run:
        return dict.fromkeys(shards, "registered")
    return materialize_partitions("raw_corpus", shards, echo=echo)
