"""Many partitions in one run: the backfill policy of the model assets and of ``raw_corpus``, and
the loop inside them.

A model asset loads its models once per run (before its loop over partitions, or through the
engine's per-run cache), so the more partitions one run holds, the fewer loads. Under
``MODEL_BACKFILL_POLICY`` a backfill (the daemon's: ``prox backfill``, the UI) and ``prox demo``
give one run up to ``PROX_PARTITIONS_PER_RUN`` partitions (default 32) as a partition key range,
instead of one run per partition. The bound keeps what a killed run loses bounded, and lets a
deployment with several GPUs work on one backfill in several runs. ``raw_corpus`` has the same
bound (``INGEST_BACKFILL_POLICY``): there, what one run pays once is its process start and imports.

Ranges, as Dagster makes them: a contiguous stretch of keys in the partitions definition's order
(a dynamic dimension: the order keys were added). For a two-dimensional definition (the refined
corpus: refiner_version x shard) a range holds one dimension's key fixed and spans the other, so a
backfill of one refiner version over N shards is one range; a selection with gaps is one range per
contiguous stretch, each its own run.

Failure semantics (``materialize_each``): the partitions of a run are done one after the other. One
that raises is logged and the others still run. If all succeed, Dagster records one
materialization per partition, each with that partition's metadata. If some fail, the finished
ones are recorded as materialized (their files and catalog rows are written) and the run fails,
naming the failed ones: a backfill counts only those as failed, and its retry re-runs only them.
A run of one partition fails exactly as before, with the partition's own exception. A run killed
outright (out of memory, lost machine) records nothing: the backfill re-runs its partitions.

Data versions: ``work`` may return a ``PartitionOutcome`` carrying the partition's content version.
A run of one partition publishes it as its Dagster data version; Dagster gives every partition of
a run the same data version, so a run of several publishes a hash of all of theirs (a partition
whose run-mates changed may then look changed downstream: conservative, never stale-blind).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from prox_resources.settings import ProxSettings

# PROX_PARTITIONS_PER_RUN, fixed when the definitions load: the asset decorators take the policies.
PARTITIONS_PER_RUN = ProxSettings.from_environment().partitions_per_run

# The model assets' policy: up to PARTITIONS_PER_RUN partitions per backfill run.
MODEL_BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=PARTITIONS_PER_RUN)

# raw_corpus's policy, the same bound: an ingestion run's fixed cost is its process start and
# Dagster's import (~25 s a run on a loaded 2-core machine, for a 1.2 KB shard: README, Scale),
# not a model load, but what the bound trades is the same (start-up paid once per run, against
# what a killed run loses and how many runs share the work), so one setting serves both.
INGEST_BACKFILL_POLICY = dg.BackfillPolicy.multi_run(max_partitions_per_run=PARTITIONS_PER_RUN)

# Assets whose runs must stay one partition each (their asset checks report once per step).
ONE_PARTITION_PER_RUN = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)


@dataclass(frozen=True)
class PartitionOutcome:
    """What one partition of a run publishes: its metadata and its content version."""

    metadata: Mapping[str, Any] = field(default_factory=dict)
    data_version: str | None = None


def run_data_version(versions: Mapping[str, str | None]) -> dg.DataVersion | None:
    """The data version of a run's partitions: the one partition's own, or a hash of them all
    (None when a partition has none)."""
    if not versions or any(v is None for v in versions.values()):
        return None
    if len(versions) == 1:
        return dg.DataVersion(next(iter(versions.values())))
    joined = "\n".join(f"{k}={v}" for k, v in sorted(versions.items()))
    return dg.DataVersion(hashlib.sha256(joined.encode()).hexdigest()[:16])


def materialize_each(
    context: dg.AssetExecutionContext,
    work: Callable[[Any], Mapping[str, Any] | PartitionOutcome],
    keys: Sequence[Any] | None = None,
) -> dg.MaterializeResult:
    """Runs ``work(partition_key)`` for every partition of the run (``context.partition_keys``:
    one key, or a range), each returning its materialization metadata (or a ``PartitionOutcome``
    with its data version); see the module docstring for what a failure does."""
    keys = list(context.partition_keys if keys is None else keys)
    done: dict[str, Mapping[str, Any]] = {}
    versions: dict[str, str | None] = {}
    failed: dict[str, str] = {}
    for i, key in enumerate(keys, 1):
        started = time.monotonic()
        try:
            outcome = work(key)
            if not isinstance(outcome, PartitionOutcome):
                outcome = PartitionOutcome(outcome)
            done[str(key)] = outcome.metadata
            versions[str(key)] = outcome.data_version
        except Exception as exc:
            if len(keys) == 1:
                raise  # a one-partition run: the step fails with the partition's own error
            failed[str(key)] = f"{type(exc).__name__}: {exc}"
            context.log.exception(
                f"partition {i}/{len(keys)} {key} failed; the run goes on with the others"
            )
            continue
        if len(keys) > 1:
            context.log.info(
                f"partition {i}/{len(keys)} {key} done in {time.monotonic() - started:.1f}s"
            )
    if failed:
        # Dagster emits the output's materializations only when the step succeeds: record the
        # finished partitions here, so that the backfill counts only the failed ones as failed.
        code_version = context.assets_def.code_versions_by_key.get(context.asset_key)
        for key, metadata in done.items():
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=context.asset_key,
                    partition=key,
                    metadata=dict(metadata),
                    tags={"dagster/code_version": code_version} if code_version else None,
                )
            )
        raise dg.Failure(
            description=f"{len(failed)} of {len(keys)} partitions failed: "
            + "; ".join(f"{k}: {v}" for k, v in failed.items())[:4000],
            metadata={"failed_partitions": sorted(failed), "materialized_partitions": sorted(done)},
        )
    for key, metadata in done.items():
        context.add_asset_metadata(dict(metadata), partition_key=key)
    return dg.MaterializeResult(data_version=run_data_version(versions))


def partition_run_request(run_key_prefix: str, keys: Sequence[str]) -> dg.RunRequest:
    """A sensor's request for one run of ``keys`` (one key, or a contiguous range of them, as
    ``partition_ranges`` cuts them); the run key names the range, so it is requested once."""
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    if len(keys) == 1:
        return dg.RunRequest(partition_key=keys[0], run_key=f"{run_key_prefix}:{keys[0]}")
    return dg.RunRequest(
        run_key=f"{run_key_prefix}:{keys[0]}..{keys[-1]}",
        tags={ASSET_PARTITION_RANGE_START_TAG: keys[0], ASSET_PARTITION_RANGE_END_TAG: keys[-1]},
    )


def partition_ranges(
    partitions_def: dg.PartitionsDefinition,
    keys: Sequence[str],
    per_run: int | None,
    instance: dg.DagsterInstance,
) -> list[list[str]]:
    """``keys`` cut into the runs a backfill would make of them: contiguous ranges of the
    definition (one dimension fixed for a two-dimensional one), at most ``per_run`` keys each
    (None: no bound). Each run's keys in the definition's order; a key the definition does not
    hold gets a run of its own (which fails as a one-partition run would)."""
    from dagster._core.definitions.partitions.context import partition_loading_context

    with partition_loading_context(dynamic_partitions_store=instance):
        subset = partitions_def.subset_with_partition_keys(keys)
        runs = []
        for key_range in subset.get_partition_key_ranges(partitions_def):
            in_range = [str(k) for k in partitions_def.get_partition_keys_in_range(key_range)]
            step = per_run or len(in_range)
            runs += [in_range[i : i + step] for i in range(0, len(in_range), step)]
    covered = {k for run in runs for k in run}
    return runs + [[k] for k in keys if k not in covered]
