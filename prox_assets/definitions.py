"""The one Definitions object of the code location (loaded by workspace.yaml)."""

from __future__ import annotations

import os

import dagster as dg

from prox_assets.ingest import incoming_files_sensor, raw_corpus
from prox_resources.catalog import Catalog
from prox_resources.device import DeviceSettings
from prox_resources.store import ObjectStore

ASSETS = [raw_corpus]
SENSORS = [incoming_files_sensor]


def _env(name: str) -> dg.EnvVar | None:
    """An EnvVar reference when the variable is set: the UI shows the name, never the value."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def build_resources() -> dict:
    return {
        "store": ObjectStore(
            url=_env("PROX_STORE"),
            endpoint_url=_env("AWS_ENDPOINT_URL"),
            access_key_id=_env("AWS_ACCESS_KEY_ID"),
            secret_access_key=_env("AWS_SECRET_ACCESS_KEY"),
        ),
        "catalog": Catalog(path=_env("PROX_CATALOG")),
        "device": DeviceSettings(),
    }


defs = dg.Definitions(assets=ASSETS, sensors=SENSORS, resources=build_resources())
