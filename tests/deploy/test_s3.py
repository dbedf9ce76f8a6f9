"""The object store and raw_corpus against a real S3 server (SeaweedFS on loopback)."""

import dagster as dg
import polars as pl
import pytest

from prox_assets.ingest import raw_key
from prox_assets.partitions import shard_partitions
from prox_resources.catalog import Catalog
from prox_resources.store import ObjectStore
from tests.support.pipeline import materialize

pytestmark = pytest.mark.slow


def test_store_round_trip_and_atomicity_on_s3(s3_store_env):
    store = ObjectStore()
    assert not store.is_local and store.root == f"s3://{s3_store_env}/prox"
    store.write_parquet("raw/x.parquet", pl.DataFrame({"a": [1, 2, 3]}))
    assert store.read_parquet("raw/x.parquet")["a"].to_list() == [1, 2, 3]
    with pytest.raises(RuntimeError), store.open_write("raw/y.parquet") as f:
        f.write(b"half")
        raise RuntimeError("killed mid-write")
    assert store.list("raw/") == ["raw/x.parquet"]  # the failed write never became an object


def test_wrong_credentials_are_refused(seaweedfs, s3_store_env):
    bad = ObjectStore(
        url=f"s3://{s3_store_env}/prox",
        endpoint_url=seaweedfs["endpoint"],
        access_key_id=seaweedfs["key"],
        secret_access_key="wrong",
    )
    with pytest.raises(PermissionError):
        bad.write_bytes("x", b"1")


def test_ingest_to_s3_and_read_back(s3_store_env, sample_files):
    store = ObjectStore()
    news = next(p for p in sample_files if p.name == "news-00.warc.gz")
    store.put_file(str(news), f"incoming/{news.name}")
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, ["news-00"])
        result = materialize(instance, "raw_corpus", "news-00")
    assert result.success
    meta = result.asset_materializations_for_node("raw_corpus")[0].metadata
    assert meta["path"].value == f"s3://{s3_store_env}/prox/raw/news-00/{result.run_id}.parquet"
    frame = store.read_parquet(raw_key(Catalog(), "news-00"))
    n = Catalog().query("SELECT count(*) n FROM documents WHERE shard = 'news-00'")["n"][0]
    assert frame.height == n == meta["n_ingested"].value > 20
    assert meta["n_read"].value == meta["n_ingested"].value + meta["n_quarantined"].value == 30


def test_plain_jsonl_on_s3_is_read_line_by_line(s3_store_env):
    """s3fs's file objects take no readline limit: the reader buffers them itself."""
    store = ObjectStore()
    store.write_bytes("incoming/plain-00.jsonl", b'{"text": "first"}\n{oops\n{"text": "second"}\n')
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, ["plain-00"])
        result = materialize(instance, "raw_corpus", "plain-00")
    assert result.success
    assert store.read_parquet(raw_key(Catalog(), "plain-00"))["text"].to_list() == [
        "first",
        "second",
    ]
    assert Catalog().query("SELECT reason FROM quarantine").rows() == [("malformed_json",)]
