"""The catalog's deployment backend for real: DuckLake with its metadata in PostgreSQL (Debian's
server, started by the test) and its Parquet files in a SeaweedFS S3 bucket. The Catalog API, the
migrations, writer processes that share nothing but the two servers, ``prox catalog`` and
``prox audit``, and a raw_corpus ingestion whose counts reconcile."""

import json
import multiprocessing as mp
import os
import queue as queue_module
import subprocess
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest

from prox_resources.catalog import METADATA_SCHEMA, Catalog, ParquetRows, migrations
from prox_resources.settings import REPO_ROOT
from tests.support.paths import BIN
from tests.support.servers import fresh_lake


@pytest.fixture
def lake(postgres, seaweedfs, prox_env, monkeypatch):
    """A fresh catalog database and bucket; PROX_CATALOG, PROX_STORE, PGPASSWORD and AWS_* set."""
    fresh = fresh_lake(postgres, seaweedfs)
    name, s3, env = fresh["db"], fresh["s3"], fresh["env"]
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PROX_CATALOG_DATA", raising=False)
    return {
        "db": name,
        "bucket": name.replace("_", "-"),
        "env": env,
        "s3": s3,
        "home": prox_env,
        "pg": postgres,
    }


def _pg(lake, sql: str) -> list[tuple]:
    import psycopg2

    pg = lake["pg"]
    with psycopg2.connect(
        host=pg["host"],
        port=pg["port"],
        user=pg["user"],
        password=pg["password"],
        dbname=lake["db"],
    ) as con:
        cur = con.cursor()
        cur.execute(sql)
        return cur.fetchall()


@pytest.mark.slow
def test_catalog_api_round_trip_on_ducklake(lake, tmp_path):
    catalog = Catalog()
    assert catalog.is_ducklake and catalog.lake_data_path == f"s3://{lake['bucket']}/prox/catalog/"
    latest = max(v for v, _, _ in migrations())
    assert catalog.migrate() == latest and Catalog().migrate() == latest
    applied = catalog.query("SELECT version FROM schema_migrations ORDER BY 1")["version"].to_list()
    assert applied == sorted(v for v, _, _ in migrations())  # each once, in order

    # replace_rows: idempotent; the columns added by migrations 0007/0008 with their defaults
    rows = pl.DataFrame({"shard": ["s1", "s1"], "reason": ["a", "b"]})
    catalog.replace_rows("quarantine", {"shard": "s1"}, rows)
    catalog.replace_rows("quarantine", {"shard": "s1"}, rows)
    assert catalog.query("SELECT count(*) n, sum(n_records) r FROM quarantine").row(0) == (2, 2)
    # replace_many: all or nothing
    with pytest.raises(duckdb.CatalogException, match="no_such_table"):
        catalog.replace_many([("quarantine", {"shard": "s1"}, None), ("no_such_table", {}, rows)])
    assert catalog.query("SELECT count(*) n FROM quarantine")["n"][0] == 2

    # ParquetRows: a local file streamed in, with constant columns (more rows than DuckLake inlines)
    index = tmp_path / "index.parquet"
    pl.DataFrame(
        {"doc_id": [f"d{i}" for i in range(500)], "n_words": list(range(500))}
    ).write_parquet(index)
    catalog.replace_many(
        [
            (
                "ingestions",
                {"shard": "s1"},
                pl.DataFrame({"shard": ["s1"], "n_read": [500], "n_ingested": [500]}),
            ),
            (
                "documents",
                {"shard": "s1"},
                ParquetRows(
                    str(index), {"shard": "s1", "raw_path": "raw/s1/r1.parquet", "run_id": "r1"}
                ),
            ),
        ]
    )
    docs = catalog.query(
        "SELECT count(*) n, count(DISTINCT doc_id) d, min(raw_path) p, sum(n_words) w "
        "FROM documents WHERE shard = ?",
        ["s1"],
    )
    assert docs.row(0) == (500, 500, "raw/s1/r1.parquet", sum(range(500)))
    catalog.query("SELECT 1")  # reads see every committed write (no stale snapshot in this process)

    from prox_assets.audit import audit_document

    audit = audit_document(catalog, "d7")
    assert [(r["shard"], r["run_id"], r["n_words"]) for r in audit["ingested"]] == [("s1", "r1", 7)]

    # where it lives: metadata in PostgreSQL (schema prox_catalog), rows as Parquet on S3, nothing local
    tables = {
        r[0]
        for r in _pg(
            lake,
            "SELECT table_name FROM information_schema.tables "
            f"WHERE table_schema = '{METADATA_SCHEMA}'",
        )
    }
    assert {"ducklake_snapshot", "ducklake_data_file"} <= tables
    files = lake["s3"].find(f"{lake['bucket']}/prox/catalog/")
    assert any(f.endswith(".parquet") for f in files)
    assert not list(lake["home"].rglob("*.duckdb"))

    catalog.maintain()  # merge files, expire snapshots, delete what no snapshot needs: rows unchanged
    assert catalog.query("SELECT count(*) n FROM documents")["n"][0] == 500


# --- writers that share nothing but the servers -------------------------------------------------
ROUNDS, SHARDS, DOCS, SHARED = 10, 5, 40, 12


def _writer(worker: int, home: str, queue) -> None:
    """One worker with its own PROX_HOME: every round replaces one of its shards (each shard twice)
    in two tables at once, and the one key every worker writes."""
    os.environ["PROX_HOME"] = home
    Path(home).mkdir(parents=True)
    from prox_resources import catalog as catalog_module

    catalog = Catalog()
    started = time.monotonic()
    index = Path(home) / "index.parquet"
    for i in range(ROUNDS):
        shard, run = f"w{worker}-{i % SHARDS}", f"w{worker}-r{i}"
        pl.DataFrame(
            {"doc_id": [f"{shard}-{d}" for d in range(DOCS)], "n_words": [i] * DOCS}
        ).write_parquet(index)
        catalog.replace_many(
            [
                (
                    "ingestions",
                    {"shard": shard},
                    pl.DataFrame({"shard": [shard], "n_ingested": [DOCS], "run_id": [run]}),
                ),
                (
                    "documents",
                    {"shard": shard},
                    ParquetRows(str(index), {"shard": shard, "run_id": run}),
                ),
            ]
        )
        catalog.replace_rows(
            "quarantine",
            {"shard": "shared"},
            pl.DataFrame(
                {"shard": ["shared"] * SHARED, "reason": ["r"] * SHARED, "run_id": [run] * SHARED}
            ),
        )
        catalog.query("SELECT count(*) FROM documents")  # readers interleave with writers
    queue.put(
        {
            "worker": worker,
            "seconds": time.monotonic() - started,
            "conflicts_retried": catalog_module.retry_counts["conflicts"],
            "local_files": sorted(
                p.name for p in Path(home).rglob("*") if p.is_file() and p != index
            ),
        }
    )


@pytest.mark.slow
def test_writer_processes_on_a_fresh_lake_lose_no_rows(lake, tmp_path):
    workers = 4
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    homes = [tmp_path / f"worker-{w}" for w in range(workers)]
    procs = [ctx.Process(target=_writer, args=(w, str(homes[w]), queue)) for w in range(workers)]
    started = time.monotonic()
    for p in procs:  # all at once, on a lake nobody has migrated yet
        p.start()
    results = []
    deadline = time.monotonic() + 600
    while len(results) < workers and time.monotonic() < deadline:
        try:
            results.append(queue.get(timeout=1))
        except queue_module.Empty:  # a worker that died says nothing: stop waiting for it
            if any(p.exitcode not in (None, 0) for p in procs):
                break
    for p in procs:
        p.join(60)
    results.sort(key=lambda r: r["worker"])
    wall = time.monotonic() - started
    assert [p.exitcode for p in procs] == [0] * workers
    assert all(r["local_files"] == [] for r in results), results  # no local catalog anywhere

    catalog = Catalog()
    versions = catalog.query(
        "SELECT version, count(*) n FROM schema_migrations GROUP BY 1 ORDER BY 1"
    ).rows()
    assert versions == [(v, 1) for v, _, _ in migrations()]  # migrated once, by one of the four
    docs = catalog.query(
        "SELECT shard, count(*) n, count(DISTINCT doc_id) d, min(run_id) a, max(run_id) b "
        "FROM documents GROUP BY 1 ORDER BY 1"
    )
    assert docs.height == workers * SHARDS
    expected = {f"w{w}-{s}": f"w{w}-r{s + SHARDS}" for w in range(workers) for s in range(SHARDS)}
    for shard, n, d, first, last in docs.rows():  # every shard exactly its last write, nothing lost
        assert (n, d, first, last) == (DOCS, DOCS, expected[shard], expected[shard]), shard
    ingestions = dict(catalog.query("SELECT shard, run_id FROM ingestions").rows())
    assert ingestions == expected
    shared = catalog.query("SELECT count(*) n, count(DISTINCT run_id) runs FROM quarantine").row(0)
    assert shared == (SHARED, 1)  # the key all four replaced: one write's rows, never two
    writes = workers * ROUNDS * 2
    print(
        f"\nDuckLake writers: {workers} processes x {ROUNDS} rounds = {writes} write transactions "
        f"({workers * ROUNDS * (DOCS + 1 + SHARED)} rows written, {docs['n'].sum()} documents kept) in "
        f"{wall:.1f} s wall (incl. process start), per worker "
        f"{[round(r['seconds'], 1) for r in results]} s, conflicts retried "
        f"{[r['conflicts_retried'] for r in results]}"
    )


# --- the command line -------------------------------------------------------------------------------
def _prox(lake, *args, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, **lake["env"], "PROX_HOME": str(lake["home"])}
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.run(
        [BIN / "prox", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_prox_catalog_is_read_only_and_prox_audit_works_on_ducklake(lake, tmp_path):
    catalog = Catalog()
    catalog.replace_many(
        [
            (
                "documents",
                {"shard": "s1"},
                pl.DataFrame(
                    {
                        "doc_id": ["d1", "d2"],
                        "shard": ["s1", "s1"],
                        "n_words": [3, 4],
                        "run_id": ["r1", "r1"],
                    }
                ),
            ),
            (
                "program_runs",
                {"shard": "s1"},
                pl.DataFrame(
                    {
                        "doc_id": ["d1"],
                        "shard": ["s1"],
                        "refiner_version": ["dX-cY"],
                        "kept": [True],
                        "status": ["kept"],
                        "doc_program": ["keep_doc()"],
                        "chunk_programs": ['["keep_chunk()"]'],
                        "windows": ["[[0, 3]]"],
                        "edits": ["[]"],
                        "errors": ["[]"],
                        "n_chars_before": [10],
                        "n_chars_after": [10],
                    }
                ),
            ),
        ]
    )
    rows = json.loads(
        _prox(lake, "catalog", "--json", "SELECT doc_id, n_words FROM documents ORDER BY 1").stdout
    )
    assert rows == [{"doc_id": "d1", "n_words": 3}, {"doc_id": "d2", "n_words": 4}]
    assert "documents" in _prox(lake, "catalog", "SHOW TABLES").stdout

    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET")
    target = tmp_path / "copied.csv"
    s3_target = f"s3://{lake['bucket']}/prox/catalog/copied.csv"
    before_s3 = sorted(lake["s3"].find(lake["bucket"]))
    before_pg = _pg(lake, f"SELECT count(*) FROM {METADATA_SCHEMA}.ducklake_snapshot")
    for sql in [
        f"COPY (SELECT * FROM documents) TO '{target}'",
        f"COPY (SELECT * FROM documents) TO '{s3_target}'",  # the data folder is readable, not writable
        f"SELECT * FROM read_text('{secret}')",
        f"ATTACH '{tmp_path / 'other.duckdb'}' AS o",
        "SET enable_external_access = true",
        "SELECT 1; DELETE FROM documents",
        "DELETE FROM documents",
        "INSERT INTO documents (doc_id, shard) VALUES ('x', 'y')",
        "INSTALL httpfs",
        "SELECT * FROM ducklake_merge_adjacent_files('lake')",
        "CALL ducklake_expire_snapshots('lake', older_than => now())",
        f"SELECT * FROM postgres_query('__ducklake_metadata_lake', 'SELECT * FROM {METADATA_SCHEMA}.ducklake_snapshot')",
        f"EXPORT DATABASE '{tmp_path / 'export'}'",
    ]:
        proc = _prox(lake, "catalog", sql, check=False)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: catalog:")]
        assert proc.returncode != 0 and "Traceback" not in proc.stderr and len(errors) == 1, (
            sql,
            proc.stderr,
        )
        assert "SECRET" not in proc.stderr and "Permission Error" in errors[0], (sql, errors[0])
    assert not target.exists() and not (tmp_path / "export").exists()
    assert sorted(lake["s3"].find(lake["bucket"])) == before_s3  # no object written, none removed
    assert (
        _pg(lake, f"SELECT count(*) FROM {METADATA_SCHEMA}.ducklake_snapshot") == before_pg
    )  # no commit
    assert "syntax error" in _prox(lake, "catalog", "SELEC 1", check=False).stderr
    assert json.loads(
        _prox(lake, "catalog", "--json", "SELECT count(*) AS n FROM documents").stdout
    ) == [{"n": 2}]

    audit = json.loads(_prox(lake, "audit", "d1", "--json").stdout)
    assert [r["shard"] for r in audit["ingested"]] == ["s1"]
    assert [(r["refiner_version"], r["kept"], r["windows"]) for r in audit["refinements"]] == [
        ("dX-cY", True, [[0, 3]])
    ]


# --- the real ingestion on S3 + DuckLake ------------------------------------------------------------
@pytest.mark.slow
def test_raw_corpus_on_seaweedfs_and_ducklake_reconciles(lake, sample_files):
    import dagster as dg

    from prox_assets.ingest import raw_key
    from prox_assets.partitions import shard_partitions
    from prox_resources.store import ObjectStore
    from tests.support.pipeline import materialize

    store = ObjectStore()
    news = next(p for p in sample_files if p.name == "news-00.warc.gz")
    store.put_file(str(news), f"incoming/{news.name}")
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, ["news-00"])
        for _ in range(2):  # a re-materialization replaces the shard's rows, never adds to them
            result = materialize(instance, "raw_corpus", "news-00")
            assert result.success
    meta = result.asset_materializations_for_node("raw_corpus")[0].metadata
    catalog = Catalog()
    key = raw_key(catalog, "news-00")
    assert key == f"raw/news-00/{result.run_id}.parquet"
    frame = store.read_parquet(key)
    docs = catalog.query(
        "SELECT count(*) n, count(DISTINCT run_id) runs, min(run_id) run FROM documents "
        "WHERE shard = 'news-00'"
    ).row(0)
    ingestion = catalog.query(
        "SELECT n_read, n_ingested, n_quarantined, n_quarantine_unsampled FROM ingestions "
        "WHERE shard = 'news-00'"
    ).rows()
    quarantined = catalog.query(
        "SELECT coalesce(sum(n_records), 0) n FROM quarantine WHERE shard = 'news-00'"
    )["n"][0]
    assert (
        docs == (frame.height, 1, result.run_id) and frame.height == meta["n_ingested"].value > 20
    )
    [(n_read, n_ingested, n_quarantined, unsampled)] = ingestion
    assert n_read == n_ingested + n_quarantined == meta["n_read"].value
    assert n_ingested == frame.height and quarantined + (unsampled or 0) == n_quarantined
    assert set(frame["doc_id"]) == set(catalog.query("SELECT doc_id FROM documents")["doc_id"])
    assert not (lake["home"] / "catalog.duckdb").exists()  # the k8s path: no local-file catalog


# --- the deployments use it -------------------------------------------------------------------------
def _env_list(entries: list[dict]) -> dict:
    return {e["name"]: e.get("value") for e in entries}


def test_kubernetes_and_compose_use_the_ducklake_catalog(monkeypatch):
    """No local-file catalog on the k8s path: every run and step pod gets PROX_CATALOG (a DuckLake
    in PostgreSQL) and the Secret with its password; compose does the same."""
    import yaml

    values = yaml.safe_load((REPO_ROOT / "deploy" / "helm" / "values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    env = _env_list(deployment["env"])
    assert env["PROX_EXECUTOR"] == "k8s" and env["PROX_CATALOG"].startswith("ducklake:postgres:")
    assert "password" not in env["PROX_CATALOG"].lower()  # from the Secret, as PGPASSWORD
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    for secrets_ in (deployment["envSecrets"], launcher["envSecrets"]):
        assert {"name": "prox-catalog"} in secrets_ and {"name": "prox-s3"} in secrets_
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True  # run pods get the env

    compose = yaml.safe_load((REPO_ROOT / "deploy" / "compose.yaml").read_text())
    code = compose["services"]["code"]["environment"]
    assert code["PROX_CATALOG"].startswith("ducklake:postgres:") and code["PGPASSWORD"].startswith(
        "${"
    )

    # the values resolve to a DuckLake whose files go under the store's bucket
    for k, v in {"PROX_CATALOG": env["PROX_CATALOG"], "PROX_STORE": env["PROX_STORE"]}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("PROX_CATALOG_DATA", raising=False)
    catalog = Catalog()
    assert (
        catalog.is_ducklake
        and catalog.lake_data_path == env["PROX_STORE"].rstrip("/") + "/catalog/"
    )


def test_the_embedded_default_is_still_one_local_file(prox_env):
    catalog = Catalog()
    assert not catalog.is_ducklake and catalog.db_path == prox_env / "catalog.duckdb"
    assert catalog.migrate() == max(v for v, _, _ in migrations())
    assert (prox_env / "catalog.duckdb").exists()
