"""The catalog: an index of every document, program, score, weight and checkpoint.

Two backends behind one API, chosen by ``PROX_CATALOG`` (``prox_resources.settings``):

**Embedded** (the default): one DuckDB file. DuckDB lets one process at a time open a database
file for writing, while Dagster runs steps in separate processes. Every access therefore goes
through a short transaction under an advisory file lock (``fcntl``: exclusive for writers, shared
for readers) next to the database file, and the connection is closed at the end of it. A process
that holds DuckDB's own lock without ours (someone's DuckDB shell, say) is waited out with retries.

**DuckLake** (``PROX_CATALOG=ducklake:postgres:<connection string>``): DuckDB's lakehouse format,
for workers on many machines that share no disk. Table metadata (snapshots, schemas, the list of
data files, small inserts inlined) lives in PostgreSQL; rows live as Parquet files under
``PROX_CATALOG_DATA`` (default: ``catalog/`` in the object store). Each process writes directly.
DuckLake commits a transaction as one snapshot in PostgreSQL; a transaction that conflicts with
one committed meanwhile (for DuckLake, deletes and inserts into the same table by two transactions
conflict) fails at commit, and ``replace_rows`` / ``replace_many`` — delete-then-insert, so
idempotent — run again on the new snapshot. The extensions (ducklake, postgres_scanner, httpfs)
come from PyPI packages built for the pinned duckdb and are loaded from their files: nothing is
downloaded at run time.

Every statement over the catalog's tables is a file under ``catalog_sql/``, none is Python text:

- ``NNNN_name.sql``: the migrations;
- ``queries/<name>.sql``: the named queries, each headed by a comment that says what it returns
  and its ``$parameters``. Code reads the catalog through ``named_query(<name>, param=value)``;
  a connection of ``read()`` / ``write()`` runs ``query_text(<name>)`` with the same parameters;
- ``templates/<name>.sql``: the statements of ``replace_rows`` over any table, whose table and
  column names the catalog fills in (``{table}``);
- ``session/<name>.sql``: DuckDB's session commands (loading the extensions, the S3 secret,
  attaching DuckLake, settings, checkpoints, DuckLake's housekeeping), which take no ``$``
  parameters: ``session_command(<name>, placeholder=value)`` fills each ``{placeholder}`` with a
  quoted literal (an ``Identifier``: a quoted identifier).

``query(sql)`` stays for SQL written elsewhere (tests, a notebook); ``query_untrusted(sql)`` is
``prox catalog``'s.

The schema is versioned: ``catalog_sql/NNNN_name.sql`` files are applied in order, each in its
own transaction, and recorded in ``schema_migrations``. Both backends run the same files. DuckLake
has no PRIMARY KEY, so its ``schema_migrations`` has none; instead a migration's transaction also
rewrites the latest ``schema_migrations`` row, so two processes migrating at once conflict and
the one that loses re-reads the version and skips what the other applied.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import importlib.util
import json
import os
import random
import re
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TypeVar

import duckdb
import polars as pl

from prox_resources.settings import (
    ProxSettings,
    catalog_data_path,
    catalog_path,
    catalog_url,
    is_ducklake,
    owned_tempdir,
)

LAKE = "lake"  # the name a DuckLake catalog is attached under; queries name tables unqualified
METADATA_SCHEMA = "prox_catalog"  # the PostgreSQL schema holding DuckLake's metadata tables
# (extension, the PyPI package shipping it for this duckdb), loaded in this order
LAKE_EXTENSIONS = (
    ("httpfs", "duckdb_extension_httpfs"),
    ("postgres_scanner", "duckdb_extension_postgres_scanner"),
    ("ducklake", "duckdb_extension_ducklake"),
)
# DuckDB functions that a person's query may not call on a DuckLake catalog: DuckLake's
# maintenance functions write files, postgres_query() reads any table the login can
UNTRUSTED_FUNCTION_PREFIXES = ("ducklake_", "postgres_")
# the one statement type a person's query may have (show, describe and summarize parse as it)
QUERY_STATEMENT = "select"
T = TypeVar("T")


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration shipped with the package, in order."""
    out = []
    for entry in (resources.files("prox_resources") / "catalog_sql").iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            out.append((int(version), name, entry.read_text()))
    return sorted(out)


_QUERY_NAME = re.compile(r"[a-z][a-z0-9_]*")


def query_names() -> list[str]:
    """The name of every named query shipped with the package (``catalog_sql/queries/*.sql``)."""
    return _sql_names("queries")


def _sql_names(folder: str) -> list[str]:
    entries = (resources.files("prox_resources") / "catalog_sql" / folder).iterdir()
    return sorted(e.name.removesuffix(".sql") for e in entries if e.name.endswith(".sql"))


@functools.cache
def query_text(name: str) -> str:
    """The SQL of named query ``name`` (``catalog_sql/queries/<name>.sql``)."""
    return _sql_file("queries", name)


@functools.cache
def _template(name: str) -> str:
    return _sql_file("templates", name)


def _sql_file(folder: str, name: str) -> str:
    entry = resources.files("prox_resources") / "catalog_sql" / folder / f"{name}.sql"
    if not _QUERY_NAME.fullmatch(name) or not entry.is_file():
        raise KeyError(f"no SQL file catalog_sql/{folder}/{name}.sql")
    return entry.read_text()


_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


@dataclass(frozen=True)
class Identifier:
    """A name (a database, a table) to be written into a session command as a quoted identifier."""

    name: str


def _sql_literal(value: object) -> str:
    """``value`` as SQL: a string as a string literal, an ``Identifier`` as a quoted identifier,
    a bool as true/false, a number as itself (quotes doubled: nothing closes the quotes early)."""
    if isinstance(value, Identifier):
        return '"' + value.name.replace('"', '""') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"not a finite number: {value}")
        return str(value)
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for a {type(value).__name__}")


def session_names() -> list[str]:
    """The name of every session command shipped with the package (``catalog_sql/session/``)."""
    return _sql_names("session")


def session_command(name: str, /, **values: object) -> str:
    """DuckDB session command ``name`` (``catalog_sql/session/<name>.sql``, its ``--`` comment
    lines dropped) with each ``{placeholder}`` filled with ``values[placeholder]`` as a quoted
    literal (``_sql_literal``); a line whose value is None is left out (an option not given).
    These commands (LOAD, ATTACH, CREATE SECRET, SET, ...) take no ``$`` parameters. Every
    placeholder needs a value, and every value a placeholder."""
    lines = [ln for ln in _session_file(name).splitlines() if not ln.startswith("--")]
    wanted = {p for ln in lines for p in _PLACEHOLDER.findall(ln)}
    if wanted != set(values):
        raise KeyError(f"session/{name}.sql takes {sorted(wanted)}, given {sorted(values)}")
    kept = [ln for ln in lines if all(values[p] is not None for p in _PLACEHOLDER.findall(ln))]
    return "\n".join(
        _PLACEHOLDER.sub(lambda m: _sql_literal(values[m.group(1)]), ln) for ln in kept
    ).strip()


@functools.cache
def _session_file(name: str) -> str:
    return _sql_file("session", name)


def _use_lake() -> str:
    return session_command("use_database", database=Identifier(LAKE))


@dataclass(frozen=True)
class ParquetRows:
    """Rows too many to hold in memory: a local Parquet file, plus columns constant across it."""

    path: str
    constants: dict[str, object] = field(default_factory=dict)


Rows = pl.DataFrame | ParquetRows | None


class CatalogBusy(RuntimeError):
    pass


class CatalogConfigError(RuntimeError):
    pass


def _extension_files() -> list[str]:
    files = []
    for name, package in LAKE_EXTENSIONS:
        spec = importlib.util.find_spec(package)
        folder = (
            Path(next(iter(spec.submodule_search_locations)))
            if spec and spec.submodule_search_locations
            else None
        )
        path = (
            folder / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
            if folder
            else None
        )
        if path is None or not path.exists():
            raise CatalogConfigError(
                f"a DuckLake catalog needs the PyPI package {package.replace('_', '-')}=={duckdb.__version__} "
                "(the deploy extra: pip install -e '.[deploy]')"
            )
        files.append(str(path))
    return files


def _s3_secret(data_path: str) -> str | None:
    """The S3 secret (``session/s3_secret.sql``) for the data path's bucket from the standard AWS
    variables (as the object store reads them); None for a local data path."""
    scheme = data_path.partition("://")[0] if "://" in data_path else "file"
    if scheme == "file":
        return None
    if scheme not in ("s3", "s3a", "s3n"):
        raise CatalogConfigError(
            f"PROX_CATALOG_DATA={data_path}: a DuckLake catalog keeps its files "
            "in a local folder or under s3://"
        )
    env = ProxSettings.from_environment().aws
    key_id = env.get("AWS_ACCESS_KEY_ID") or None
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    # an S3-compatible server (SeaweedFS, MinIO, ...): its host, and path-style URLs
    parts = (
        urllib.parse.urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if endpoint
        else None
    )
    return session_command(
        "s3_secret",
        scope=data_path,
        region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
        key_id=key_id,
        secret=env.get("AWS_SECRET_ACCESS_KEY", "") if key_id else None,
        session_token=env.get("AWS_SESSION_TOKEN") or None,
        endpoint=parts.netloc if parts else None,
        use_ssl=parts.scheme == "https" if parts else None,
        url_style="path" if parts else None,
    )


def _open_lake(url: str, data_path: str, read_only: bool) -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB with the DuckLake catalog attached as ``lake`` (and made current)."""
    if not url.startswith("ducklake:postgres:"):
        raise CatalogConfigError(
            f"PROX_CATALOG: a DuckLake catalog is ducklake:postgres:<connection string>, "
            f"not {url.split(':')[:2]}"
        )
    if "://" not in data_path:
        os.makedirs(data_path, exist_ok=True)
    con = duckdb.connect(
        config={"autoinstall_known_extensions": False, "autoload_known_extensions": False}
    )
    try:
        for path in _extension_files():
            con.execute(session_command("load_extension", path=path))
        secret = _s3_secret(data_path)
        if secret:
            con.execute(secret)
        con.execute(
            session_command(
                "attach_lake",
                url=url,
                database=Identifier(LAKE),
                data_path=data_path,
                metadata_schema=METADATA_SCHEMA,
                read_only=True if read_only else None,
            )
        )
        con.execute(_use_lake())
    except BaseException:
        con.close()
        raise
    return con


@dataclass
class _Lake:
    """One process's DuckDB attached to a DuckLake catalog; each operation takes a cursor."""

    database: duckdb.DuckDBPyConnection
    migrated: bool = False


_lakes: dict[tuple, _Lake] = {}
_lakes_lock = threading.Lock()
# conflicts this process met and retried (tests and benchmarks read it)
retry_counts = {"conflicts": 0}


def _retryable(exc: BaseException) -> bool:
    """A DuckLake commit that lost to a concurrent one, or a first ATTACH that lost the race to
    create the metadata tables in an empty database: safe to run again."""
    text = str(exc)
    if "Failed to initialize DuckLake" in text:
        return "already exists" in text or "duplicate key" in text
    return isinstance(exc, duckdb.TransactionException) and (
        "conflict" in text.lower() or "Failed to commit DuckLake transaction" in text
    )


def _rollback_quietly(con: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):  # a failed COMMIT has rolled back already
        con.rollback()


class CatalogCore:
    """The catalog: a DuckDB file (default: $PROX_CATALOG or $PROX_HOME/catalog.duckdb) or a
    DuckLake (``path`` / $PROX_CATALOG = ``ducklake:postgres:...``, files under ``data_path`` /
    $PROX_CATALOG_DATA, default ``catalog/`` in the store).

    Every operation, without Dagster: ``Catalog`` (the Dagster resource, in
    ``catalog_resource.py``) and ``PlainCatalog`` add the three settings below as fields. This
    module imports no Dagster, so that a command that only reads the catalog (``prox audit``)
    starts in a fraction of a second instead of paying ~1 s to import Dagster."""

    path: str | None
    data_path: str | None
    lock_timeout_s: float

    @property
    def url(self) -> str:
        return self.path or catalog_url()

    @property
    def is_ducklake(self) -> bool:
        return is_ducklake(self.url)

    @property
    def lake_data_path(self) -> str:
        if not self.data_path:
            return catalog_data_path()
        path = (
            self.data_path
            if "://" in self.data_path
            else str(Path(self.data_path).expanduser().absolute())
        )
        return path.rstrip("/") + "/"

    @property
    def db_path(self) -> Path:
        return Path(self.path) if self.path else catalog_path()

    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.db_path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + self.lock_timeout_s
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise CatalogBusy(f"catalog {self.db_path} locked for too long") from None
                    time.sleep(0.01 + random.random() * 0.05)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _open(self, read_only: bool) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                return duckdb.connect(str(self.db_path), read_only=read_only)
            except duckdb.IOException as exc:  # held by a process outside our lock
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05 + random.random() * 0.1)

    # --- DuckLake ------------------------------------------------------------------------
    def _lake(self) -> _Lake:
        """This process's attached DuckLake, migrated (opened on first use; a forked child opens
        its own)."""
        data_path = self.lake_data_path
        env = ProxSettings.from_environment().aws
        aws = tuple(
            env.get(k)
            for k in (
                "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN",
                "AWS_ENDPOINT_URL",
                "AWS_ENDPOINT_URL_S3",
                "AWS_REGION",
            )
        )
        key = (os.getpid(), self.url, data_path, aws)
        with _lakes_lock:
            lake = _lakes.get(key)
            if lake is None:
                lake = _lakes[key] = _Lake(
                    self._retrying(lambda: _open_lake(self.url, data_path, read_only=False))
                )
        if not lake.migrated:
            self._retrying(lambda: self._migrate_lake(lake))
            lake.migrated = True
        return lake

    def _lake_cursor(self) -> duckdb.DuckDBPyConnection:
        lake = self._lake()
        with _lakes_lock:
            con = lake.database.cursor()
        con.execute(_use_lake())
        return con

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """``attempt()`` until it does not lose a DuckLake commit race, with jittered backoff."""
        deadline = time.monotonic() + self.lock_timeout_s
        tries = 0
        while True:
            try:
                return attempt()
            except duckdb.Error as exc:
                if not _retryable(exc) or time.monotonic() > deadline:
                    raise
                tries += 1
                retry_counts["conflicts"] += 1
                time.sleep(min(2.0, 0.02 * 1.5**tries) * (0.5 + random.random()))

    def _migrate_lake(self, lake: _Lake) -> None:
        con = lake.database.cursor()
        try:
            con.execute(_use_lake())
            con.execute(query_text("schema_migrations_lake_table"))
            if self.schema_version(con) >= max(v for v, _, _ in migrations()):
                return
            for version, name, sql in migrations():
                con.begin()  # the version is read in the transaction's own snapshot
                try:
                    current = self.schema_version(con)
                    if version <= current:
                        con.commit()
                        continue
                    # rewrite the latest row: a concurrent migration of this version conflicts
                    con.execute(query_text("claim_migration"), {"version": current})
                    con.execute(sql)
                    con.execute(query_text("record_migration"), {"version": version, "name": name})
                    con.commit()
                except BaseException:
                    _rollback_quietly(con)
                    raise
        finally:
            con.close()

    @contextmanager
    def _lake_write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        con = self._lake_cursor()
        try:
            con.begin()
            try:
                yield con
            except BaseException:
                _rollback_quietly(con)
                raise
            con.commit()  # a commit that loses to a concurrent one raises (and has rolled back)
        finally:
            con.close()

    # --- both backends -------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection inside one transaction, committed on success, rolled back on error."""
        if self.is_ducklake:
            with self._lake_write() as con:
                yield con
            return
        with self._locked(exclusive=True):
            con = self._open(read_only=False)
            try:
                self._migrate(con)
                con.begin()
                try:
                    yield con
                    con.commit()
                except BaseException:
                    con.rollback()
                    raise
            finally:
                con.close()

    @contextmanager
    def read(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self.is_ducklake:
            con = self._lake_cursor()
            try:
                yield con
            finally:
                con.close()
            return
        if not self.db_path.exists():
            with self.write():
                pass
        with self._locked(exclusive=False):
            con = self._open(read_only=True)
            try:
                yield con
            finally:
                con.close()

    def _transaction(self, body: Callable[[duckdb.DuckDBPyConnection], None]) -> None:
        """``body`` in one write transaction; on DuckLake, run again when its commit loses a race
        (``body`` must be idempotent: the replace operations are)."""

        def attempt() -> None:
            with self.write() as con:
                body(con)

        if self.is_ducklake:
            self._retrying(attempt)
        else:
            attempt()

    def migrate(self) -> int:
        if self.is_ducklake:
            with self.read() as con:
                return self.schema_version(con)
        with self.write() as con:
            return self.schema_version(con)

    def maintain(self, keep_snapshots_days: float = 7.0) -> None:
        """DuckLake housekeeping: merge the small files that per-partition writes leave, expire
        snapshots older than ``keep_snapshots_days`` and delete the files no snapshot needs any
        more. Embedded: a DuckDB CHECKPOINT."""
        if not self.is_ducklake:
            with self._locked(exclusive=True):
                con = self._open(read_only=False)
                try:
                    con.execute(session_command("checkpoint"))
                finally:
                    con.close()
            return
        age = f"{float(keep_snapshots_days) * 86400:.0f} seconds"

        def attempt() -> None:
            con = self._lake_cursor()
            try:
                con.execute(session_command("lake_merge_files", lake=LAKE))
                con.execute(session_command("lake_expire_snapshots", lake=LAKE, age=age))
                con.execute(session_command("lake_cleanup_files", lake=LAKE, age=age))
            finally:
                con.close()

        self._retrying(attempt)

    @staticmethod
    def schema_version(con: duckdb.DuckDBPyConnection) -> int:
        return con.execute(query_text("schema_version")).fetchall()[0][0]

    @staticmethod
    def _migrate(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(query_text("schema_migrations_table"))
        current = CatalogCore.schema_version(con)
        for version, name, sql in migrations():
            if version <= current:
                continue
            con.begin()
            try:
                con.execute(sql)
                con.execute(query_text("record_migration"), {"version": version, "name": name})
                con.commit()
            except BaseException:
                con.rollback()
                raise

    # --- the operations assets use -------------------------------------------------------
    def replace_rows(self, table: str, where: Mapping[str, object], rows: Rows = None) -> None:
        """Delete the rows matching ``where`` and insert ``rows``, in one transaction.

        This makes every asset's catalog write idempotent: re-materializing a partition replaces
        what the previous materialization of that partition wrote.
        """
        self._transaction(lambda con: self._replace(con, table, where, rows))

    @staticmethod
    def _replace(con, table: str, where: Mapping[str, object], rows: Rows) -> None:
        if where:
            condition = " AND ".join(f"{col} = ${col}" for col in where)
            con.execute(
                _template("delete_where").format(table=table, condition=condition), dict(where)
            )
        if isinstance(rows, ParquetRows):  # DuckDB streams the file: memory stays bounded
            if "rows_file" in rows.constants:
                raise ValueError("a constant column may not be named rows_file")
            constants = "".join(f", ${col} AS {col}" for col in rows.constants)
            con.execute(
                _template("insert_parquet").format(table=table, constants=constants),
                {**rows.constants, "rows_file": rows.path},
            )
        elif rows is not None and rows.height:
            con.register("_rows", rows.to_arrow())
            # no finally: after a failed insert the transaction is aborted, and unregistering would
            # raise over the real error; the rollback and close drop the registration anyway
            con.execute(_template("insert_frame").format(table=table))
            con.unregister("_rows")

    def replace_many(self, writes: list[tuple[str, Mapping[str, object], Rows]]) -> None:
        """Several ``replace_rows`` in one transaction: all land or none."""

        def body(con) -> None:
            for table, where, rows in writes:
                self._replace(con, table, where, rows)

        self._transaction(body)

    def named_query(self, name: str, /, **params: object) -> pl.DataFrame:
        """The rows of named query ``name`` (``catalog_sql/queries/<name>.sql``) with its
        ``$parameters`` given by keyword: how the platform's code reads the catalog."""
        with self.read() as con:
            return _frame(con.sql(query_text(name), params=params or None).to_arrow_table())

    def query(self, sql: str, params: list | dict | None = None) -> pl.DataFrame:
        """The rows of SQL written elsewhere (tests, a notebook); the platform's own modules hold
        no SQL and read through ``named_query``."""
        with self.read() as con:
            return _frame(con.sql(sql, params=params or None).to_arrow_table())

    def query_untrusted(self, sql: str) -> pl.DataFrame:
        """SQL typed by a person (``prox catalog``), which must be unable to write anything anywhere.

        Three walls, each enough for what it covers: DuckDB's own parser admits queries only
        (select, show, describe, summarize; no copy, export, attach, set, pragma, checkpoint,
        install or write statement: DuckDB lets a copy to a file write the database's own file
        and WAL even with external access off), the connection is read-only, and file and
        network access are
        off with the configuration locked. On DuckLake the data files' folder stays readable and
        queries may call no ``ducklake_*`` or ``postgres_*`` function.

        Embedded, the query runs on a snapshot copied under the shared lock, so a long query
        never holds up a writer (DuckDB admits one writing process or many readers per file).
        Raises ``duckdb.Error`` for bad or refused SQL."""
        if self.is_ducklake:
            self._lake()  # created and migrated: a read-only attach cannot do either
            con = _open_lake(self.url, self.lake_data_path, read_only=True)
            try:
                _refuse_writing_statements(con, sql)
                con.execute(session_command("allow_directories", directory=self.lake_data_path))
                return self._untrusted(con, sql)
            finally:
                con.close()
        with (
            duckdb.connect() as parser
        ):  # parse before touching the catalog: refused SQL costs nothing
            _refuse_writing_statements(parser, sql)
        with self._snapshot() as copy:
            con = duckdb.connect(str(copy), read_only=True)
            try:
                return self._untrusted(con, sql)
            finally:
                con.close()

    @contextmanager
    def _snapshot(self) -> Iterator[Path]:
        """A private copy of the embedded database (and its WAL), taken under the shared lock and
        deleted afterwards; a killed reader's copy is deleted by the next one (``owned_tempdir``)."""
        if not self.db_path.exists():
            with self.write():
                pass
        with owned_tempdir("prox-catalog-snapshot-") as folder:
            copy = Path(folder) / "catalog.duckdb"
            with self._locked(exclusive=False):
                shutil.copyfile(self.db_path, copy)
                wal = Path(f"{self.db_path}.wal")
                if wal.exists():
                    shutil.copyfile(wal, f"{copy}.wal")
            yield copy

    @staticmethod
    def _untrusted(con: duckdb.DuckDBPyConnection, sql: str) -> pl.DataFrame:
        con.execute(session_command("no_external_access"))
        con.execute(session_command("lock_configuration"))
        relation = con.sql(sql)
        if relation is None:  # a statement without a result
            return pl.DataFrame()
        table = relation.to_arrow_table()
        if all(_fits_polars(table.column(i)) for i in range(table.num_columns)):
            return _frame(table)
        # a value polars cannot hold or print (INTERVAL, UNION, infinite or far timestamps...):
        # those columns as DuckDB's own text, the others as they are, rather than a traceback
        columns = []
        for i, name in enumerate(relation.columns):
            quoted = '"' + name.replace('"', '""') + '"'
            fits = _fits_polars(table.column(i))
            columns.append(quoted if fits else _template("column_as_text").format(column=quoted))
        return _frame(relation.project(", ".join(columns)).to_arrow_table())


def _fits_polars(column) -> bool:
    """Whether polars can hold this Arrow column and print each value: a type it has, and dates
    and times within years 1-9999 (DuckDB's infinities are int64 extremes, on which polars panics
    when printing)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        pl.from_arrow(pa.table({"c": column}))
    except (pl.exceptions.PolarsError, ValueError, OverflowError, TypeError):
        return False
    kind = column.type
    per_day = (
        86_400 * {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[kind.unit]
        if pa.types.is_timestamp(kind)
        else 1
        if pa.types.is_date32(kind)
        else 86_400_000
        if pa.types.is_date64(kind)
        else None
    )
    if per_day is not None:
        storage = pa.int32() if pa.types.is_date32(kind) else pa.int64()
        extremes = pc.min_max(column.cast(storage))
        lo, hi = extremes["min"].as_py(), extremes["max"].as_py()
        # days from 1970-01-01 to year 1 and to 9999-12-31
        return lo is None or (-719_162 * per_day <= lo and hi <= 2_932_896 * per_day)
    if pa.types.is_nested(kind):  # a struct or list may hold such a value inside: as text
        return not any(pa.types.is_timestamp(t) or pa.types.is_date(t) for t in _leaf_types(kind))
    return True


def _leaf_types(kind) -> Iterator:
    import pyarrow as pa

    if pa.types.is_struct(kind):
        for i in range(kind.num_fields):
            yield from _leaf_types(kind.field(i).type)
    elif (
        pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
    ):
        yield from _leaf_types(kind.value_type)
    elif pa.types.is_map(kind):
        yield from _leaf_types(kind.key_type)
        yield from _leaf_types(kind.item_type)
    else:
        yield kind


def _function_names(node) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "function_name" and isinstance(v, str):
                yield v
            else:
                yield from _function_names(v)
    elif isinstance(node, list):
        for v in node:
            yield from _function_names(v)


def _refuse_writing_statements(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse anything but queries, and queries calling DuckLake's or PostgreSQL's functions
    (DuckDB's own parser decides: a statement it cannot serialise as a query is not one)."""
    for statement in con.extract_statements(sql):
        if statement.type.name.lower() != QUERY_STATEMENT:
            raise duckdb.PermissionException(
                f"Permission Error: {statement.type.name} refused: the catalog answers queries "
                "only (select, show, describe, summarize)"
            )
        tree = json.loads(
            con.execute(query_text("statement_tree"), {"statement": statement.query}).fetchall()[0][
                0
            ]
        )
        if tree.get("error"):
            raise duckdb.PermissionException(
                f"Permission Error: {statement.type.name} refused: the catalog answers queries only"
            )
        for name in _function_names(tree):
            if name.lower().startswith(UNTRUSTED_FUNCTION_PREFIXES):
                raise duckdb.PermissionException(
                    f"Permission Error: {name}() refused on a DuckLake catalog"
                )


def _frame(table) -> pl.DataFrame:
    """An Arrow table as a DataFrame (``pl.from_arrow`` gives a Series only for an Arrow array)."""
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


class PlainCatalog(CatalogCore):
    """The catalog outside Dagster, for commands that must start fast (``prox audit``)."""

    def __init__(
        self, path: str | None = None, data_path: str | None = None, lock_timeout_s: float = 600.0
    ):
        self.path, self.data_path, self.lock_timeout_s = path, data_path, lock_timeout_s


def __getattr__(name: str):
    """``Catalog``, the Dagster resource, imported from here as ever, and Dagster with it only then."""
    if name == "Catalog":
        from prox_resources.catalog_resource import Catalog

        return Catalog
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
