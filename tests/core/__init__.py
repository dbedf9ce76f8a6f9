"""prox_assets/core: the pure domain modules (no Dagster), as plain functions."""
