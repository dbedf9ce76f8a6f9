"""deploy/ and the deployment: servers, the web UI, several workers, S3, DuckLake, the instance."""
