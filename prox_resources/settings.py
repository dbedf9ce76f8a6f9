"""Where things live, from the environment. One place, so every process agrees.

PROX_HOME     local working folder (default ./.prox): catalog, Dagster instance, caches, samples
PROX_STORE    object-store root (default $PROX_HOME/store); a local path or s3://bucket/prefix
PROX_CATALOG  DuckDB catalog file (default $PROX_HOME/catalog.duckdb)
PROX_DOWNLOADS  source packages unpacked by deploy/setup.sh (default $PROX_HOME/downloads)
S3 endpoint and credentials come from the standard AWS variables (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never from a file of this project.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def prox_home() -> Path:
    return Path(os.environ.get("PROX_HOME", ".prox")).expanduser().absolute()


def downloads_dir() -> Path:
    return Path(os.environ.get("PROX_DOWNLOADS") or prox_home() / "downloads").expanduser().absolute()


def store_url() -> str:
    return os.environ.get("PROX_STORE") or str(prox_home() / "store")


def catalog_path() -> Path:
    return Path(os.environ.get("PROX_CATALOG") or prox_home() / "catalog.duckdb").absolute()


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
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(source.read_bytes())
        tmp.replace(target)
    os.environ["DAGSTER_HOME"] = str(instance_dir)
