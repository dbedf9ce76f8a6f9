"""Running assets in this process: the Dagster instance, materializing partitions with progress
lines, and plans (declarative lists of steps: asset, partitions, config) run one step after the
other. The ``prox`` commands (``ingest``, ``target add``, ``demo``) and the tests call these; they
are what a run launched from the UI does, minus the daemon.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from prox_resources.settings import file_lock, prox_home, settings

Echo = Callable[[str], None]

_INSTANCES: dict[str, dg.DagsterInstance] = {}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def instance() -> dg.DagsterInstance:
    """The Dagster instance, created (its SQLite storage and migrations, on a fresh home) under a
    file lock, once per process: commands started together never migrate one database at once.
    STARTED runs of killed ``prox`` commands on this machine are marked failed here."""
    from prox_resources.run_launcher import fail_dead_local_runs

    home = settings().dagster_home or ""
    if home not in _INSTANCES:
        with file_lock(Path(home or prox_home()) / ".prox-instance.lock"):
            found = dg.DagsterInstance.get()
            for run_id in fail_dead_local_runs(found):
                _stderr(f"run {run_id}: its prox process is gone; marked failed")
        _INSTANCES[home] = found
    return _INSTANCES[home]


# What each asset's progress line shows from its materialization metadata.
SUMMARY_KEYS = {
    "raw_corpus": ("n_read", "n_ingested", "n_quarantined"),
    "seed_scores": ("dagster/row_count", "keep_ratio", "mean_edu_expected", "documents_per_second"),
    "sft_programs": ("sft_version", "n_train", "n_val", "n_rejected"),
    "refined_corpus": (
        "documents_in",
        "kept",
        "dropped",
        "errored",
        "tokens_kept_ratio",
        "lines_removed",
        "executor_errors",
        "documents_per_second",
    ),
    "target_set": ("task", "n_target", "n_heldout"),
    "landmark_influence": (
        "dagster/row_count",
        "landmarks",
        "wall_clock_vs_exact",
        "flops_vs_rds_model",
    ),
    "selected_subset": ("budget", "pool_size", "selected_score_mean", "pool_score_mean"),
    "refiner": (
        "refiner_version",
        "train_seconds",
        "loss_first_last",
        "refiner_macro_f1",
        "base_macro_f1",
        "refiner_line_f1",
        "base_line_f1",
        "heldout_doc_labelled_macro_f1",
        "heldout_pydocs_heldout_line_f1",
        "heldout_pydocs_heldout_gold_text_kept",
        "heldout_news_heldout_gold_text_kept",
        "heldout_clean_austen_tokens_kept",
        "refiner_pair",
    ),
    "trained_checkpoint": (
        "dagster/row_count",
        "train_tokens_per_seed",
        "mean_heldout_loss",
        "mean_accuracy",
        "mean_exact_match",
        "mean_f1",
        "mean_prose_perplexity",
    ),
    "evaluation_report": ("variants", "missing_variants"),
}


def materialize_partitions(
    asset: str,
    partition_keys: list[str],
    config: Mapping[str, Any] | None = None,
    echo: Echo = print,
    per_run: int | None = 0,
) -> dict[str, str]:
    """Materialize partitions of one asset in-process, with progress lines. An asset whose
    backfill policy takes several partitions per run (the model assets: they load their models
    once per run) gets one run per partition range of up to that many partitions, as a backfill
    would; others one run per partition. ``per_run``: 0 follows the policy, 1 forces a run per
    partition, None no bound. Returns partition -> ``ok`` | ``failed: <message>``."""
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    from prox_assets.definitions import ASSETS, build_resources
    from prox_assets.partition_runs import partition_ranges
    from prox_resources.run_launcher import worker_tags

    current = instance()
    resources = build_resources()
    run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    if config:
        run_config["ops"] = {asset: {"config": dict(config)}}
    assets_def = next(a for a in ASSETS if a.key == dg.AssetKey(asset))
    if per_run == 0:
        policy = assets_def.backfill_policy
        per_run = policy.max_partitions_per_run if policy else 1
    runs = (
        [[k] for k in partition_keys]
        if per_run == 1 or len(partition_keys) < 2
        else partition_ranges(assets_def.partitions_def, partition_keys, per_run, current)
    )
    outcome: dict[str, str] = {}
    i = 0
    for keys in runs:
        started = time.monotonic()
        tags = {"prox/launched_by": "cli", **worker_tags()}
        if len(keys) > 1:  # a partition key range: what a backfill run of this asset gets
            tags |= {
                ASSET_PARTITION_RANGE_START_TAG: keys[0],
                ASSET_PARTITION_RANGE_END_TAG: keys[-1],
            }
        result = dg.materialize(
            ASSETS,
            selection=[asset],
            partition_key=keys[0] if len(keys) == 1 else None,
            instance=current,
            resources=resources,
            run_config=run_config,
            raise_on_error=False,
            tags=tags,
        )
        took = time.monotonic() - started
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        if failure and failure.step_failure_data.error.cls_name == INTERRUPTED_ERROR:
            raise Interrupted(f"{asset}: run {result.run_id} stopped by a signal")
        metadata = materialization_metadata(current, result.run_id)
        msg = _step_error(failure.step_failure_data.error) if failure else "run failed"
        shared = f" (one run of {len(keys)} partitions)" if len(keys) > 1 else ""
        for key in keys:
            i += 1
            # a run that failed may still have materialized some of its partitions
            meta = metadata.get(key)
            if meta is not None:
                outcome[key] = "ok"
                detail = ", ".join(
                    f"{k.split('/')[-1]}={meta[k]}"
                    for k in SUMMARY_KEYS.get(asset, ())
                    if k in meta
                )
                echo(
                    f"[{i}/{len(partition_keys)}] {asset}[{key}] ok in {took:.1f}s{shared}  {detail}"
                )
            else:
                outcome[key] = f"failed: {msg}"
                echo(f"[{i}/{len(partition_keys)}] {asset}[{key}] FAILED: {msg}")
    return outcome


def _step_error(error) -> str:
    """A failed step's message: the error raised in the asset, not Dagster's wrapper around it
    ("Error occurred while executing op ..."), which says nothing a person can act on."""
    if error.cls_name != "DagsterExecutionStepExecutionError" or error.cause is None:
        return error.message.strip()
    while error.cls_name == "DagsterExecutionStepExecutionError" and error.cause is not None:
        error = error.cause
    # an exception's message may run on (a DuckDB error's hint, its SQL): its first line
    return next(iter(error.message.strip().splitlines()), error.cls_name)


# Dagster turns SIGINT/SIGTERM inside a step into this error and a failed run, which
# raise_on_error=False would hand back like any failure: the caller must stop, not go on.
INTERRUPTED_ERROR = "DagsterExecutionInterruptedError"


class Interrupted(KeyboardInterrupt):
    """A run was stopped by SIGINT or SIGTERM: the runs after it are not started."""


def materialization_metadata(current: dg.DagsterInstance, run_id: str) -> dict[str, dict]:
    """Each partition a run materialized, with its metadata. From the event log: the
    materializations a failed run of several partitions logged for its finished ones are there."""
    records = current.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    return {
        str(e.asset_materialization.partition): {
            k: v.value for k, v in e.asset_materialization.metadata.items()
        }
        for e in records
    }


def prefixed(asset: str, outcome: Mapping[str, str]) -> dict[str, str]:
    """``asset[key]`` -> outcome, for a plan's summary of what failed."""
    return {f"{asset}[{k}]": v for k, v in outcome.items()}


# --- plans --------------------------------------------------------------------------------------
class PlanState:
    """What a plan's later steps read from the earlier ones, looked up when a step starts: the
    shards registered (and those this plan uploaded), the newest refiner version."""

    def __init__(self, uploaded: Sequence[str] = ()) -> None:
        self.uploaded = list(uploaded)

    @property
    def shards(self) -> list[str]:
        """Every shard in incoming/ (what seed_scores and the refined corpus cover)."""
        from prox_assets.ingest import incoming_files
        from prox_resources.store import ObjectStore

        return sorted(incoming_files(ObjectStore()))

    @property
    def refiner_version(self) -> str | None:
        """The newest registered refiner version (doc + chunk pair): what refined_pool's
        dependents read by default."""
        from prox_assets.lineage import newest_refiner_version

        return newest_refiner_version(instance())


Keys = Sequence[str] | Callable[[PlanState], Sequence[str]]


@dataclass(frozen=True)
class Step:
    """One step of a plan: materialize ``asset`` for ``partitions`` (a list, or a function of
    the plan's state: an empty list skips the step) with ``config`` (the asset config's fields
    that differ from its defaults). ``register``: add the keys to the asset's dynamic partitions
    first (a new target). ``title``: the progress header, formatted with the state's
    ``refiner_version``; none when empty."""

    asset: str
    partitions: Keys
    config: Mapping[str, Any] = field(default_factory=dict)
    title: str = ""
    register: bool = False

    def keys(self, state: PlanState) -> list[str]:
        return list(self.partitions(state) if callable(self.partitions) else self.partitions)


def register_partitions(asset: str, keys: Sequence[str]) -> list[str]:
    """Add ``keys`` to ``asset``'s dynamic partitions; returns those that were new."""
    from prox_assets.definitions import ASSETS

    assets_def = next(a for a in ASSETS if a.key == dg.AssetKey(asset))
    partitions_def = assets_def.partitions_def
    if not isinstance(partitions_def, dg.DynamicPartitionsDefinition) or not partitions_def.name:
        raise TypeError(f"{asset}: not partitioned by a dynamic partitions definition")
    current = instance()
    new = [k for k in keys if not current.has_dynamic_partition(partitions_def.name, k)]
    if new:
        current.add_dynamic_partitions(partitions_def.name, new)
    return new


def run_plan(
    steps: Sequence[Step], state: PlanState | None = None, echo: Echo = print
) -> dict[str, str]:
    """Run every step in order, each through ``materialize_partitions``; a step whose partitions
    are empty (what it needs does not exist) is skipped. A step with failed partitions does not
    stop the plan (the others' work is still worth finishing), but an asset none of whose
    partitions has succeeded in this plan does: the steps after it read what it writes. Returns
    ``asset[key]`` -> outcome."""
    state = state or PlanState()
    outcome: dict[str, str] = {}
    for n, step in enumerate(steps):
        keys = step.keys(state)
        if not keys:
            continue
        if step.title:
            echo(f"== {step.title.format(refiner_version=state.refiner_version)}")
        if step.register:
            register_partitions(step.asset, keys)
        done = materialize_partitions(step.asset, keys, step.config, echo=echo)
        outcome |= prefixed(step.asset, done)
        if not any(v == "ok" for k, v in outcome.items() if k.startswith(f"{step.asset}[")):
            skipped = [s.asset for s in steps[n + 1 :]]
            echo(f"== every {step.asset} partition failed: not running {', '.join(skipped)}")
            outcome |= {f"{a}[*]": "failed: not run (an earlier step failed)" for a in skipped}
            break
    return outcome


def failed(outcome: Mapping[str, str]) -> list[str]:
    return [k for k, v in outcome.items() if v.startswith("failed")]
