"""The DuckDB catalog: an index of every document, program, score, weight and checkpoint.

DuckDB lets one process at a time open a database file for writing, while Dagster runs steps in
separate processes. Every access therefore goes through a short transaction under an advisory
file lock (``fcntl``: exclusive for writers, shared for readers) next to the database file, and
the connection is closed at the end of it. A process that holds DuckDB's own lock without ours
(someone's DuckDB shell, say) is waited out with retries.

The schema is versioned: ``catalog_sql/NNNN_name.sql`` files are applied in order, each in its
own transaction, and recorded in ``schema_migrations``.
"""

from __future__ import annotations

import fcntl
import os
import random
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import dagster as dg
import duckdb
import polars as pl

from prox_resources.settings import catalog_path


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) for every migration shipped with the package, in order."""
    out = []
    for entry in (resources.files("prox_resources") / "catalog_sql").iterdir():
        if entry.name.endswith(".sql"):
            version, _, name = entry.name.removesuffix(".sql").partition("_")
            out.append((int(version), name, entry.read_text()))
    return sorted(out)


class CatalogBusy(RuntimeError):
    pass


class Catalog(dg.ConfigurableResource):
    """The DuckDB catalog file (default: $PROX_CATALOG or $PROX_HOME/catalog.duckdb)."""

    path: str | None = None
    lock_timeout_s: float = 600.0

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

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection inside one transaction, committed on success, rolled back on error."""
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
        if not self.db_path.exists():
            with self.write():
                pass
        with self._locked(exclusive=False):
            con = self._open(read_only=True)
            try:
                yield con
            finally:
                con.close()

    def migrate(self) -> int:
        with self.write() as con:
            return self.schema_version(con)

    @staticmethod
    def schema_version(con: duckdb.DuckDBPyConnection) -> int:
        return con.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]

    @staticmethod
    def _migrate(con: duckdb.DuckDBPyConnection) -> None:
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name VARCHAR, applied_at TIMESTAMP DEFAULT current_timestamp)"
        )
        current = Catalog.schema_version(con)
        for version, name, sql in migrations():
            if version <= current:
                continue
            con.begin()
            try:
                con.execute(sql)
                con.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", [version, name])
                con.commit()
            except BaseException:
                con.rollback()
                raise

    # --- the operations assets use -------------------------------------------------------
    def replace_rows(
        self, table: str, where: Mapping[str, object], rows: pl.DataFrame | None = None
    ) -> None:
        """Delete the rows matching ``where`` and insert ``rows``, in one transaction.

        This makes every asset's catalog write idempotent: re-materializing a partition replaces
        what the previous materialization of that partition wrote.
        """
        with self.write() as con:
            self._replace(con, table, where, rows)

    @staticmethod
    def _replace(con, table: str, where: Mapping[str, object], rows: pl.DataFrame | None) -> None:
        if where:
            clause = " AND ".join(f"{col} = ?" for col in where)
            con.execute(f"DELETE FROM {table} WHERE {clause}", list(where.values()))
        if rows is not None and rows.height:
            con.register("_rows", rows.to_arrow())
            # no finally: after a failed INSERT the transaction is aborted, and unregistering would
            # raise over the real error; the rollback and close drop the registration anyway
            con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rows")
            con.unregister("_rows")

    def replace_many(self, writes: list[tuple[str, Mapping[str, object], pl.DataFrame | None]]) -> None:
        """Several ``replace_rows`` in one transaction: all land or none."""
        with self.write() as con:
            for table, where, rows in writes:
                self._replace(con, table, where, rows)

    def query(self, sql: str, params: list | None = None) -> pl.DataFrame:
        with self.read() as con:
            return pl.from_arrow(con.sql(sql, params=params or None).to_arrow_table())
