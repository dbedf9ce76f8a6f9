-- rewrites the latest migration's row ($version: the current version), so that two processes
-- applying the next migration at once conflict on DuckLake and one of them retries
UPDATE schema_migrations SET applied_at = applied_at WHERE version = $version
