"""``prox bench scale`` at a tiny size: every figure is there and sane (no timing thresholds), and
the caller's PROX_HOME is left alone. Plus Dagster's staleness limit, measured on the real graph."""

import json
import os
import subprocess
import sys

import pytest

from prox_assets.scale_bench import (
    _synthetic_doc_ids,
    fill_catalog,
    scale_benchmark,
    staleness_figures,
)
from prox_resources.settings import REPO_ROOT


def test_prox_audit_reads_the_catalog_without_importing_dagster(tmp_path):
    """`prox audit` is a lookup: importing Dagster (~1 s) would be most of its time. Its catalog
    (PlainCatalog) and the command's imports hold no Dagster module."""
    from prox_resources.catalog import PlainCatalog

    path = tmp_path / "catalog.duckdb"
    catalog = PlainCatalog(path=str(path))
    catalog.migrate()
    fill_catalog(catalog, 1000, n_shards=10)
    doc_id = _synthetic_doc_ids(1000, 1)[0]
    env = {
        **os.environ,
        "PROX_HOME": str(tmp_path / "home"),
        "PROX_CATALOG": str(path),
        "PYTHONPATH": str(REPO_ROOT),
    }
    env.pop("DAGSTER_HOME", None)
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "prox_assets.cli", "audit", doc_id, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    audit = json.loads(out.stdout)
    assert len(audit["ingested"]) == 1 and audit["refinements"][0]["refiner_version"]
    imported = [
        line.rsplit("|", 1)[-1].strip()
        for line in out.stderr.splitlines()
        if line.startswith("import time:")
    ]
    assert "duckdb" in imported and not [m for m in imported if m.split(".")[0] == "dagster"]
    # nor pandas/numpy: DuckDB imports them (~0.3 s) to convert a bound Python value; a doc_id is
    # written into the SQL as a literal instead
    assert not [m for m in imported if m.split(".")[0] in ("pandas", "numpy")]


def test_audit_binds_a_value_that_is_no_plain_literal(tmp_path):
    """Only a plain value (a doc_id's characters) becomes a literal; anything else is bound, so a
    quote in the argument is part of the value looked up, never SQL."""
    from prox_assets.audit import _bind, audit_document
    from prox_resources.catalog import PlainCatalog

    catalog = PlainCatalog(path=str(tmp_path / "catalog.duckdb"))
    catalog.migrate()
    fill_catalog(catalog, 100, n_shards=2)
    doc_id = _synthetic_doc_ids(100, 1)[0]
    assert _bind("SELECT 1 WHERE x = $doc_id", doc_id) == (f"SELECT 1 WHERE x = '{doc_id}'", {})
    hostile = f"{doc_id}' OR '1' = '1"
    assert _bind("SELECT 1 WHERE x = $doc_id", hostile) == (
        "SELECT 1 WHERE x = $doc_id",
        {"doc_id": hostile},
    )
    assert len(audit_document(catalog, doc_id)["ingested"]) == 1
    assert audit_document(catalog, hostile)["ingested"] == []


def test_staleness_stops_following_at_100_upstream_partitions(prox_env):
    """sft_programs[doc] depends on every shard of raw_corpus and seed_scores: at 50 shards
    Dagster's staleness follows all 100 upstream partitions, at 100 shards none of them."""
    from prox_assets.cli import _instance
    from prox_assets.partitions import shard_partitions

    instance = _instance()
    instance.add_dynamic_partitions(shard_partitions.name, [f"s{i:03d}" for i in range(50)])
    assert (
        staleness_figures(instance, 50)["sft_programs_doc_upstream_partitions_staleness_follows"]
        == 100
    )
    instance.add_dynamic_partitions(shard_partitions.name, [f"s{i:03d}" for i in range(50, 100)])
    figures = staleness_figures(instance, 100)
    assert figures["sft_programs_doc_upstream_partitions"] == 200
    assert figures["sft_programs_doc_upstream_partitions_staleness_follows"] == 0


@pytest.mark.slow
def test_scale_bench_tiny(tmp_path, prox_env):
    before = dict(os.environ)
    report = scale_benchmark(tmp_path / "bench", n_partitions=3, n_documents=2000, window_s=300)
    json.dumps(report)  # --json prints it as is
    assert {k: os.environ.get(k) for k in ("PROX_HOME", "DAGSTER_HOME", "PROX_CATALOG")} == {
        k: before.get(k) for k in ("PROX_HOME", "DAGSTER_HOME", "PROX_CATALOG")
    }
    assert not (prox_env / "store").exists()  # the caller's home got nothing

    assert report["machine"]["cores_usable"] >= 1 and report["machine"]["ram_gib"] > 0
    assert report["partitions"]["shards"] == 3 and report["partitions"]["register_seconds"] > 0
    assert report["staleness"]["sft_programs_doc_upstream_partitions_staleness_follows"] == 6

    daemon = report["daemon"]
    assert daemon["run_launcher"] == "ProxRunLauncher" and daemon["max_concurrent_runs"] >= 1
    raw = daemon["raw_corpus_backfill"]
    # raw_corpus's backfill policy (up to 32 shards a run): the 3 shards are one run
    assert (
        raw["partitions"] == 3
        and raw["partitions_per_run_policy"] == 32
        and raw["runs_planned"] == 1
    )
    assert raw["accepted_seconds"] > 0 and raw["canceled_after_window"] in (True, False)
    assert raw["runs_requested_in_window"] == 1
    assert 0 < raw["all_runs_requested_seconds"] <= raw["window_seconds"]
    assert raw["runs_finished_in_window"] == raw["runs_succeeded"] == 1, raw
    assert (
        raw["partitions_materialized_in_window"] == 3
        and raw["partitions_per_minute_from_submit"] > 0
    )
    assert raw["run_median_seconds"] > 0
    assert (
        raw["runs_per_minute"] is None and raw["partitions_per_minute"] is None
    )  # one run: no steady rate
    ranged = daemon["refined_corpus_backfill_launch"]  # the model assets' policy: ranges of 32
    assert (
        ranged["partitions"] == 3
        and ranged["partitions_per_run_policy"] == 32
        and ranged["runs_planned"] == 1
    )
    assert ranged["runs_requested_in_window"] == 1 and ranged["all_runs_requested_seconds"] > 0

    ui = report["ui_partition_status_query"]
    assert ui["raw_corpus_before_backfill"]["materialized"] == 0
    assert ui["raw_corpus_after_window"]["materialized"] == 3
    for figures in (v for v in ui.values() if isinstance(v, dict)):
        assert 0 < figures["median_s"] <= figures["max_s"] and figures["response_kb"] > 0

    catalog = report["catalog"]
    assert catalog["rows"].startswith("SYNTHETIC")
    assert catalog["documents"] == catalog["program_runs"] == 2000
    assert catalog["file_bytes"] > catalog["empty_schema_bytes"] > 0
    assert catalog["audit_samples"] == 20
    assert 0 < catalog["audit_in_process_median_ms"] <= catalog["audit_in_process_max_ms"]
    assert catalog["audit_cli_subprocess_median_s"] > 0
    assert set(report["goals"]) == {
        "backfill_accepted_under_10s",
        "ui_partition_status_under_2s",
        "audit_in_process_under_1s",
        "audit_cli_under_1s",
    }
