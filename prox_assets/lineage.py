"""Which upstream version a step consumes, as Dagster recorded it.

Every input of a step is explicit in the asset graph (README: "Refiners, refinement, backfills, audits"):

- the refined pool a step reads is ``refined_pool[<refiner_version>]``, reached through a
  ``LastPartitionMapping`` (the newest registered refiner version: one partition, so Dagster's
  staleness and input provenance see it whatever the number of shards) unless the step's config
  names another version;
- a version produced by an upstream partition of the same key (the SFT set of a level, the
  influence scores of a target, the selection of a target) is read from that partition's latest
  materialization in the event log, never from "the newest catalog row";
- every asset publishes its content version as its Dagster data version and names what it
  consumed in its materialization metadata, so the event log alone answers "which refiner
  version, which SFT set, which selection".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

import dagster as dg

from prox_assets.partitions import refiner_version_partitions


@dataclass(frozen=True)
class Recorded:
    """An upstream partition's latest materialization: its data version and metadata values."""

    asset: str
    partition: str | None
    data_version: str | None
    metadata: Mapping[str, object]
    run_id: str
    storage_id: int

    def value(self, key: str) -> str:
        if key not in self.metadata:
            where = f"{self.asset}[{self.partition}]" if self.partition else self.asset
            raise dg.Failure(
                f"{where} (run {self.run_id}) records no {key!r}: materialize it again"
            )
        return str(self.metadata[key])


def recorded(instance: dg.DagsterInstance, asset: str, partition: str | None) -> Recorded | None:
    """The latest materialization of ``asset[partition]`` in the event log, if any."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None
        ),
        limit=1,
    ).records
    if not records:
        return None
    event = records[0].asset_materialization
    return Recorded(
        asset=asset,
        partition=partition,
        data_version=(event.tags or {}).get("dagster/data_version"),
        metadata={k: getattr(v, "value", v) for k, v in event.metadata.items()},
        run_id=records[0].run_id,
        storage_id=records[0].storage_id,
    )


def required(instance: dg.DagsterInstance, asset: str, partition: str | None) -> Recorded:
    found = recorded(instance, asset, partition)
    if found is None:
        raise dg.Failure(f"{asset}[{partition}] is not materialized: materialize it first")
    return found


def newest_refiner_version(instance: dg.DagsterInstance) -> str | None:
    """The refiner version a ``LastPartitionMapping`` on ``refiner_version`` maps to: the last
    registered key (``refiner`` registers a new pair when it trains a new doc or chunk refiner)."""
    keys = instance.get_dynamic_partitions(refiner_version_partitions.name)
    return keys[-1] if keys else None


def consumed_refiner_version(context: dg.AssetExecutionContext, configured: str = "") -> str | None:
    """The refiner version a step reads: the one its config names, else the ``refined_pool``
    partition its dependency maps to (the newest)."""
    return configured or newest_refiner_version(context.instance)


def content_version(*parts: object) -> str:
    """A short content hash for a data version."""
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:12]
