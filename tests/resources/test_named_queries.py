"""One place for SQL: the catalog's statements are files under ``prox_resources/catalog_sql/``
(migrations, named queries, templates); the modules hold none, and every named query runs against
a freshly migrated catalog."""

import re
import tomllib
from pathlib import Path

import duckdb
import pytest

from prox_resources.catalog import PlainCatalog, query_names, query_text

REPO = Path(__file__).resolve().parents[2]
# SQL statements as they would be spelled in a Python string (upper case, as in the .sql files)
SQL_TEXT = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE FROM|MERGE INTO|"
    r"(CREATE|ALTER|DROP)( OR REPLACE)?( TEMP| TEMPORARY)? (TABLE|VIEW|INDEX|SEQUENCE|MACRO|SCHEMA))\b"
)
PARAMETER = re.compile(r"\$([a-z_]+)\b")
# a value of every parameter a named query takes (a query with a new parameter fails below until
# it is given one here); OVERRIDES: where a name means something else
EXAMPLES = {
    "doc_id": "0123456789abcdef0123456789abcdef",
    "shard": "news-00",
    "level": "doc",
    "sft_version": "sft-1",
    "refiner_version": "d1-c1",
    "doc_version": "d1",
    "chunk_version": "c1",
    "target": "gsm8k",
    "version": "v1",
    "statement": "SELECT 1",
    "start": 0,
    "stop": 20,
    "per_shard": 5,
    "name": "a_migration",
}
OVERRIDES = {"claim_migration": {"version": 8}, "record_migration": {"version": 10**6}}


def _python_files() -> list[Path]:
    return sorted([*REPO.glob("prox_assets/**/*.py"), *REPO.glob("prox_resources/**/*.py")])


def _parameters(sql: str) -> set[str]:
    code = "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
    return set(PARAMETER.findall(code))


def test_no_python_module_holds_sql():
    """Asset modules, cli.py, core/ and prox_resources/: SQL lives in catalog_sql/*.sql only."""
    offenders = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in _python_files()
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if SQL_TEXT.search(line)
    ]
    assert not offenders, "SQL text in a module (make it a named query):\n" + "\n".join(offenders)


def test_every_named_query_used_exists_and_every_one_is_used():
    source = "\n".join(p.read_text() for p in _python_files())
    called = set(re.findall(r"(?:named_query|query_text)\(\s*\"([a-z0-9_]+)\"", source))
    from prox_assets.audit import SECTIONS

    called |= {f"audit_{section}" for section in SECTIONS}
    assert called - set(query_names()) == set()
    assert set(query_names()) - called == set()


def test_every_named_query_says_what_it_is_and_runs_on_a_fresh_catalog(tmp_path):
    """Each file opens with a ``--`` comment; each statement binds against the migrated schema
    (its tables, columns, parameters), in a transaction rolled back after it."""
    path = tmp_path / "catalog.duckdb"
    PlainCatalog(path=str(path)).migrate()
    names = query_names()
    assert len(names) > 30
    con = duckdb.connect(str(path))
    try:
        for name in names:
            sql = query_text(name)
            assert sql.startswith("-- "), f"{name}.sql: no comment saying what it returns"
            wanted = _parameters(sql)
            assert wanted <= EXAMPLES.keys(), (
                f"{name}.sql: no example for {wanted - EXAMPLES.keys()}"
            )
            params = {k: EXAMPLES[k] for k in wanted} | OVERRIDES.get(name, {})
            con.begin()
            try:
                con.execute(sql, params or None)
            except duckdb.Error as exc:
                pytest.fail(f"{name}.sql: {exc}")
            finally:
                con.rollback()
    finally:
        con.close()


def test_named_query_reads_with_keyword_parameters(tmp_path):
    from prox_assets.scale_bench import fill_catalog

    catalog = PlainCatalog(path=str(tmp_path / "catalog.duckdb"))
    catalog.migrate()
    fill_catalog(catalog, 20, n_shards=4)
    assert catalog.named_query("refined_shards", refiner_version="nope").is_empty()
    assert catalog.named_query("refinement_totals")["n"].to_list() == [20]
    with pytest.raises(KeyError, match="no SQL file"):
        catalog.named_query("../0001_documents")


def test_the_package_data_ships_every_sql_file():
    """An installed package finds its migrations, named queries and templates."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    root = REPO / "prox_resources"
    shipped = {
        p
        for pattern in config["tool"]["setuptools"]["package-data"]["prox_resources"]
        for p in root.glob(pattern)
    }
    assert set(root.rglob("*.sql")) - shipped == set()
