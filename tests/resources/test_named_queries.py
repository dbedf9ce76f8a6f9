"""One place for SQL: the catalog's statements are files under ``prox_resources/catalog_sql/``
(migrations, named queries, templates, session commands); the modules hold none, every named
query runs against a freshly migrated catalog, and every session command stays one statement
whatever its values."""

import re
import tomllib
from pathlib import Path

import duckdb
import pytest

from prox_resources.catalog import (
    Identifier,
    PlainCatalog,
    query_names,
    query_text,
    session_command,
    session_names,
)

REPO = Path(__file__).resolve().parents[2]
# SQL statements as they would be spelled in a Python string (upper case, as in the .sql files)
SQL_TEXT = re.compile(
    r"\b(SELECT|INSERT|UPDATE|DELETE FROM|MERGE INTO|"
    r"(CREATE|ALTER|DROP)( OR REPLACE)?( TEMP| TEMPORARY)? (TABLE|VIEW|INDEX|SEQUENCE|MACRO|SCHEMA))\b"
)
# DuckDB's session commands as they would be spelled in a Python string
SESSION_TEXT = re.compile(
    r"\b((LOAD|INSTALL|FORCE INSTALL|DETACH|USE) ['\"{a-z]"
    r"|ATTACH( DATABASE)?( IF NOT EXISTS)? ['\"{$?]"
    r"|SET( GLOBAL| SESSION| LOCAL)? [a-z_]+ ?(=|TO\b)|RESET( GLOBAL| SESSION| LOCAL)? [a-z_]+\b"
    r"|CREATE( OR REPLACE)?( PERSISTENT| TEMPORARY| TEMP)? SECRET( [a-z_{\"][\w{}\"]*)? ?\("
    r"|(FORCE )?CHECKPOINT\s*([\"';{]|[a-z_]+\b)"
    r"|CALL [a-z_]+\(|PRAGMA [a-z_]+|(EXPORT|IMPORT) DATABASE\b|VACUUM\b)"
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


def _sql_lines(source: str) -> list[tuple[int, str]]:
    return [
        (n, line)
        for n, line in enumerate(source.splitlines(), 1)
        if SQL_TEXT.search(line) or SESSION_TEXT.search(line)
    ]


def test_no_python_module_holds_sql():
    """Asset modules, cli.py, core/ and prox_resources/: SQL lives in catalog_sql/*.sql only,
    queries and DuckDB's session commands alike."""
    offenders = [
        f"{path.relative_to(REPO)}:{n}: {line.strip()}"
        for path in _python_files()
        for n, line in _sql_lines(path.read_text())
    ]
    assert not offenders, (
        "SQL text in a module (make it a named query or a session command):\n"
        + "\n".join(offenders)
    )


def test_the_sql_check_catches_session_commands_and_passes_prose():
    """The control: each way the catalog once spelled a session command in Python is caught;
    prose that names the commands is not."""
    caught = [
        'con.execute(f"LOAD {_lit(path)}")',
        'con.execute("INSTALL httpfs")',
        'f"ATTACH {_lit(url)} AS {LAKE} (READ_ONLY)"',
        "con.execute(\"ATTACH 'x.db' AS y\")",
        'con.execute(f"USE {LAKE}")',
        'con.execute("SET enable_external_access = false")',
        'con.execute(f"SET allowed_directories = [{path}]")',
        'con.execute("RESET memory_limit")',
        'return f"CREATE SECRET prox_catalog_s3 ({body})"',
        'con.execute("CREATE OR REPLACE PERSISTENT SECRET s (TYPE s3)")',
        'con.execute("CHECKPOINT")',
        'con.execute(f"CALL ducklake_merge_adjacent_files({_lit(LAKE)})")',
        'con.execute("PRAGMA database_size")',
    ]
    for line in caught:
        assert _sql_lines(line), line
    for line in (
        "This module spells no session command (LOAD, ATTACH, USE, SET, CREATE SECRET, ...).",
        '"""A first ATTACH that lost the race to create the metadata tables."""',
        "catalog.maintain()  # CHECKPOINT: the file holds everything",
        'con.execute(session_command("checkpoint"))',
    ):
        assert not _sql_lines(line), line


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


# a value of every placeholder a session command takes: quotes and statement separators that an
# unescaped command would close early on
SESSION_EXAMPLES: dict[str, object] = {
    "path": "/opt/ext/it's'; DROP TABLE t; --.duckdb_extension",
    "scope": "s3://bucket/cat'alog/",
    "region": "us-east-1",
    "key_id": "AKIA'); SELECT 1; --",
    "secret": "s3cr'et",
    "session_token": "tok''en",
    "endpoint": "localhost:8333",
    "use_ssl": False,
    "url_style": "path",
    "url": "ducklake:postgres:dbname=prox password='x'",
    "lake": "lake",
    "data_path": "/data/o'neil/",
    "metadata_schema": "prox_catalog",
    "read_only": True,
    "database": Identifier('la"ke'),
    "age": "604800 seconds",
    "directory": "/data/o'neil/",
}


def test_every_session_command_says_what_it_is_is_used_and_stays_one_statement():
    """Each file opens with a ``--`` comment; every one is used and every one used exists; with
    hostile values each renders to exactly one statement that DuckDB parses, with every value
    intact in it."""
    source = "\n".join(p.read_text() for p in _python_files())
    called = set(re.findall(r"session_command\(\s*\"([a-z0-9_]+)\"", source))
    assert called == set(session_names())
    con = duckdb.connect()
    try:
        for name in session_names():
            text = (REPO / "prox_resources" / "catalog_sql" / "session" / f"{name}.sql").read_text()
            assert text.startswith("-- "), f"{name}.sql: no comment saying what it does"
            body = "\n".join(ln for ln in text.splitlines() if not ln.startswith("--"))
            wanted = set(re.findall(r"\{([a-z_]+)\}", body))
            sql = session_command(name, **{k: SESSION_EXAMPLES[k] for k in wanted})
            statements = con.extract_statements(sql)
            assert len(statements) == 1, f"{name}.sql: {sql}"
            for key in wanted:
                value = SESSION_EXAMPLES[key]
                if isinstance(value, str):
                    assert "'" + value.replace("'", "''") + "'" in sql, (name, key)
    finally:
        con.close()


def test_session_commands_quote_their_values_and_leave_out_options_not_given():
    assert session_command("use_database", database=Identifier("lake")) == 'USE "lake"'
    assert session_command("use_database", database=Identifier('a"b')) == 'USE "a""b"'
    assert session_command("load_extension", path="/x/it's") == "LOAD '/x/it''s'"
    secret = session_command(
        "s3_secret",
        scope="s3://b/p/",
        region="eu-west-1",
        key_id=None,
        secret=None,
        session_token=None,
        endpoint="host:9000",
        use_ssl=True,
        url_style="path",
    )
    assert "KEY_ID" not in secret and "SECRET '" not in secret and "SESSION_TOKEN" not in secret
    assert ", ENDPOINT 'host:9000'" in secret and ", USE_SSL true" in secret
    attach = {
        "url": "u",
        "database": Identifier("lake"),
        "data_path": "/d/",
        "metadata_schema": "s",
    }
    assert "READ_ONLY" not in session_command("attach_lake", **attach, read_only=None)
    assert ", READ_ONLY true" in session_command("attach_lake", **attach, read_only=True)
    with pytest.raises(KeyError, match="takes"):
        session_command("load_extension")
    with pytest.raises(KeyError, match="takes"):
        session_command("checkpoint", extra="x")
    with pytest.raises(TypeError):
        session_command("load_extension", path=object())
    with pytest.raises(KeyError, match="no SQL file"):
        session_command("../queries/schema_version")
