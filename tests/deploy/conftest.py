"""Fixtures of the deployment tests: a PostgreSQL server of their own."""

import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from prox_assets.servers import Server, free_port, wait_until
from tests.support.servers import as_postgres_user, chown_postgres, postgres_bin


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own (initdb in a temporary folder), a `dagster` database and
    a password login; stopped and removed afterwards."""
    import psycopg2

    bindir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="prox-pg-", dir="/tmp"))
    root.chmod(0o755)
    password = secrets.token_hex(12)
    (root / "pw").write_text(password)
    chown_postgres(root)
    subprocess.run(
        [
            *as_postgres_user(),
            bindir / "initdb",
            "-D",
            root / "data",
            "-U",
            "prox",
            "--pwfile",
            root / "pw",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = Server(
        "postgres",
        [
            *as_postgres_user(),
            bindir / "postgres",
            "-D",
            root / "data",
            "-p",
            port,
            "-h",
            "127.0.0.1",
            "-k",
            root,
        ],
        root,
    )
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "user": "prox",
        "password": password,
        "db": "dagster",
        "server": server,
    }

    def connect(db):
        try:
            return psycopg2.connect(
                host="127.0.0.1", port=port, user="prox", password=password, dbname=db
            )
        except psycopg2.OperationalError:
            return None

    con = wait_until(lambda: connect("postgres"), "PostgreSQL accepting connections", 60, [server])
    con.autocommit = True
    con.cursor().execute("CREATE DATABASE dagster")
    con.close()
    yield settings
    server.stop(sig=2)  # SIGINT: PostgreSQL's fast shutdown
    shutil.rmtree(root, ignore_errors=True)
