"""refined_corpus end to end on tiny models: refine, update the refiner, backfill through the
daemon (a real `dagster dev` and the GraphQL mutation the UI sends), audit a document."""

import json
import os
import subprocess
import time

import dagster as dg
import polars as pl
import pytest

from prox_assets.ingest import raw_key
from prox_assets.layout import inputs_digest
from prox_assets.partitions import refiner_version_partitions, shard_partitions
from prox_assets.refinement import RefineConfig, _part_settings, refiner_pair
from prox_assets.servers import Server, free_port, wait_http
from prox_resources.catalog import Catalog
from prox_resources.settings import REPO_ROOT
from tests.support.paths import BIN
from tests.support.pipeline import REFINE, REFINER, materialize, refine, train_refiners

pytestmark = pytest.mark.slow


def test_refine_resume_and_counts(pipeline):
    instance, store, model = pipeline
    v1 = train_refiners(instance, model)
    result = refine(instance, v1, "web-00")
    assert result.success
    meta = result.asset_materializations_for_node("refined_corpus")[0].metadata
    frame = store.read_parquet(f"refined/{v1}/web-00.parquet")
    assert meta["documents_in"].value == frame.height == 12
    assert meta["kept"].value + meta["dropped"].value == 12 and meta["errored"].value == 0
    for col in (
        "doc_id",
        "text",
        "kept",
        "status",
        "reason",
        "error",
        "doc_program",
        "chunk_programs",
        "edits",
        "errors",
    ):
        assert col in frame.columns
    runs = Catalog().query(f"SELECT * FROM program_runs WHERE refiner_version = '{v1}'")
    assert runs.height == 12 and set(runs["run_id"]) == {result.run_id}
    assert store.list(f"refined/{v1}/.parts/") == []  # parts are cleaned up once the file is whole

    # a killed run: two batches were written before it died; the retry skips them
    parts = f"refined/{v1}/.parts/clean-00"
    first = refine(instance, v1, "clean-00", max_docs=8)
    assert first.success
    full = store.read_parquet(f"refined/{v1}/clean-00.parquet")
    marker = full.head(4).with_columns(doc_program=pl.lit("from an earlier attempt"))
    config = RefineConfig(**{**REFINE, "max_docs": 8})
    settings = _part_settings(config, refiner_pair(Catalog(), v1))
    digest = inputs_digest(marker["doc_id"].to_list(), settings)
    store.write_parquet(f"{parts}/part-00000-of-00002-{digest}.parquet", marker)
    # a part of the same position made from other documents (the shard re-ingested, another
    # sample) or other settings is not the batch's: it is recomputed, never mixed in
    stranger = full.tail(4).with_columns(
        doc_id=pl.Series([f"{i:064x}" for i in range(4)]), doc_program=pl.lit("of other documents")
    )
    other = inputs_digest(stranger["doc_id"].to_list(), settings)
    store.write_parquet(f"{parts}/part-00001-of-00002-{other}.parquet", stranger)
    store.write_parquet(f"{parts}/part-00001-of-00002.parquet", stranger)  # the old naming
    again = refine(instance, v1, "clean-00", max_docs=8)
    logs = [e.message for e in instance.all_logs(again.run_id) if e.message]
    assert sum("done by an earlier attempt, skipped" in m for m in logs) == 1
    redone = store.read_parquet(f"refined/{v1}/clean-00.parquet")
    assert (redone.head(4)["doc_program"] == "from an earlier attempt").all() and redone.height == 8
    assert "of other documents" not in redone["doc_program"].to_list()
    assert redone["doc_id"].n_unique() == 8


def _more_shards(instance, store, n: int) -> list[str]:
    """The fixture's two shards plus ``n - 2`` ingested ones of 3, 4, ... distinct documents."""
    names = [f"more-{i:02d}" for i in range(n - 2)]
    for i, name in enumerate(names):
        docs = [
            {
                "text": "\n".join(
                    [f"Home | Blog | {name}"]
                    + [
                        f"{name} paragraph {d}.{j}: how heat moves through a cup of tea."
                        for j in range(4)
                    ]
                )
            }
            for d in range(3 + i)
        ]
        store.write_bytes(
            f"incoming/{name}.jsonl", "".join(json.dumps(d) + "\n" for d in docs).encode()
        )
    instance.add_dynamic_partitions(shard_partitions.name, names)
    for name in names:
        assert materialize(instance, "raw_corpus", name).success
    return ["web-00", "clean-00", *names]


def _runs_since(instance, before: set[str]) -> list:
    return [r for r in instance.get_runs() if r.run_id not in before]


def _loads(instance, run_id: str) -> list[str]:
    """The models a run loaded, from its log ("loaded model <path> (...)", ModelEngine.load)."""
    return [
        m.split("loaded model ", 1)[1].split(" (")[0]
        for m in (e.user_message for e in instance.all_logs(run_id))
        if m and m.startswith("loaded model ")
    ]


def test_a_backfill_of_seven_shards_loads_each_model_once(pipeline):
    from prox_assets.cli import materialize_partitions

    instance, store, model = pipeline
    shards = _more_shards(instance, store, 7)
    # seed_scores, one run for the 7 shards: the scorer is loaded once
    before = {r.run_id for r in instance.get_runs()}
    out = materialize_partitions(
        "seed_scores", shards, {"seeds_per_shard": 2, "max_doc_tokens": 32}, echo=print
    )
    assert set(out.values()) == {"ok"}
    (run,) = _runs_since(instance, before)
    assert _loads(instance, run.run_id) == [model]
    assert Catalog().query("SELECT count(DISTINCT partition_key) n FROM seed_scores")["n"][0] == 7

    v1 = train_refiners(instance, model)
    keys = [f"{v1}|{s}" for s in shards]
    config = {**REFINE, "max_docs": 4}

    # the old way: one run per partition, each loading both refiners
    before = {r.run_id for r in instance.get_runs()}
    started = time.monotonic()
    assert set(
        materialize_partitions("refined_corpus", keys, config, echo=print, per_run=1).values()
    ) == {"ok"}
    per_partition_s = time.monotonic() - started
    runs = _runs_since(instance, before)
    assert len(runs) == 7 and all(len(_loads(instance, r.run_id)) == 2 for r in runs)

    # the backfill policy's way: one run for the 7 partitions, each refiner loaded once
    before = {r.run_id for r in instance.get_runs()}
    lines = []
    started = time.monotonic()
    out = materialize_partitions("refined_corpus", keys, config, echo=lines.append)
    one_run_s = time.monotonic() - started
    assert out == dict.fromkeys(keys, "ok"), lines
    (run,) = _runs_since(instance, before)
    assert run.is_success and run.tags["dagster/asset_partition_range_start"] == keys[0]
    loads = _loads(instance, run.run_id)
    assert len(loads) == 2 and len(set(loads)) == 2, (
        loads
    )  # the doc and the chunk refiner, once each
    print(
        f"refined_corpus, 7 shards: one run per partition {per_partition_s:.1f}s (14 model loads), "
        f"one run {one_run_s:.1f}s (2 model loads)"
    )

    # one materialization per partition, each with its own metadata; catalog rows per partition
    for i, (key, shard) in enumerate(zip(keys, shards)):
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(dg.AssetKey("refined_corpus"), asset_partitions=[key]), limit=1
        ).records
        assert record.run_id == run.run_id
        n_docs = store.read_parquet(f"refined/{v1}/{shard}.parquet").height
        assert (
            record.asset_materialization.metadata["documents_in"].value
            == n_docs
            == min(4, [12, 8, 3, 4, 5, 6, 7][i])
        )
    rows = Catalog().query(
        f"SELECT shard, partition_key, run_id FROM program_runs WHERE refiner_version = '{v1}'"
    )
    assert set(rows["run_id"]) == {run.run_id}
    assert all(p == f"{v1}|{s}" for s, p, _ in rows.rows())


def test_one_failed_shard_fails_the_run_but_not_the_others(pipeline):
    from prox_assets.cli import materialize_partitions

    instance, store, model = pipeline
    shards = _more_shards(instance, store, 3)
    v1 = train_refiners(instance, model)
    store.delete(raw_key(Catalog(), "clean-00"))  # this shard's input is gone
    keys = [f"{v1}|{s}" for s in shards]
    before = {r.run_id for r in instance.get_runs()}
    out = materialize_partitions("refined_corpus", keys, REFINE, echo=print)
    (run,) = _runs_since(instance, before)
    assert not run.is_success
    assert out[f"{v1}|web-00"] == out[f"{v1}|more-00"] == "ok"
    assert f"1 of 3 partitions failed: {v1}|clean-00: FileNotFoundError" in out[f"{v1}|clean-00"]
    done = instance.get_materialized_partitions(dg.AssetKey("refined_corpus"))
    assert {f"{v1}|web-00", f"{v1}|more-00"} <= done and f"{v1}|clean-00" not in done
    assert store.exists(f"refined/{v1}/more-00.parquet") and not store.exists(
        f"refined/{v1}/clean-00.parquet"
    )


def test_refiner_update_then_daemon_backfill(pipeline, tmp_path):
    instance, store, model = pipeline
    v1 = train_refiners(instance, model)
    for shard in ("web-00", "clean-00"):
        assert refine(instance, v1, shard).success
    v1_bytes = {s: store.read_bytes(f"refined/{v1}/{s}.parquet") for s in ("web-00", "clean-00")}

    # the refiner update: a retrained chunk refiner makes a new refiner_version with the same doc one
    v2 = (
        materialize(instance, "refiner", "chunk", {**REFINER, "base_model": model, "lr": 1e-4})
        .asset_materializations_for_node("refiner")[0]
        .metadata["refiner_pair"]
        .value
    )
    assert v2 != v1 and set(instance.get_dynamic_partitions(refiner_version_partitions.name)) == {
        v1,
        v2,
    }
    materialized = instance.get_materialized_partitions(dg.AssetKey("refined_corpus"))
    assert {f"{v1}|web-00", f"{v1}|clean-00"} <= materialized  # what the UI shows as done...
    assert not {f"{v2}|web-00", f"{v2}|clean-00"} & materialized  # ...and as missing for the update

    port = free_port()
    env = dict(os.environ)
    dev = Server(
        "dagster-dev",
        [BIN / "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", port],
        tmp_path,
        env,
        REPO_ROOT,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/server_info", dev)
        out = subprocess.run(
            [
                str(BIN / "prox"),
                "backfill",
                "--refiner-version",
                v2,
                "--url",
                f"http://127.0.0.1:{port}",
            ],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        assert (
            "COMPLETED" in out.stdout and "2 partitions of refined_corpus in 1 run(s)" in out.stdout
        )
    finally:
        dev.stop()

    backfills = instance.get_backfills()
    assert len(backfills) == 1 and backfills[0].tags.get("prox/launched_by") == "prox backfill"
    every = instance.get_runs(
        filters=dg.RunsFilter(tags={"dagster/backfill": backfills[0].backfill_id})
    )
    runs = [r for r in every if dg.AssetKey("refined_corpus") in (r.asset_selection or set())]
    # one run for both shards (the backfill policy), in the daemon's own process: each refiner loaded once
    assert len(runs) == 1 and runs[0].is_success
    # then the pool of the new version, in the same backfill
    assert len(every) == 2 and all(r.is_success for r in every)
    assert v2 in instance.get_materialized_partitions(dg.AssetKey("refined_pool"))
    assert {
        runs[0].tags["dagster/asset_partition_range_start"],
        runs[0].tags["dagster/asset_partition_range_end"],
    } == {f"{v2}|web-00", f"{v2}|clean-00"}
    assert len(_loads(instance, runs[0].run_id)) == 2
    assert {f"{v2}|web-00", f"{v2}|clean-00"} <= instance.get_materialized_partitions(
        dg.AssetKey("refined_corpus")
    )
    for shard in ("web-00", "clean-00"):
        assert store.read_bytes(f"refined/{v1}/{shard}.parquet") == v1_bytes[shard]  # untouched
        assert store.exists(f"refined/{v2}/{shard}.parquet")
    counts = (
        Catalog()
        .query(
            "SELECT refiner_version, count(*) n, sum(kept::INT) k, sum((NOT kept)::INT) d "
            "FROM program_runs GROUP BY 1"
        )
        .rows()
    )
    assert {(v, n) for v, n, k, d in counts} == {(v1, 20), (v2, 20)} and all(
        n == k + d for _, n, k, d in counts
    )

    doc_id = store.read_parquet(raw_key(Catalog(), "web-00"))["doc_id"][0]
    audit = subprocess.run(
        [str(BIN / "prox"), "audit", doc_id, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    result = json.loads(audit.stdout)
    assert {r["refiner_version"] for r in result["refinements"]} == {v1, v2}
    assert result["ingested"][0]["shard"] == "web-00"
    text = subprocess.run(
        [str(BIN / "prox"), "audit", doc_id], env=env, capture_output=True, text=True
    ).stdout
    assert f"refiner {v1}" in text and f"refiner {v2}" in text and "doc program" in text


def test_the_new_shards_sensor_asks_for_one_run_per_range_of_shards(prox_env, monkeypatch):
    """Seven new shards under the newest refiner version: one run of a contiguous range (so the
    refiners load once), not seven; nothing is asked for twice."""
    import prox_assets.refinement as refinement

    monkeypatch.setattr(refinement, "PARTITIONS_PER_RUN", 4)
    catalog = Catalog()
    catalog.migrate()
    catalog.replace_rows(
        "refiner_pairs",
        {"refiner_version": "da-cb"},
        pl.DataFrame({"refiner_version": ["da-cb"], "doc_version": ["a"], "chunk_version": ["b"]}),
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(refiner_version_partitions.name, ["da-cb"])
        shards = [f"s{i}" for i in range(7)]
        instance.add_dynamic_partitions(shard_partitions.name, shards)
        context = dg.build_sensor_context(instance=instance, resources={"catalog": catalog})
        result = refinement.refine_new_shards_sensor(context)
        ranges = [
            (r.partition_key_range.start, r.partition_key_range.end)
            if r.partition_key_range
            else (r.partition_key, r.partition_key)
            for r in result.run_requests
        ]
        assert ranges == [("da-cb|s0", "da-cb|s3"), ("da-cb|s4", "da-cb|s6")]
        assert len({r.run_key for r in result.run_requests}) == 2
        again = refinement.refine_new_shards_sensor(
            dg.build_sensor_context(
                instance=instance, resources={"catalog": catalog}, cursor=result.cursor
            )
        )
        assert not again.run_requests  # requested already, still running
        instance.add_dynamic_partitions(shard_partitions.name, ["s7"])
        more = refinement.refine_new_shards_sensor(
            dg.build_sensor_context(
                instance=instance, resources={"catalog": catalog}, cursor=result.cursor
            )
        )
        assert [r.partition_key for r in more.run_requests] == ["da-cb|s7"]


def test_count_tables_order_ties_the_same_way_every_run():
    import polars as pl

    from prox_assets.refinement import _by_count

    for order in (["b", "a", "b", "a", "c"], ["c", "a", "b", "b", "a"]):
        assert _by_count(pl.Series(order)) == [("a", 2), ("b", 2), ("c", 1)]
