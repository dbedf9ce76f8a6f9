"""raw_corpus as a Dagster asset: materialize(), failures, the sensor, concurrent partitions."""

import json
import multiprocessing as mp

import dagster as dg
import pytest

from prox_assets.definitions import ASSETS, build_resources
from prox_assets.ingest import incoming_files_sensor, raw_key
from prox_assets.partitions import shard_partitions
from prox_resources.catalog import Catalog
from prox_resources.store import ObjectStore


@pytest.fixture
def instance(prox_env):
    with dg.DagsterInstance.get() as inst:
        yield inst


def put_incoming(store, name: str, data: bytes) -> str:
    store.write_bytes(f"incoming/{name}", data)
    return name.split(".")[0]


def materialize(instance, shard):
    instance.add_dynamic_partitions(shard_partitions.name, [shard])
    return dg.materialize(ASSETS, selection=["raw_corpus"], partition_key=shard, instance=instance,
                          resources=build_resources(),
                          raise_on_error=False)


def test_materialize_publishes_metadata_and_registers_documents(instance):
    store = ObjectStore()
    lines = [json.dumps({"text": f"Document {i} " + "word " * (10 * i + 1)}) for i in range(20)]
    shard = put_incoming(store, "docs-01.jsonl", ("\n".join(lines + ["{oops"]) + "\n").encode())
    result = materialize(instance, shard)
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

    again = materialize(instance, shard)  # re-running replaces, never duplicates
    assert again.success
    assert catalog.query("SELECT count(*) n FROM documents")["n"][0] == 20
    assert store.list("raw/docs-01/") == [f"raw/docs-01/{again.run_id}.parquet"]  # the earlier file is gone


def test_unreadable_file_fails_naming_it_and_is_quarantined(instance):
    store = ObjectStore()
    shard = put_incoming(store, "broken.parquet", b"definitely not parquet")
    result = materialize(instance, shard)
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
    assert sorted(r.partition_key for r in result.run_requests) == ["a", "b"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["a", "b"]
    instance.add_dynamic_partitions(shard_partitions.name, ["a", "b"])
    assert incoming_files_sensor(dg.build_sensor_context(instance=instance, resources={"store": store})).skip_reason


def _run_one_partition(shard: str) -> None:
    """One run of one partition; the multiprocess executor runs its step in a child process."""
    import sys

    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(
            dg.build_reconstructable_job("prox_assets.definitions", "resolved_job", ("ingest_job",)),
            instance=instance, tags={"dagster/partition": shard},
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
