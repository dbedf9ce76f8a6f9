"""prox_assets: the Dagster assets, checks and sensors, materialized on a test instance."""
