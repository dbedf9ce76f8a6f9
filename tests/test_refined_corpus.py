"""refined_corpus end to end on tiny models: refine, update the refiner, backfill through the
daemon (a real `dagster dev` and the GraphQL mutation the UI sends), audit a document."""

import json
import os
import subprocess

import dagster as dg
import polars as pl
import pytest

from prox_assets.definitions import ASSETS, build_resources
from prox_assets.partitions import refiner_version_partitions
from prox_resources.catalog import Catalog
from prox_resources.settings import REPO_ROOT
from tests.conftest import _free_port
from tests.servers import BIN, Server, wait_http
from tests.test_synthesis_assets import _run, pipeline  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow
REFINER = {"max_steps": 2, "batch_size": 2, "eval_examples": 2, "max_new_tokens": 8, "quality_pages": 0, "quality_clean": 0,
           "max_seq_len": 512}
REFINE = {"batch_docs": 4, "doc_max_new_tokens": 6, "chunk_max_new_tokens": 16}


def _train_refiners(instance, model, **overrides):
    for shard in ("web-00", "clean-00"):
        _run(instance, "seed_scores", shard, {"seeds_per_shard": 6, "max_doc_tokens": 48})
    sft = {"refiner_base_model": model, "doc_max_tokens": 48, "window_tokens": 96, "chunk_docs_per_shard": 4}
    for level in ("doc", "chunk"):
        _run(instance, "sft_programs", level, sft)
    cfg = {**REFINER, "base_model": model, **overrides}
    _run(instance, "refiner", "doc", cfg)
    return _run(instance, "refiner", "chunk", cfg).asset_materializations_for_node("refiner")[0].metadata[
        "refiner_pair"].value


def _refine(instance, version, shard, **config):
    return dg.materialize(ASSETS, selection=["refined_corpus"], instance=instance, resources=build_resources(),
                          partition_key=dg.MultiPartitionKey({"shard": shard, "refiner_version": version}),
                          run_config={"ops": {"refined_corpus": {"config": {**REFINE, **config}}}},
                          raise_on_error=False)


def test_refine_resume_and_counts(pipeline):  # noqa: F811
    instance, store, model = pipeline
    v1 = _train_refiners(instance, model)
    result = _refine(instance, v1, "web-00")
    assert result.success
    meta = result.asset_materializations_for_node("refined_corpus")[0].metadata
    frame = store.read_parquet(f"refined/{v1}/web-00.parquet")
    assert meta["documents_in"].value == frame.height == 12
    assert meta["kept"].value + meta["dropped"].value == 12 and meta["failed"].value == 0
    for col in ("doc_id", "text", "kept", "reason", "doc_program", "chunk_programs", "edits", "errors"):
        assert col in frame.columns
    runs = Catalog().query(f"SELECT * FROM program_runs WHERE refiner_version = '{v1}'")
    assert runs.height == 12 and set(runs["run_id"]) == {result.run_id}
    assert store.list(f"refined/{v1}/.parts/") == []  # parts are cleaned up once the file is whole

    # a killed run: two batches were written before it died; the retry skips them
    parts = f"refined/{v1}/.parts/clean-00"
    first = _refine(instance, v1, "clean-00", max_docs=8)
    assert first.success
    full = store.read_parquet(f"refined/{v1}/clean-00.parquet")
    marker = full.head(4).with_columns(doc_program=pl.lit("from an earlier attempt"))
    store.write_parquet(f"{parts}/part-00000-of-00002.parquet", marker)
    again = _refine(instance, v1, "clean-00", max_docs=8)
    logs = [e.message for e in instance.all_logs(again.run_id) if e.message]
    assert any("done by an earlier attempt, skipped" in m for m in logs)
    redone = store.read_parquet(f"refined/{v1}/clean-00.parquet")
    assert (redone.head(4)["doc_program"] == "from an earlier attempt").all() and redone.height == 8


def test_refiner_update_then_daemon_backfill(pipeline, tmp_path):  # noqa: F811
    instance, store, model = pipeline
    v1 = _train_refiners(instance, model)
    for shard in ("web-00", "clean-00"):
        assert _refine(instance, v1, shard).success
    v1_bytes = {s: store.read_bytes(f"refined/{v1}/{s}.parquet") for s in ("web-00", "clean-00")}

    # the refiner update: a retrained chunk refiner makes a new refiner_version with the same doc one
    v2 = _run(instance, "refiner", "chunk", {**REFINER, "base_model": model, "lr": 1e-4}) \
        .asset_materializations_for_node("refiner")[0].metadata["refiner_pair"].value
    assert v2 != v1 and set(instance.get_dynamic_partitions(refiner_version_partitions.name)) == {v1, v2}
    materialized = instance.get_materialized_partitions(dg.AssetKey("refined_corpus"))
    assert {f"{v1}|web-00", f"{v1}|clean-00"} <= materialized  # what the UI shows as done...
    assert not {f"{v2}|web-00", f"{v2}|clean-00"} & materialized  # ...and as missing for the update

    port = _free_port(set())
    env = {k: v for k, v in os.environ.items()}
    dev = Server("dagster-dev", [BIN / "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", port],
                 tmp_path, env, REPO_ROOT)
    try:
        wait_http(f"http://127.0.0.1:{port}/server_info", dev)
        out = subprocess.run([str(BIN / "prox"), "backfill", "--refiner-version", v2, "--url",
                              f"http://127.0.0.1:{port}"], env=env, cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=900)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "COMPLETED" in out.stdout
    finally:
        dev.stop()

    backfills = instance.get_backfills()
    assert len(backfills) == 1 and backfills[0].tags.get("prox/launched_by") == "prox backfill"
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfills[0].backfill_id}))
    assert len(runs) == 2 and all(r.is_success for r in runs)
    for shard in ("web-00", "clean-00"):
        assert store.read_bytes(f"refined/{v1}/{shard}.parquet") == v1_bytes[shard]  # untouched
        assert store.exists(f"refined/{v2}/{shard}.parquet")
    counts = Catalog().query("SELECT refiner_version, count(*) n, sum(kept::INT) k, sum((NOT kept)::INT) d "
                             "FROM program_runs GROUP BY 1").rows()
    assert {(v, n) for v, n, k, d in counts} == {(v1, 20), (v2, 20)} and all(n == k + d for _, n, k, d in counts)

    doc_id = store.read_parquet("raw/web-00.parquet")["doc_id"][0]
    audit = subprocess.run([str(BIN / "prox"), "audit", doc_id, "--json"], env=env, capture_output=True,
                           text=True, timeout=120)
    result = json.loads(audit.stdout)
    assert {r["refiner_version"] for r in result["refinements"]} == {v1, v2}
    assert result["ingested"][0]["shard"] == "web-00"
    text = subprocess.run([str(BIN / "prox"), "audit", doc_id], env=env, capture_output=True, text=True).stdout
    assert f"refiner {v1}" in text and f"refiner {v2}" in text and "doc program" in text
