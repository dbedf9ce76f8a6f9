"""The ``prox`` command line: demo, ingest, programs, benchmarks, catalog, web UI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from prox_resources.settings import REPO_ROOT, configure_environment, downloads_dir, prox_home


def _user_error(exc: Exception) -> str | None:
    """One line for an error a user can act on (bad SQL, a refused name, S3 403, a full disk);
    None for anything else, whose traceback is worth seeing."""
    import duckdb

    from prox_assets.core.names import InvalidName
    from prox_resources.settings import store_url

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, duckdb.Error):
        return f"catalog: {first}"
    if isinstance(exc, InvalidName):
        return first
    remote = "://" in store_url()
    if isinstance(exc, PermissionError) and remote:
        return (
            f"{store_url()}: access denied ({first}); check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY "
            "and the bucket's policy"
        )
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # no S3 support installed
        BotoCoreError = ClientError = ()
    if isinstance(exc, (BotoCoreError, ClientError)):
        return f"{store_url()}: {first}"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {first}"
    return None


class _Main(click.Group):
    """Errors a user can act on end as one line (``Error: ...``), not a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            message = _user_error(exc)
            if message is None:
                raise
            raise click.ClickException(message) from exc


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ProX refinement and Influence Distillation selection, orchestrated by Dagster."""
    configure_environment()


# --- ingestion -------------------------------------------------------------------------------
_INSTANCES: dict[str, object] = {}


def _instance():
    """The Dagster instance, created (its SQLite storage and migrations, on a fresh home) under a
    file lock, once per process: commands started together never migrate one database at once.
    STARTED runs of killed ``prox`` commands on this machine are marked failed here."""
    import dagster as dg

    from prox_resources.run_launcher import fail_dead_local_runs
    from prox_resources.settings import file_lock

    home = os.environ.get("DAGSTER_HOME", "")
    if home not in _INSTANCES:
        with file_lock(Path(home or prox_home()) / ".prox-instance.lock"):
            instance = dg.DagsterInstance.get()
            for run_id in fail_dead_local_runs(instance):
                click.echo(f"run {run_id}: its prox process is gone; marked failed", err=True)
        _INSTANCES[home] = instance
    return _INSTANCES[home]


def _no_follow(path, flags):
    return os.open(path, flags | os.O_NOFOLLOW)


def _input_files(paths: list[Path]) -> list[Path]:
    """The files to ingest: every argument that is a file, every supported file under a folder.
    Symbolic links are refused (they could point anywhere), never followed."""
    from prox_assets.core.ingest import format_of

    files: list[Path] = []
    for p in paths:
        if p.is_symlink():
            raise click.ClickException(
                f"{p}: a symbolic link; give the file itself (links are not followed)"
            )
        if p.is_dir():
            for root, dirs, names in os.walk(p):  # does not descend into linked folders
                dirs.sort()
                for name in sorted(dirs + names):
                    q = Path(root) / name
                    if q.is_symlink() and (name in dirs or format_of(name)):
                        raise click.ClickException(f"{q}: a symbolic link; links are not followed")
                files += [
                    Path(root) / n
                    for n in sorted(names)
                    if format_of(n) and (Path(root) / n).is_file()
                ]
        elif p.is_file():
            files.append(p)
        else:
            raise click.ClickException(f"{p}: no such file or directory")
    return files


def _same_content(store, key: str, path: Path) -> bool:
    import hashlib

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
    paths: list[Path], run: bool = True, echo=click.echo, replace: bool = False
) -> dict[str, str]:
    """Upload files to incoming/, add their shard partitions, and (optionally) ingest them.

    Returns shard -> "ok" | "failed: <message>" | "registered". Everything is checked before
    anything is uploaded: file names (``core/names.py``), symbolic links, and shard collisions
    with each other and with what incoming/ holds. An upload never overwrites another file: the
    object is created only if its key is free (``ObjectStore.create_file``), under a lock shared by
    the commands of this machine; the same bytes again are fine, other bytes need ``replace``.
    If registering fails, the objects this call created are deleted again.
    """
    from prox_assets.core.ingest import format_of
    from prox_assets.core.names import InvalidName, check_input_file_name, shard_name
    from prox_assets.ingest import scan_incoming
    from prox_assets.layout import INCOMING, incoming_key
    from prox_assets.partitions import shard_partitions
    from prox_resources.settings import file_lock, lock_path
    from prox_resources.store import ObjectStore

    files = _input_files(paths)
    plan: dict[str, tuple[Path, str]] = {}  # shard -> (file, key)
    for f in files:
        if format_of(f.name) is None:
            raise click.ClickException(f"{f}: unsupported format")
        try:
            check_input_file_name(f.name)
        except InvalidName as exc:
            raise click.ClickException(f"{f}: {exc}") from exc
        shard = shard_name(f.name)
        if shard in plan:
            raise click.ClickException(f"{f}: shard {shard!r} already comes from {plan[shard][0]}")
        plan[shard] = (f, incoming_key(f.name))
    instance = _instance()  # before any upload: a failure here leaves nothing behind
    store = ObjectStore()
    created: list[str] = []
    with file_lock(lock_path("incoming")):
        scan = scan_incoming(store)
        for shard, (f, key) in plan.items():
            if shard in scan.collisions:
                raise click.ClickException(
                    f"{f}: shard {shard!r} is ambiguous in incoming/: "
                    f"{', '.join(scan.collisions[shard])}; remove all but one"
                )
            other = scan.files.get(shard)
            if other is not None and other != key:
                raise click.ClickException(
                    f"{f}: shard {shard!r} already comes from {store.uri(other)}"
                )
            if key in scan.refused:
                raise click.ClickException(
                    f"{f}: {store.uri(key)} exists and is refused: {scan.refused[key]}"
                )
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
                    raise click.ClickException(
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
    config: dict | None = None,
    echo=click.echo,
    per_run: int | None = 0,
) -> dict[str, str]:
    """Materialize partitions of one asset in-process, with progress lines. An asset whose
    backfill policy takes several partitions per run (the model assets: they load their models
    once per run) gets one run per partition range of up to that many partitions, as a backfill
    would; others one run per partition. ``per_run``: 0 follows the policy, 1 forces a run per
    partition, None no bound."""
    import dagster as dg
    from dagster._core.storage.tags import (
        ASSET_PARTITION_RANGE_END_TAG,
        ASSET_PARTITION_RANGE_START_TAG,
    )

    from prox_assets.definitions import ASSETS, build_resources
    from prox_assets.partition_runs import partition_ranges
    from prox_resources.run_launcher import worker_tags

    instance = _instance()
    resources = build_resources()
    run_config = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    if config:
        run_config["ops"] = {asset: {"config": config}}
    assets_def = next(a for a in ASSETS if a.key == dg.AssetKey(asset))
    if per_run == 0:
        policy = assets_def.backfill_policy
        per_run = policy.max_partitions_per_run if policy else 1
    runs = (
        [[k] for k in partition_keys]
        if per_run == 1 or len(partition_keys) < 2
        else partition_ranges(assets_def.partitions_def, partition_keys, per_run, instance)
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
            instance=instance,
            resources=resources,
            run_config=run_config,
            raise_on_error=False,
            tags=tags,
        )
        took = time.monotonic() - started
        metadata = _materialization_metadata(instance, result.run_id)
        failure = next((e for e in result.all_events if e.is_step_failure), None)
        msg = failure.step_failure_data.error.message.strip() if failure else "run failed"
        shared = f" (one run of {len(keys)} partitions)" if len(keys) > 1 else ""
        for key in keys:
            i += 1
            meta = metadata.get(
                key
            )  # a run that failed may still have materialized some of its partitions
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


def _materialization_metadata(instance, run_id: str) -> dict[str, dict]:
    """Each partition a run materialized, with its metadata. From the event log: the
    materializations a failed run of several partitions logged for its finished ones are there."""
    import dagster as dg

    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    return {
        str(e.asset_materialization.partition): {
            k: v.value for k, v in e.asset_materialization.metadata.items()
        }
        for e in records
    }


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--no-run", is_flag=True, help="Only upload and register partitions.")
@click.option(
    "--replace",
    is_flag=True,
    help="Replace a file already in incoming/ under the same name by different content.",
)
def ingest(paths: tuple[Path, ...], no_run: bool, replace: bool) -> None:
    """Add files (or folders of files) as raw_corpus shard partitions and ingest them."""
    outcome = ingest_paths(list(paths), run=not no_run, replace=replace)
    failed = {k: v for k, v in outcome.items() if v.startswith("failed")}
    _print_ingest_summary()
    if failed:
        raise click.ClickException(f"{len(failed)} shard(s) failed: {', '.join(failed)}")


def _print_ingest_summary() -> None:
    from prox_resources.catalog import Catalog

    catalog = Catalog()
    counts = catalog.named_query("ingestion_totals").row(0, named=True)
    reasons = catalog.named_query("quarantine_reasons")
    click.echo(
        f"catalog: {counts['shards']} shards, read {counts['n_read']} = ingested {counts['n_ingested']}"
        f" + quarantined {counts['n_quarantined']}"
    )
    for reason, n in reasons.rows():
        click.echo(f"  quarantined {n:>5}  {reason}")


@main.command()
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Default: $PROX_HOME/samples"
)
def samples(out: Path | None) -> None:
    """Assemble the real sample corpus from the installed data packages."""
    for p in _build_samples(out):
        click.echo(p)


def _build_samples(out: Path | None = None) -> list[Path]:
    from prox_assets.core.samples import MissingSampleSource, build_sample_corpus

    try:
        return build_sample_corpus(out or prox_home() / "samples", downloads_dir())
    except MissingSampleSource as exc:
        raise click.ClickException(f"{exc} (run deploy/setup.sh)") from exc


# Refiner budgets: `demo` fits the demo's ~20 minutes on a 2-core CPU; `cpu-large` is about 45
# minutes of refiner training and a larger held-out evaluation on the same machine (README).
BUDGETS = {
    "demo": {
        "sft": {"chunk_docs_per_shard": 12},
        "steps": {"doc": 80, "chunk": 64},
        "refiner": {
            "quality_pages": 4,
            "quality_news": 2,
            "quality_clean": 4,
            "quality_doc_pages": 12,
            "quality_max_chars": 5000,
            "eval_examples": 8,
        },
    },
    "cpu-large": {
        "sft": {"chunk_docs_per_shard": 60},
        "steps": {"doc": 120, "chunk": 450},
        "refiner": {
            "quality_pages": 24,
            "quality_news": 8,
            "quality_clean": 12,
            "quality_doc_pages": 40,
            "quality_max_chars": 10000,
        },
    },
}


@main.command()
@click.option(
    "--budget",
    type=click.Choice(sorted(BUDGETS)),
    default="demo",
    show_default=True,
    help="Refiner budget: SFT documents, training steps and held-out evaluation size.",
)
@click.option(
    "--seeds-per-shard", default=6, show_default=True, help="Seed documents scored per shard."
)
@click.option(
    "--chunk-docs-per-shard",
    type=int,
    default=None,
    help="Documents per shard for chunk SFT (overrides --budget).",
)
@click.option(
    "--annotator",
    type=click.Choice(["rules", "llm", "both"]),
    default="rules",
    show_default=True,
    help="Chunk labels for pages without gold labels.",
)
@click.option(
    "--refiner-steps",
    type=int,
    default=None,
    help="Fine-tuning steps per refiner level (overrides --budget).",
)
@click.option(
    "--refine-docs", default=4, show_default=True, help="Documents refined per shard (0 = all)."
)
@click.option(
    "--refine-max-chars",
    default=4000,
    show_default=True,
    help="Sample refined documents among those this short (0 = any length).",
)
@click.option(
    "--checkpoint-targets",
    default="arc-challenge",
    show_default=True,
    help="Comma-separated targets (gsm8k, arc-challenge) to train and evaluate every variant for; "
    "'' skips training.",
)
@click.option(
    "--train-steps",
    default=6,
    show_default=True,
    help="Training steps per checkpoint (x 4 windows x 128 tokens: the token budget of every variant).",
)
@click.option(
    "--eval-examples",
    default=32,
    show_default=True,
    help="Held-out target examples per evaluation.",
)
def demo(
    budget: str,
    seeds_per_shard: int,
    chunk_docs_per_shard: int | None,
    annotator: str,
    refiner_steps: int | None,
    refine_docs: int,
    refine_max_chars: int,
    checkpoint_targets: str,
    train_steps: int,
    eval_examples: int,
) -> None:
    """Build the sample corpus and materialize every asset of the graph on it."""
    from prox_assets.ingest import incoming_files
    from prox_resources.store import ObjectStore

    started = time.monotonic()
    click.echo(f"PROX_HOME={prox_home()}")
    click.echo("== sample corpus")
    files = _build_samples()
    click.echo(f"{len(files)} files in {prox_home() / 'samples'}")
    click.echo("== raw_corpus")
    outcome = ingest_paths(files)
    shards = sorted(incoming_files(ObjectStore()))
    click.echo(f"== seed_scores ({seeds_per_shard} seeds per shard through the model)")
    outcome |= _prefixed(
        "seed_scores",
        materialize_partitions("seed_scores", shards, {"seeds_per_shard": seeds_per_shard}),
    )
    click.echo("== sft_programs")
    sft = {**BUDGETS[budget]["sft"], "annotator": annotator}
    steps = {level: refiner_steps or n for level, n in BUDGETS[budget]["steps"].items()}
    if chunk_docs_per_shard is not None:
        sft["chunk_docs_per_shard"] = chunk_docs_per_shard
    outcome |= _prefixed(
        "sft_programs", materialize_partitions("sft_programs", ["doc", "chunk"], sft)
    )
    click.echo(
        f"== refiner (LoRA, {steps['doc']} + {steps['chunk']} steps on this machine, budget {budget})"
    )
    for level in ("doc", "chunk"):
        outcome |= _prefixed(
            "refiner",
            materialize_partitions(
                "refiner", [level], {**BUDGETS[budget]["refiner"], "max_steps": steps[level]}
            ),
        )
    version = _latest_refiner_version()
    if version:
        click.echo(f"== refined_corpus (refiner {version}, {refine_docs} documents per shard)")
        keys = [f"{version}|{shard}" for shard in shards]
        outcome |= _prefixed(
            "refined_corpus",
            materialize_partitions(
                "refined_corpus",
                keys,
                {"max_docs": refine_docs, "sample_max_chars": refine_max_chars},
            ),
        )
        outcome |= _prefixed("refined_pool", materialize_partitions("refined_pool", [version]))
        click.echo("== targets, landmark_influence, selected_subset (pool: the refined corpus)")
        for name, task in (("gsm8k", "gsm8k"), ("arc-challenge", "arc_challenge")):
            add_target(name, task, n_target=8, n_heldout=100, seed=0)
        influence = {"landmarks": 8, "exact_holdout": 8, "max_len": 96, "warmup_steps": 8}
        outcome |= _prefixed(
            "landmark_influence",
            materialize_partitions("landmark_influence", ["gsm8k", "arc-challenge"], influence),
        )
        outcome |= _prefixed(
            "selected_subset",
            materialize_partitions(
                "selected_subset", ["gsm8k", "arc-challenge"], {"budget_fraction": 0.25}
            ),
        )
        trained = [t.strip() for t in checkpoint_targets.split(",") if t.strip()]
        if trained:
            from prox_assets.partitions import VARIANTS

            click.echo(
                f"== trained_checkpoint ({len(VARIANTS)} variants x 2 seeds, {train_steps} steps each), "
                "evaluation_report"
            )
            outcome |= _prefixed(
                "trained_checkpoint",
                materialize_partitions(
                    "trained_checkpoint",
                    [f"{t}|{v}" for t in trained for v in VARIANTS],
                    {
                        "max_steps": train_steps,
                        "eval_examples": eval_examples,
                        "prose_passages": 12,
                    },
                ),
            )
            outcome |= _prefixed(
                "evaluation_report", materialize_partitions("evaluation_report", trained)
            )
    click.echo("== summary")
    _print_ingest_summary()
    _print_synthesis_summary()
    _print_refiner_summary()
    _print_refined_summary()
    _print_evaluation_summary()
    click.echo(f"demo finished in {time.monotonic() - started:.0f}s; browse it with `prox ui`")
    failed = [k for k, v in outcome.items() if v.startswith("failed")]
    if failed:
        raise click.ClickException(f"failed: {', '.join(failed)}")


def _print_refiner_summary() -> None:
    """The evaluations of the refiners of the newest refiner version (Dagster's, as the assets read it)."""
    from prox_assets.refinement import refiner_pair
    from prox_resources.catalog import Catalog

    version = _latest_refiner_version()
    if not version:
        return
    pair = refiner_pair(Catalog(), version)
    rows = (
        Catalog()
        .named_query("refiner_pair_evals", doc_version=pair.doc, chunk_version=pair.chunk)
        .rows()
    )
    for level, version, model, dataset, metric, value in rows:
        click.echo(
            f"refiner[{level}] {version} {dataset:>19} {metric:>14} {model:>16} = {value:.3f}"
        )


def _latest_refiner_version() -> str | None:
    """The newest registered refiner version: what refined_pool's dependents read by default."""
    from prox_assets.refinement import latest_refiner_version

    return latest_refiner_version(_instance())


def _print_refined_summary() -> None:
    from prox_resources.catalog import Catalog

    rows = Catalog().named_query("refinement_totals").rows()
    for version, n, kept, dropped, errored, chars in rows:
        click.echo(
            f"refined_corpus[{version}]: {n} documents = kept {kept} + dropped {dropped} + errored {errored}; "
            f"{chars or 0:.1%} of characters kept"
        )


def _print_evaluation_summary() -> None:
    from prox_resources.catalog import Catalog

    rows = Catalog().named_query("evaluation_summary").rows()
    for target, variant, metric, mean, std, n in rows:
        click.echo(
            f"evaluation[{target}] {metric:>16} {variant:>14} = {mean:.4f} ± {std:.4f} (seeds {n})"
        )


def _prefixed(asset: str, outcome: dict[str, str]) -> dict[str, str]:
    return {f"{asset}[{k}]": v for k, v in outcome.items()}


def _print_synthesis_summary() -> None:
    from prox_resources.catalog import Catalog

    catalog = Catalog()
    scores = catalog.named_query("seed_score_totals").row(0, named=True)
    click.echo(
        f"seed_scores: {scores['n']} documents in {scores['shards']} shards, mean expected edu "
        f"{scores['edu'] or 0:.2f}, format {scores['fmt'] or 0:.2f}, keep ratio {scores['keep'] or 0:.2f}"
    )
    # the SFT set of each level's latest sft_programs materialization (what the refiners read)
    from prox_assets.lineage import recorded

    instance = _instance()
    current = [
        (level, found.value("sft_version"))
        for level in ("chunk", "doc")
        if (found := recorded(instance, "sft_programs", level))
    ]
    sets = [
        catalog.named_query("sft_set", level=level, sft_version=version).rows()[0]
        for level, version in current
    ]
    labels = {
        (level, label): n
        for level, version in current
        for label, n in catalog.named_query(
            "sft_label_counts", level=level, sft_version=version
        ).rows()
    }
    for level, version, n_train, n_val, n_rejected in sets:
        mix = ", ".join(f"{lab}={n}" for (lvl, lab), n in sorted(labels.items()) if lvl == level)
        click.echo(
            f"sft_programs[{level}] {version}: train {n_train}, val {n_val}, rejected {n_rejected}; {mix}"
        )


# --- targets ----------------------------------------------------------------------------------
def _name_param(kind: str):
    """A click callback: the value must be a valid name (``core/names.py``), or None if optional."""

    def check(ctx, param, value):
        from prox_assets.core.names import InvalidName, validate_name

        if value is None:
            return None
        try:
            if isinstance(value, tuple):  # a multiple option
                return tuple(validate_name(v, kind) for v in value)
            return validate_name(value, kind)
        except InvalidName as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc

    return check


def add_target(name: str, task: str, n_target: int, n_heldout: int, seed: int) -> str:
    """Write a target's example sets to the store and register its partition."""
    import polars as pl

    from prox_assets.core.names import validate_name
    from prox_assets.core.targets import load_task, split_target
    from prox_assets.layout import target_key, target_prefix
    from prox_assets.partitions import target_partitions
    from prox_resources.catalog import Catalog
    from prox_resources.store import ObjectStore

    validate_name(name, "target name")
    if n_target < 1 or n_heldout < 0:
        raise ValueError(f"need n_target >= 1 and n_heldout >= 0 (got {n_target}, {n_heldout})")
    store = ObjectStore()
    target, heldout = split_target(load_task(task), n_target, n_heldout, seed)
    prefix = target_prefix(name)
    store.write_parquet(target_key(name, "target"), pl.DataFrame([e.to_dict() for e in target]))
    store.write_parquet(target_key(name, "heldout"), pl.DataFrame([e.to_dict() for e in heldout]))
    Catalog().replace_rows(
        "targets",
        {"target": name},
        pl.DataFrame(
            [
                {
                    "target": name,
                    "task": task,
                    "n_target": n_target,
                    "n_heldout": n_heldout,
                    "seed": seed,
                    "path": store.uri(prefix),
                }
            ]
        ),
    )
    _instance().add_dynamic_partitions(target_partitions.name, [name])
    return store.uri(prefix)


@main.group()
def target() -> None:
    """Target tasks for data selection."""


@target.command("add")
@click.argument("name", callback=_name_param("target name"))
@click.option(
    "--task", required=True, help="gsm8k | squad | arc_challenge | arc_easy | sciq | mmlu | math"
)
@click.option(
    "--n-target",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Examples that selection optimises for.",
)
@click.option(
    "--n-heldout",
    default=200,
    show_default=True,
    type=click.IntRange(min=0),
    help="Disjoint examples for evaluation.",
)
@click.option("--seed", default=0, show_default=True)
def target_add(name: str, task: str, n_target: int, n_heldout: int, seed: int) -> None:
    """Register a target: a small set of task examples plus a disjoint held-out set."""
    try:
        uri = add_target(name, task, n_target, n_heldout, seed)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"target {name}: {n_target} target + {n_heldout} held-out {task} examples -> {uri}")


# --- refinement: backfills and audits -----------------------------------------------------------
@main.command()
@click.option(
    "--refiner-version",
    callback=_name_param("refiner version"),
    required=True,
    help="The refiner_version partition key (d…-c…).",
)
@click.option(
    "--url", default="http://127.0.0.1:3000", show_default=True, help="The Dagster webserver."
)
@click.option(
    "--shard",
    "shards",
    multiple=True,
    callback=_name_param("shard"),
    help="Only these shards (default: every shard).",
)
@click.option(
    "--wait/--no-wait", default=True, show_default=True, help="Follow the backfill until it ends."
)
def backfill(refiner_version: str, url: str, shards: tuple[str, ...], wait: bool) -> None:
    """Refine every shard with a refiner version, then record its pool (refined_pool): one
    backfill run by the daemon."""
    from prox_assets.backfill import BackfillError, launch_backfill, wait_for_backfill
    from prox_assets.partition_runs import partition_ranges
    from prox_assets.partitions import refiner_version_partitions, shard_partitions
    from prox_assets.refinement import refined_corpus

    instance = _instance()
    if not instance.has_dynamic_partition(refiner_version_partitions.name, refiner_version):
        known = instance.get_dynamic_partitions(refiner_version_partitions.name)
        raise click.ClickException(f"unknown refiner version {refiner_version!r}; known: {known}")
    targets = list(shards) or instance.get_dynamic_partitions(shard_partitions.name)
    names = [f"{refiner_version}|{s}" for s in targets]
    # The daemon cuts the backfill into runs by refined_corpus's backfill policy: each run a range
    # of up to max_partitions_per_run shards, loading the two refiners once.
    per_run = refined_corpus.backfill_policy.max_partitions_per_run
    runs = len(partition_ranges(refined_corpus.partitions_def, names, per_run, instance))
    try:
        # refined_pool[<version>] in the same backfill, once every shard is refined: what selection
        # and training read, and what marks them stale (prox_assets.lineage)
        backfill_id = launch_backfill(
            url,
            ["refined_corpus"],
            names,
            title=f"refine with {refiner_version}",
            tags={"prox/launched_by": "prox backfill"},
            downstream=[["refined_pool"]],
        )
        click.echo(
            f"backfill {backfill_id}: {len(names)} partitions of refined_corpus in {runs} run(s) "
            f"(up to {per_run or len(names)} partitions a run, the refiners loaded once a run), "
            f"then refined_pool[{refiner_version}] -> {url}/overview/backfills/{backfill_id}"
        )
        if wait:
            final = wait_for_backfill(
                url, backfill_id, on_status=lambda s: click.echo(f"  {s['status']}")
            )
            if final["status"] not in ("COMPLETED", "COMPLETED_SUCCESS"):
                raise click.ClickException(f"backfill {backfill_id} ended {final['status']}")
    except (BackfillError, OSError) as exc:
        raise click.ClickException(f"backfill through {url} failed: {exc}") from exc


@main.command()
@click.argument("doc_id")
@click.option("--json", "as_json", is_flag=True)
def audit(doc_id: str, as_json: bool) -> None:
    """A document's whole lineage: ingestion, seed scores, SFT use, every refiner version's programs."""
    from prox_assets.audit import audit_document, format_audit
    from prox_resources.catalog import PlainCatalog

    result = audit_document(
        PlainCatalog(), doc_id
    )  # no Dagster import: starts in a fraction of a second
    click.echo(json.dumps(result, default=str, indent=2) if as_json else format_audit(result))
    if not result.get("ingested"):
        raise SystemExit(1)


# --- programs --------------------------------------------------------------------------------
@main.group()
def program() -> None:
    """Parse and execute ProX programs."""


@program.command("run")
@click.option("--stage", type=click.Choice(["doc", "chunk"]), required=True)
@click.option(
    "--text-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True
)
@click.option(
    "--program-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True
)
@click.option("--normalize-scope", type=click.Choice(["window", "document"]), default="window")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def program_run(
    stage: str, text_file: Path, program_file: Path, normalize_scope: str, as_json: bool
) -> None:
    """Run one program against one document and print text, dropped, reason, edits, errors."""
    from prox_assets.core.executor import ExecutorConfig, execute_chunk_program, execute_doc_program

    text = text_file.read_text(encoding="utf-8", errors="surrogateescape")
    prog = program_file.read_text(encoding="utf-8", errors="replace")
    config = ExecutorConfig(normalize_scope=normalize_scope)
    run = execute_doc_program if stage == "doc" else execute_chunk_program
    result = run(text, prog, config)
    if as_json:
        click.echo(json.dumps(result.to_dict(), ensure_ascii=False, indent=2))
        return
    click.echo(f"dropped: {result.dropped}" + (f" ({result.reason})" if result.reason else ""))
    click.echo(f"ignored: {result.ignored}  calls: {result.n_calls}")
    for e in result.edits:
        if e.kind == "remove_lines":
            click.echo(f"edit: remove_lines {e.line_start}..{e.line_end}")
        else:
            click.echo(f"edit: normalize {e.source!r} -> {e.target!r} x{e.count}")
    for issue in result.errors:
        click.echo(f"error: [{issue.kind}] line {issue.line}: {issue.message}")
    for issue in result.warnings:
        click.echo(f"warning: [{issue.kind}] {issue.message}")
    click.echo("--- text")
    click.echo(result.text)


# --- benchmarks ------------------------------------------------------------------------------
@main.group()
def bench() -> None:
    """Benchmarks, each reported against a baseline measured in the same run."""


@bench.command("executor")
@click.option("--docs", default=20000, show_default=True, help="Documents per timed pass.")
@click.option("--json", "as_json", is_flag=True)
def bench_executor(docs: int, as_json: bool) -> None:
    """Parse + execute throughput of realistic programs on the sample corpus."""
    from prox_assets.benchmarks import executor_benchmark, sample_texts

    report = executor_benchmark(sample_texts(_build_samples()), n_docs=docs)
    click.echo(json.dumps(report, indent=2) if as_json else _format_report(report))


@bench.command("ingest")
@click.option(
    "--shard-mb",
    default=2048,
    show_default=True,
    help="Size of the generated JSONL shard whose peak RSS is measured.",
)
@click.option("--json", "as_json", is_flag=True)
def bench_ingest(shard_mb: int, as_json: bool) -> None:
    """Streaming ingestion against the whole-file reader on the sample corpus (same run), and the
    peak RSS of a large shard and of two bombs, each ingested in its own process."""
    import tempfile

    from prox_assets.benchmarks import ingest_benchmark

    with tempfile.TemporaryDirectory(prefix="prox-bench-ingest-") as tmp:
        report = ingest_benchmark(_build_samples(), shard_mb, Path(tmp))
    click.echo(json.dumps(report, indent=2) if as_json else _format_report(report))


@bench.command("scale")
@click.option(
    "--partitions",
    default=1000,
    show_default=True,
    type=click.IntRange(min=1),
    help="Shard partitions registered (a tiny JSONL file each) and backfilled.",
)
@click.option(
    "--documents",
    default=1_000_000,
    show_default=True,
    type=click.IntRange(min=100),
    help="Synthetic catalog documents (each with a program run) for the audit and size figures.",
)
@click.option(
    "--window-s",
    default=150,
    show_default=True,
    type=click.IntRange(min=10),
    help="How long the daemon's throughput is watched (the backfill is canceled after).",
)
@click.option("--json", "as_json", is_flag=True)
def bench_scale(partitions: int, documents: int, window_s: int, as_json: bool) -> None:
    """Backfill launch time, daemon throughput, the UI's partition status query, audit latency
    and catalog size, in a scratch PROX_HOME (a temporary folder; yours is not touched)."""
    import tempfile

    from prox_assets.scale_bench import format_report, scale_benchmark

    with tempfile.TemporaryDirectory(prefix="prox-bench-scale-") as tmp:
        report = scale_benchmark(Path(tmp), partitions, documents, window_s)
    click.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@bench.command("refine")
@click.option("--docs", default=16, show_default=True, help="Documents refined (both stages).")
@click.option(
    "--refiner-version",
    callback=_name_param("refiner version"),
    default=None,
    help="Default: the newest; the base model if none.",
)
@click.option(
    "--dtypes",
    default="float32,auto",
    show_default=True,
    help="Precisions compared, the first the reference (agreement is against it): float32; "
    "auto (what the pipeline runs: bf16 autocast where the CPU has bf16 units); "
    "bfloat16 (bf16 weights).",
)
@click.option("--json", "as_json", is_flag=True)
def bench_refine(docs: int, refiner_version: str | None, dtypes: str, as_json: bool) -> None:
    """Refinement throughput with the real model in each precision on this machine, against its
    fp32 and bf16 matmul peaks, and how often the precisions write the same programs."""
    import polars as pl

    from prox_assets.benchmarks import refine_benchmark
    from prox_assets.layout import raw_paths, refiner_prefix
    from prox_assets.refinement import refiner_pair
    from prox_resources.catalog import Catalog
    from prox_resources.device import DeviceSettings
    from prox_resources.models import fetch_model
    from prox_resources.store import ObjectStore

    store, device, engine = ObjectStore(), _device(), _engine()
    version = refiner_version or _latest_refiner_version()
    if (
        version
    ):  # trained refiners are local folders: a local backend (openai falls back to transformers)
        engine = engine.local()
        pair = refiner_pair(Catalog(), version)
        doc_model = str(fetch_model(store, refiner_prefix("doc", pair.doc)))
        chunk_model = str(fetch_model(store, refiner_prefix("chunk", pair.chunk)))
        sizes = (pair.doc_max_tokens, pair.window_tokens, pair.chunk_max_new_tokens)
    else:  # the engine's own model, wherever it runs
        doc_model = chunk_model = engine.model
        sizes = (384, 384, 160)
    texts = pl.concat([store.read_parquet(k).select("text") for k in raw_paths(Catalog()).values()])
    texts = texts.sample(n=min(docs, texts.height), seed=0)["text"].to_list()

    def load(dtype: str):
        settings = DeviceSettings(device=device.device, dtype=dtype)
        return engine.load(settings, model=doc_model), engine.load(settings, model=chunk_model)

    report = refine_benchmark(texts, load, *sizes, dtypes=dtypes.split(","))
    report = {
        "refiner_version": version or f"base model {engine.model}",
        "backend": engine.backend,
        "device": device.resolve_device(),
        **report,
    }
    click.echo(json.dumps(report, indent=2) if as_json else _format_report(report))


@bench.command("influence")
@click.option(
    "--pool",
    "pool_size",
    default=400,
    show_default=True,
    help="Pool samples, split evenly over four domains (pydocs, news, Austen, MATH); all get exact scores.",
)
@click.option(
    "--landmarks", default="12,24,48,96", show_default=True, help="Landmark counts to compare."
)
@click.option(
    "--draws", default=5, show_default=True, help="Landmark draws per count (mean and spread)."
)
@click.option(
    "--embeddings",
    default="jvp-mean,jvp-last,hidden-mean",
    show_default=True,
    help="Comma-separated: jvp-mean, jvp-last, hidden-mean.",
)
@click.option(
    "--task", default="math", show_default=True, help="Target task (math: held-out MATH problems)."
)
@click.option(
    "--target-domain",
    default="math",
    show_default=True,
    help="The pool domain the target belongs to.",
)
@click.option("--n-target", default=8, show_default=True)
@click.option("--max-len", default=128, show_default=True)
@click.option("--piece-chars", default=600, show_default=True)
@click.option("--warmup-steps", default=16, show_default=True)
@click.option(
    "--stability-samples",
    default=200,
    show_default=True,
    help="Samples re-scored under a second warm-up seed (0 = the whole pool).",
)
@click.option(
    "--dtype",
    type=click.Choice(["auto", "float32", "bfloat16"]),
    default="auto",
    show_default=True,
    help="auto: bf16 autocast where this CPU or GPU runs bf16 fast, else fp32.",
)
@click.option("--json", "as_json", is_flag=True)
def bench_influence(
    pool_size: int,
    landmarks: str,
    draws: int,
    embeddings: str,
    task: str,
    target_domain: str,
    n_target: int,
    max_len: int,
    piece_chars: int,
    warmup_steps: int,
    stability_samples: int,
    dtype: str,
    as_json: bool,
) -> None:
    """Exact influence (stability, domain AUROC), landmark estimates against it per embedding
    and landmark count, the embedding baseline and the cost, in one run on this machine."""
    from prox_assets.benchmarks import domain_pool
    from prox_assets.core.influence import InfluenceConfig
    from prox_assets.core.influence_eval import influence_study
    from prox_assets.core.samples import build_sample_corpus
    from prox_assets.core.targets import load_task, split_target

    home = prox_home()
    files = build_sample_corpus(home / "samples", home / "downloads")
    texts, domains = domain_pool(files, pool_size, piece_chars)
    targets, _ = split_target(load_task(task), n_target, 0)
    model, tokenizer = _engine().local().load_model(_device())  # as landmark_influence loads it
    config = InfluenceConfig(max_len=max_len, warmup_steps=warmup_steps, dtype=dtype)
    report = influence_study(
        model,
        tokenizer,
        texts,
        domains,
        target_domain,
        [t.prompt for t in targets],
        [t.answer for t in targets],
        config,
        [int(x) for x in landmarks.split(",")],
        draws,
        embeddings.split(","),
        stability_samples=stability_samples,
        log=lambda m: click.echo(m, err=True),
    )
    report.pop("exact_scores")
    click.echo(json.dumps(report, indent=2 if as_json else 1))


@bench.command("selection")
@click.option(
    "--pool", "pool_size", default=400, show_default=True, help="Pool samples over four domains."
)
@click.option("--task", default="math", show_default=True)
@click.option("--n-target", default=8, show_default=True)
@click.option(
    "--heldout",
    default=60,
    show_default=True,
    help="Held-out target examples the checkpoints are scored on.",
)
@click.option("--landmarks", default=24, show_default=True)
@click.option("--budget-fraction", default=0.25, show_default=True)
@click.option("--train-steps", default=24, show_default=True)
@click.option("--batch-size", default=8, show_default=True)
@click.option("--seq-len", default=128, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--seeds", default="0,1", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_selection(
    pool_size: int,
    task: str,
    n_target: int,
    heldout: int,
    landmarks: int,
    budget_fraction: float,
    train_steps: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    seeds: str,
    as_json: bool,
) -> None:
    """Does influence selection help? Select from a four-domain pool for a target, train the
    base model on the selection and on a random subset of the same size (same token budget,
    several seeds), and compare the held-out target loss."""
    from prox_assets.benchmarks import domain_pool
    from prox_assets.core.influence import InfluenceConfig
    from prox_assets.core.influence_eval import selection_experiment
    from prox_assets.core.samples import build_sample_corpus
    from prox_assets.core.targets import load_task, split_target

    home = prox_home()
    files = build_sample_corpus(home / "samples", home / "downloads")
    texts, domains = domain_pool(files, pool_size, 600)
    targets, held = split_target(load_task(task), n_target, heldout)
    train = _evidence_train_config(train_steps, batch_size, seq_len, lr)
    report = selection_experiment(
        *_local_models(_engine().local(), _device()),
        texts,
        domains,
        [t.prompt for t in targets],
        [t.answer for t in targets],
        [t.prompt for t in held],
        [t.answer for t in held],
        InfluenceConfig(landmarks=landmarks, max_len=128),
        train,
        budget_fraction,
        [int(x) for x in seeds.split(",")],
        log=lambda m: click.echo(m, err=True),
    )
    click.echo(json.dumps(report, indent=2 if as_json else 1))


@bench.command("refinement")
@click.option(
    "--refiner-version",
    callback=_name_param("refiner version"),
    default=None,
    help="refiner_version key (default: the newest).",
)
@click.option(
    "--pages", default=48, show_default=True, help="Docs pages (from no SFT set) to train on."
)
@click.option(
    "--heldout",
    default=16,
    show_default=True,
    help="Other such pages whose clean text is the evaluation.",
)
@click.option(
    "--max-chars", default=8000, show_default=True, help="Pages at most this long (a CPU budget)."
)
@click.option("--train-steps", default=40, show_default=True)
@click.option("--batch-size", default=4, show_default=True)
@click.option("--seq-len", default=256, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--seeds", default="0,1", show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_refinement(
    refiner_version: str | None,
    pages: int,
    heldout: int,
    max_chars: int,
    train_steps: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    seeds: str,
    as_json: bool,
) -> None:
    """Does refinement help? The chunk refiner cleans docs pages; the base model is trained on
    the same pages as raw, refined and clean (layout gold) text under one token budget, several
    seeds, and scored by perplexity on the clean text of held-out pages."""
    from prox_assets.core.chunking import hf_token_counter
    from prox_assets.core.refiner_quality import refinement_training_evidence, refinement_variants
    from prox_assets.layout import refiner_prefix
    from prox_assets.refinement import refiner_pair
    from prox_resources.catalog import Catalog
    from prox_resources.models import fetch_model
    from prox_resources.store import ObjectStore

    version = refiner_version or _latest_refiner_version()
    if not version:
        raise click.ClickException(
            "no refiner version: materialize refiner[doc] and refiner[chunk] (or run prox demo)"
        )
    pair = refiner_pair(Catalog(), version)
    if pair.heldout_pages is None:
        raise click.ClickException(
            f"{version}: its SFT set has no held-out docs pages; re-materialize sft_programs"
        )
    device, engine = _device(), _engine().local()
    backend = engine.load(
        device, model=str(fetch_model(ObjectStore(), refiner_prefix("chunk", pair.chunk)))
    )
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    variants, held = refinement_variants(
        backend,
        hf_token_counter(backend.tokenizer),
        pair.window_tokens,
        pair.chunk_max_new_tokens,
        pages,
        heldout,
        max_chars,
        pair.heldout_pages,
        pair.split_seed,
        log,
    )
    train = _evidence_train_config(train_steps, batch_size, seq_len, lr)
    report = refinement_training_evidence(
        *_local_models(engine, device),
        variants,
        held,
        train,
        [int(x) for x in seeds.split(",")],
        log=log,
    )
    click.echo(json.dumps({"refiner_version": version, **report}, indent=2 if as_json else 1))


def _evidence_train_config(steps: int, batch_size: int, seq_len: int, lr: float):
    """The evidence benchmarks' checkpoints: LoRA r=8 on every block, one token budget."""
    from prox_assets.core.training_loop import TrainConfig

    return TrainConfig(
        method="lora",
        lora_r=8,
        lora_alpha=16,
        lora_layers=None,
        max_steps=steps,
        batch_size=batch_size,
        lr=lr,
        min_lr=lr / 10,
        warmup_steps=2,
        max_seq_len=seq_len,
    )


def _engine():
    """The model engine the environment names (PROX_ENGINE_BACKEND, PROX_MODEL, and for openai
    PROX_OPENAI_BASE_URL / OPENAI_API_KEY, read where used), as Dagster runs get it."""
    from prox_resources.engine import ModelEngine
    from prox_resources.models import DEFAULT_MODEL

    return ModelEngine(
        backend=os.environ.get("PROX_ENGINE_BACKEND", "transformers"),
        model=os.environ.get("PROX_MODEL", DEFAULT_MODEL),
    )


def _device():
    from prox_resources.device import DeviceSettings

    return DeviceSettings.from_environment()


def _local_models(engine, device):
    """(load, serve) over the engine's local model, for the evidence benchmarks' core functions."""

    def load(checkpoint=None, train=False):
        return engine.load_model(device, adapter=checkpoint, train=train)

    return load, lambda loaded: engine.serve(loaded, device)


def _format_report(report: dict) -> str:
    return "\n".join(f"{k:>36}: {v}" for k, v in report.items())


# --- catalog and UI --------------------------------------------------------------------------
def _json_value(value):
    """DuckDB sums are HUGEINT/DECIMAL: emit numbers as numbers, anything else as text."""
    import decimal

    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


@main.command()
@click.argument("sql")
@click.option("--json", "as_json", is_flag=True, help="Print rows as a JSON list of objects.")
def catalog(sql: str, as_json: bool) -> None:
    """Run a read-only SQL query against the DuckDB catalog (no file or network access)."""
    import polars as pl

    from prox_resources.catalog import Catalog

    frame = Catalog().query_untrusted(sql)  # duckdb.Error: one line, through _Main
    if as_json:
        click.echo(json.dumps(frame.to_dicts(), default=_json_value, ensure_ascii=False))
        return
    with pl.Config(tbl_rows=50, tbl_cols=20, fmt_str_lengths=60):
        click.echo(frame)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=3000, show_default=True)
def ui(host: str, port: int) -> None:
    """Start the Dagster web UI and daemon (dagster dev) on this project."""
    cmd = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "-w",
        str(REPO_ROOT / "workspace.yaml"),
        "-h",
        host,
        "-p",
        str(port),
    ]
    click.echo(f"DAGSTER_HOME={os.environ.get('DAGSTER_HOME')}  ->  http://{host}:{port}")
    raise SystemExit(subprocess.call(cmd, cwd=REPO_ROOT))


if __name__ == "__main__":
    main()
