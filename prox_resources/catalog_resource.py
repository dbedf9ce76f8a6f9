"""The catalog as a Dagster resource: ``CatalogCore``'s operations with its settings as fields.

Imported as ``from prox_resources.catalog import Catalog`` (the catalog module hands it out on
first use), so that ``prox_resources.catalog`` itself imports no Dagster.
"""

from __future__ import annotations

import dagster as dg

from prox_resources.catalog import CatalogCore


class Catalog(CatalogCore, dg.ConfigurableResource):
    """The catalog: a DuckDB file (default: $PROX_CATALOG or $PROX_HOME/catalog.duckdb) or a
    DuckLake (``path`` / $PROX_CATALOG = ``ducklake:postgres:...``, files under ``data_path`` /
    $PROX_CATALOG_DATA, default ``catalog/`` in the store)."""

    path: str | None = None
    data_path: str | None = None
    lock_timeout_s: float = 600.0
