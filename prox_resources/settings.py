"""Where things live, from the environment. One place, so every process agrees.

PROX_HOME     local working folder (default ./.prox): catalog, Dagster instance, caches, samples
PROX_STORE    object-store root (default $PROX_HOME/store); a local path or s3://bucket/prefix
PROX_CATALOG  DuckDB catalog file (default $PROX_HOME/catalog.duckdb)
S3 endpoint and credentials come from the standard AWS variables (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), never from a file of this project.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def prox_home() -> Path:
    return Path(os.environ.get("PROX_HOME", ".prox")).expanduser().absolute()


def store_url() -> str:
    return os.environ.get("PROX_STORE") or str(prox_home() / "store")


def catalog_path() -> Path:
    return Path(os.environ.get("PROX_CATALOG") or prox_home() / "catalog.duckdb").absolute()


def configure_environment() -> None:
    """Pin PROX_HOME to an absolute path and point Dagster at this project's instance config.

    DAGSTER_HOME is the folder holding this repository's dagster.yaml; that file reads its
    storage folder from PROX_DAGSTER_DIR, so run history lives under PROX_HOME.
    """
    home = prox_home()
    os.environ["PROX_HOME"] = str(home)
    os.environ.setdefault("PROX_DAGSTER_DIR", str(home / "dagster"))
    if "DAGSTER_HOME" not in os.environ and (REPO_ROOT / "dagster.yaml").exists():
        os.environ["DAGSTER_HOME"] = str(REPO_ROOT)
    Path(os.environ["PROX_DAGSTER_DIR"]).mkdir(parents=True, exist_ok=True)
