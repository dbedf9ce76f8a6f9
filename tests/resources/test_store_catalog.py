"""The object store's atomic writes and the catalog's migrations and concurrent writers."""

import multiprocessing as mp
import os

import duckdb
import polars as pl
import pytest

from prox_resources.catalog import Catalog, migrations
from prox_resources.store import ObjectStore


def test_local_store_round_trip(tmp_path):
    store = ObjectStore(url=str(tmp_path / "root"))
    store.write_bytes("a/b/c.bin", b"hello")
    store.write_parquet("t/x.parquet", pl.DataFrame({"v": [1, 2]}))
    assert store.read_bytes("a/b/c.bin") == b"hello"
    assert store.read_parquet("t/x.parquet")["v"].to_list() == [1, 2]
    assert store.list("a/") == ["a/b/c.bin"] and store.exists("t/x.parquet")
    assert store.uri("t/x.parquet") == f"{tmp_path}/root/t/x.parquet"


def test_a_failed_write_leaves_nothing_that_looks_finished(tmp_path):
    store = ObjectStore(url=str(tmp_path))
    store.write_bytes("k", b"old")
    with pytest.raises(RuntimeError), store.open_write("k") as f:
        f.write(b"half of the new")
        raise RuntimeError("killed")
    assert store.read_bytes("k") == b"old"
    assert os.listdir(tmp_path) == ["k"]  # no temporary file left behind either


def test_readers_never_see_a_partial_file(tmp_path):
    store = ObjectStore(url=str(tmp_path))
    with store.open_write("new") as f:
        f.write(b"x" * 1000)
        assert not store.exists("new") and store.list("") == []  # the temp file is invisible
    assert store.read_bytes("new") == b"x" * 1000


def test_migrations_are_versioned_and_idempotent(tmp_path):
    catalog = Catalog(path=str(tmp_path / "c.duckdb"))
    latest = max(v for v, _, _ in migrations())
    assert catalog.migrate() == latest
    assert catalog.migrate() == latest
    applied = catalog.query("SELECT version FROM schema_migrations ORDER BY 1")["version"].to_list()
    assert applied == sorted(v for v, _, _ in migrations())


def test_replace_rows_is_idempotent_and_transactional(tmp_path):
    catalog = Catalog(path=str(tmp_path / "c.duckdb"))
    rows = pl.DataFrame({"shard": ["s1", "s1"], "reason": ["a", "b"]})
    catalog.replace_rows("quarantine", {"shard": "s1"}, rows)
    catalog.replace_rows("quarantine", {"shard": "s1"}, rows)
    assert catalog.query("SELECT count(*) n FROM quarantine")["n"][0] == 2
    with pytest.raises(duckdb.CatalogException, match="no_such_table"):
        catalog.replace_many(
            [
                ("quarantine", {"shard": "s1"}, None),
                ("no_such_table", {}, rows),
            ]
        )
    assert catalog.query("SELECT count(*) n FROM quarantine")["n"][0] == 2  # rolled back


def _writer(path: str, worker: int, n: int) -> None:
    catalog = Catalog(path=path)
    for i in range(n):
        catalog.replace_rows(
            "quarantine",
            {"shard": f"w{worker}-{i}"},
            pl.DataFrame({"shard": [f"w{worker}-{i}"] * 3, "reason": ["r"] * 3}),
        )
        catalog.query("SELECT count(*) FROM quarantine")  # readers interleave with writers


def test_concurrent_writer_processes(tmp_path):
    path = str(tmp_path / "c.duckdb")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert Catalog(path=path).query("SELECT count(*) n FROM quarantine")["n"][0] == 4 * 15 * 3
