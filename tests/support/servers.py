"""PostgreSQL and S3 for the deployment tests (the servers themselves: ``prox_assets.servers``)."""

import os
import shutil
from pathlib import Path


def postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise RuntimeError(
            "PostgreSQL is missing: run deploy/setup.sh --dev (Debian package postgresql)"
        )
    return found[-1].parent


def as_postgres_user() -> list[str]:
    """initdb refuses to run as root: run the server as the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []


def chown_postgres(path: Path) -> None:
    if os.getuid() == 0:
        shutil.chown(path, "postgres", "postgres")
        for p in path.rglob("*"):
            shutil.chown(p, "postgres", "postgres")


def fresh_lake(postgres: dict, seaweedfs: dict) -> dict:
    """A new PostgreSQL database and SeaweedFS bucket for one DuckLake catalog and store: their
    names, the s3fs filesystem, and the environment that points prox at them."""
    import secrets

    import psycopg2
    import s3fs

    db = f"lake_{secrets.token_hex(4)}"
    con = psycopg2.connect(
        host=postgres["host"],
        port=postgres["port"],
        user=postgres["user"],
        password=postgres["password"],
        dbname="postgres",
    )
    con.autocommit = True
    con.cursor().execute(f"CREATE DATABASE {db}")
    con.close()
    bucket = db.replace("_", "-")
    s3 = s3fs.S3FileSystem(
        endpoint_url=seaweedfs["endpoint"], key=seaweedfs["key"], secret=seaweedfs["secret"]
    )
    s3.mkdir(bucket)
    env = {
        "PROX_CATALOG": f"ducklake:postgres:host={postgres['host']} port={postgres['port']} "
        f"user={postgres['user']} dbname={db}",
        "PGPASSWORD": postgres["password"],  # libpq's own variable: no password in PROX_CATALOG
        "PROX_STORE": f"s3://{bucket}/prox",
        "AWS_ENDPOINT_URL": seaweedfs["endpoint"],
        "AWS_ACCESS_KEY_ID": seaweedfs["key"],
        "AWS_SECRET_ACCESS_KEY": seaweedfs["secret"],
    }
    return {"db": db, "bucket": bucket, "s3": s3, "env": env}
