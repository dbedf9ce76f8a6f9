"""raw_corpus as a Dagster asset: materialize(), failures, the sensor, concurrent partitions."""

import json
import multiprocessing as mp

import dagster as dg
import pytest

from prox_assets.ingest import incoming_files_sensor, raw_key
from prox_assets.partitions import shard_partitions
from prox_resources.catalog import Catalog
from prox_resources.store import ObjectStore
from tests.support.pipeline import ingest_shard, materialize


@pytest.fixture
def instance(prox_env):
    with dg.DagsterInstance.get() as inst:
        yield inst


def put_incoming(store, name: str, data: bytes) -> str:
    store.write_bytes(f"incoming/{name}", data)
    return name.split(".")[0]


def test_materialize_publishes_metadata_and_registers_documents(instance):
    store = ObjectStore()
    lines = [json.dumps({"text": f"Document {i} " + "word " * (10 * i + 1)}) for i in range(20)]
    shard = put_incoming(store, "docs-01.jsonl", ("\n".join(lines + ["{oops"]) + "\n").encode())
    result = ingest_shard(instance, shard)
    assert result.success
    meta = result.asset_materializations_for_node("raw_corpus")[0].metadata
    assert meta["dagster/row_count"].value == 20 and meta["n_quarantined"].value == 1
    assert meta["n_read"].value == 21
    for key in ("words_per_document", "preview", "quarantine_reasons", "path"):
        assert key in meta
    assert "malformed_json" in meta["quarantine_reasons"].value
    catalog = Catalog()
    assert store.read_parquet(raw_key(catalog, shard)).height == 20
    assert raw_key(catalog, shard) == f"raw/docs-01/{result.run_id}.parquet"

    docs = catalog.query("SELECT * FROM documents WHERE shard = 'docs-01'")
    assert docs.height == 20 and set(docs["run_id"]) == {result.run_id}
    assert docs["partition_key"].unique().to_list() == ["docs-01"]
    q = catalog.query("SELECT locator, reason FROM quarantine").rows()
    assert q == [("line:21", "malformed_json")]

    again = ingest_shard(instance, shard)  # re-running replaces, never duplicates
    assert again.success
    assert catalog.query("SELECT count(*) n FROM documents")["n"][0] == 20
    assert store.list("raw/docs-01/") == [
        f"raw/docs-01/{again.run_id}.parquet"
    ]  # the earlier file is gone


def test_unreadable_file_fails_naming_it_and_is_quarantined(instance):
    store = ObjectStore()
    shard = put_incoming(store, "broken.parquet", b"definitely not parquet")
    result = ingest_shard(instance, shard)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "broken.parquet" in failure.step_failure_data.error.message
    rows = Catalog().query("SELECT shard, locator, reason, detail FROM quarantine").rows()
    assert rows[0][:3] == ("broken", "file", "unreadable_file") and "broken.parquet" in rows[0][3]


def test_sensor_adds_a_partition_per_new_file(instance):
    store = ObjectStore()
    put_incoming(store, "a.jsonl", b'{"text": "x y z"}\n')
    put_incoming(store, "b.parquet", b"")
    store.write_bytes("incoming/notes.txt", b"ignored: unsupported suffix")
    context = dg.build_sensor_context(instance=instance, resources={"store": store})
    result = incoming_files_sensor(context)
    (request,) = result.run_requests  # both new shards in one run: a partition key range
    assert (request.partition_key_range.start, request.partition_key_range.end) == ("a", "b")
    assert request.run_key == "ingest:a..b"
    assert result.dynamic_partitions_requests[0].partition_keys == ["a", "b"]
    instance.add_dynamic_partitions(shard_partitions.name, ["a", "b"])
    assert incoming_files_sensor(
        dg.build_sensor_context(instance=instance, resources={"store": store})
    ).skip_reason


def test_sensor_asks_for_ranges_of_new_shards_that_run_as_one_run_each(instance, monkeypatch):
    """Five new files, at most two shards a run: three runs (two ranges, one single shard), as a
    backfill would cut them; a range request, executed as the daemon does (its keys added first,
    then a run with its tags), is one run with a materialization per shard."""
    import prox_assets.ingest as ingest

    monkeypatch.setattr(ingest, "PARTITIONS_PER_RUN", 2)
    store = ObjectStore()
    names = ["e", "a", "c", "b", "d"]
    for name in names:
        put_incoming(store, f"{name}.jsonl", f'{{"text": "document of shard {name}"}}\n'.encode())
    result = incoming_files_sensor(
        dg.build_sensor_context(instance=instance, resources={"store": store})
    )
    ranges = [
        (r.partition_key_range.start, r.partition_key_range.end)
        if r.partition_key_range
        else (r.partition_key, r.partition_key)
        for r in result.run_requests
    ]
    assert ranges == [("a", "b"), ("c", "d"), ("e", "e")]
    assert [r.run_key for r in result.run_requests] == ["ingest:a..b", "ingest:c..d", "ingest:e"]

    for add in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
    run = materialize(instance, "raw_corpus", tags=result.run_requests[1].tags)
    assert run.success
    assert sorted(m.partition for m in run.asset_materializations_for_node("raw_corpus")) == [
        "c",
        "d",
    ]
    assert dict(Catalog().query("SELECT shard, run_id FROM documents").rows()) == {
        "c": run.run_id,
        "d": run.run_id,
    }


def _runs_since(instance, before: set[str]) -> list:
    return [r for r in instance.get_runs() if r.run_id not in before]


def test_several_shards_are_one_run_with_a_materialization_each(instance):
    """`prox ingest` of four shards (raw_corpus's backfill policy): one run; each shard has its own
    materialization and metadata, catalog rows and raw file, as a run of its own would give it."""
    from prox_assets.cli import materialize_partitions

    store = ObjectStore()
    sizes = {"s-00": 3, "s-01": 5, "s-02": 1, "s-03": 4}
    for shard, n in sizes.items():
        lines = [json.dumps({"text": f"{shard} document {i}"}) for i in range(n)]
        put_incoming(store, f"{shard}.jsonl", ("\n".join(lines + ["{oops"]) + "\n").encode())
    instance.add_dynamic_partitions(shard_partitions.name, list(sizes))
    before = {r.run_id for r in instance.get_runs()}
    lines: list[str] = []
    out = materialize_partitions("raw_corpus", list(sizes), echo=lines.append)
    assert out == dict.fromkeys(sizes, "ok"), lines
    (run,) = _runs_since(instance, before)
    assert run.is_success
    assert (
        run.tags["dagster/asset_partition_range_start"],
        run.tags["dagster/asset_partition_range_end"],
    ) == ("s-00", "s-03")
    assert all("(one run of 4 partitions)" in line for line in lines), lines

    catalog = Catalog()
    for shard, n in sizes.items():
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(dg.AssetKey("raw_corpus"), asset_partitions=[shard]), limit=5
        ).records
        meta = record.asset_materialization.metadata
        assert record.run_id == run.run_id
        assert (meta["n_read"].value, meta["n_ingested"].value, meta["n_quarantined"].value) == (
            n + 1,
            n,
            1,
        )
        assert (
            meta["path"].value == store.uri(raw_key(catalog, shard))
            and shard in meta["source_file"].value
        )
        assert store.list(f"raw/{shard}/") == [f"raw/{shard}/{run.run_id}.parquet"]
        assert store.read_parquet(raw_key(catalog, shard)).height == n
    docs = catalog.query(
        "SELECT shard, partition_key, run_id, count(*) n FROM documents GROUP BY ALL ORDER BY 1"
    )
    assert docs.rows() == [(s, s, run.run_id, n) for s, n in sizes.items()]
    counts = catalog.query(
        "SELECT shard, n_read, n_ingested, n_quarantined, partition_key FROM ingestions ORDER BY 1"
    )
    assert counts.rows() == [(s, n + 1, n, 1, s) for s, n in sizes.items()]
    assert catalog.query("SELECT shard, locator FROM quarantine ORDER BY 1").rows() == [
        (s, f"line:{n + 1}") for s, n in sizes.items()
    ]


def test_a_corrupt_shard_in_a_run_of_several_fails_only_itself(instance):
    """One unreadable file among four shards of one run: the three others are ingested and
    recorded as materialized, the run fails naming the bad one, whose failure is in the catalog
    (counts and quarantine, no documents). Re-running only the bad shard, fixed, completes it."""
    from prox_assets.cli import materialize_partitions

    store = ObjectStore()
    for shard in ("ok-00", "ok-01", "ok-03"):
        put_incoming(store, f"{shard}.jsonl", f'{{"text": "a document of {shard}"}}\n'.encode())
    put_incoming(store, "bad-02.parquet", b"PAR1 definitely not parquet")
    shards = ["ok-00", "ok-01", "bad-02", "ok-03"]
    instance.add_dynamic_partitions(shard_partitions.name, shards)
    before = {r.run_id for r in instance.get_runs()}
    out = materialize_partitions("raw_corpus", shards, echo=print)
    (run,) = _runs_since(instance, before)
    assert not run.is_success
    assert {s: out[s] for s in ("ok-00", "ok-01", "ok-03")} == {
        "ok-00": "ok",
        "ok-01": "ok",
        "ok-03": "ok",
    }
    assert out["bad-02"].startswith("failed: ")
    assert "1 of 4 partitions failed: bad-02: Failure: nothing could be read" in out["bad-02"]
    assert "bad-02.parquet" in out["bad-02"] and "ok-0" not in out["bad-02"]
    materialized = instance.get_materialized_partitions(dg.AssetKey("raw_corpus"))
    assert materialized == {"ok-00", "ok-01", "ok-03"}

    catalog = Catalog()
    assert dict(catalog.query("SELECT shard, count(*) FROM documents GROUP BY 1").rows()) == {
        "ok-00": 1,
        "ok-01": 1,
        "ok-03": 1,
    }
    assert catalog.query(
        "SELECT shard, n_read, n_ingested, n_quarantined, raw_path FROM ingestions "
        "WHERE shard = 'bad-02'"
    ).rows() == [("bad-02", 1, 0, 1, None)]
    assert catalog.query("SELECT shard, reason FROM quarantine").rows() == [
        ("bad-02", "unreadable_file")
    ]
    assert store.list("raw/bad-02/") == [] and len(store.list("raw/ok-01/")) == 1

    store.delete(
        "incoming/bad-02.parquet"
    )  # the bad file replaced by a good one; only it is re-run
    put_incoming(store, "bad-02.jsonl", b'{"text": "fixed"}\n')
    assert materialize_partitions("raw_corpus", ["bad-02"], echo=print) == {"bad-02": "ok"}
    assert instance.get_materialized_partitions(dg.AssetKey("raw_corpus")) == set(shards)
    assert catalog.query("SELECT count(*) FROM quarantine").item() == 0


def _run_one_partition(shard: str) -> None:
    """One run of one partition; the multiprocess executor runs its step in a child process."""
    import sys

    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(
            dg.build_reconstructable_job(
                "prox_assets.definitions", "resolved_job", ("ingest_job",)
            ),
            instance=instance,
            tags={"dagster/partition": shard},
            run_config={"execution": {"config": {"multiprocess": {"max_concurrent": 1}}}},
        )
        sys.exit(0 if result.success else 1)


@pytest.mark.slow
def test_four_partitions_at_once_with_the_multiprocess_executor(instance, sample_files):
    store = ObjectStore()
    chosen = [p for p in sample_files if p.name.startswith(("pydocs", "math", "austen"))][:5]
    shards = []
    for p in chosen:
        shards.append(put_incoming(store, p.name, p.read_bytes()))
    instance.add_dynamic_partitions(shard_partitions.name, shards)
    # Pool workers are daemonic and may not start the executor's step processes: plain ones.
    procs = [mp.get_context("spawn").Process(target=_run_one_partition, args=(s,)) for s in shards]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * len(shards)

    catalog = Catalog()
    counts = dict(catalog.query("SELECT shard, count(*) FROM documents GROUP BY 1").rows())
    expected = dict(catalog.query("SELECT shard, n_ingested FROM ingestions").rows())
    assert set(counts) == set(shards) and counts == expected
    for shard in shards:
        assert store.read_parquet(raw_key(catalog, shard)).height == counts[shard]
    runs = instance.get_runs(filters=dg.RunsFilter(job_name="ingest_job"))
    assert len(runs) == len(shards) and all(r.is_success for r in runs)
