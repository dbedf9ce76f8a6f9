-- a DuckLake catalog's record of applied migrations, made if missing (DuckLake has no PRIMARY KEY:
-- claim_migration serialises migrations instead)
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER NOT NULL,
    name       VARCHAR,
    applied_at TIMESTAMP DEFAULT current_timestamp
)
