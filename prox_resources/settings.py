"""Where things live, from the environment. One place, so every process agrees.

PROX_HOME     local working folder (default ./.prox): catalog, Dagster instance, caches, samples
PROX_STORE    object-store root (default $PROX_HOME/store); a local path or s3://bucket/prefix
PROX_CATALOG  the catalog: a DuckDB file (default $PROX_HOME/catalog.duckdb), or a DuckLake shared
              by many machines, ``ducklake:postgres:<libpq connection string or URI>`` (table
              metadata in PostgreSQL; password from PGPASSWORD or the connection string)
PROX_CATALOG_DATA  where a DuckLake catalog keeps its Parquet files (default $PROX_STORE/catalog)
PROX_DOWNLOADS  source packages unpacked by deploy/setup.sh (default $PROX_HOME/downloads)
S3 endpoint and credentials come from the standard AWS variables (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never from a file of this project.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def prox_home() -> Path:
    return Path(os.environ.get("PROX_HOME", ".prox")).expanduser().absolute()


def downloads_dir() -> Path:
    return (
        Path(os.environ.get("PROX_DOWNLOADS") or prox_home() / "downloads").expanduser().absolute()
    )


def store_url() -> str:
    return os.environ.get("PROX_STORE") or str(prox_home() / "store")


DUCKLAKE_PREFIX = "ducklake:"


def catalog_url() -> str:
    """$PROX_CATALOG as given (a file path or ``ducklake:postgres:...``), else the default file."""
    return os.environ.get("PROX_CATALOG") or str(prox_home() / "catalog.duckdb")


def is_ducklake(url: str) -> bool:
    return url.startswith(DUCKLAKE_PREFIX)


def catalog_path() -> Path:
    """The embedded catalog's file (PROX_CATALOG when it names a file)."""
    url = catalog_url()
    if is_ducklake(url):
        raise ValueError("PROX_CATALOG names a DuckLake catalog, not a file")
    return Path(url).expanduser().absolute()


def catalog_data_path() -> str:
    """Where a DuckLake catalog writes its Parquet files: $PROX_CATALOG_DATA, else ``catalog/``
    under the store (an s3:// prefix or a local folder), always ending in ``/``."""
    path = os.environ.get("PROX_CATALOG_DATA") or f"{store_url().rstrip('/')}/catalog"
    if "://" not in path:
        path = str(Path(path).expanduser().absolute())
    return path.rstrip("/") + "/"


def configure_environment() -> None:
    """Pin PROX_HOME to an absolute path and give Dagster an instance under it.

    Unless DAGSTER_HOME is set, it becomes $PROX_HOME/dagster, holding a copy of this
    repository's dagster.yaml (refreshed when the original changes), so run history lives next
    to the data it describes.
    """
    home = prox_home()
    os.environ["PROX_HOME"] = str(home)
    if "DAGSTER_HOME" in os.environ:
        return
    instance_dir = home / "dagster"
    instance_dir.mkdir(parents=True, exist_ok=True)
    source = REPO_ROOT / "dagster.yaml"
    target = instance_dir / "dagster.yaml"
    if source.exists() and (not target.exists() or target.read_bytes() != source.read_bytes()):
        # a temporary name of its own: several commands started together each write theirs
        fd, tmp = tempfile.mkstemp(prefix=".dagster.yaml.", dir=instance_dir)
        with os.fdopen(fd, "wb") as f:
            f.write(source.read_bytes())
        os.replace(tmp, target)
    os.environ["DAGSTER_HOME"] = str(instance_dir)


@contextmanager
def file_lock(path: Path, timeout_s: float = 600.0) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) on ``path`` between processes of this machine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{path} held by another process for over {timeout_s:.0f}s"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


def lock_path(name: str) -> Path:
    """``$PROX_HOME/locks/<name>.lock``: locks between the commands of this machine."""
    return prox_home() / "locks" / f"{name}.lock"
