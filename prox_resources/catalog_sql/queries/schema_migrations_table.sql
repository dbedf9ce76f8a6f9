-- the embedded catalog's record of applied migrations (catalog_sql/NNNN_*.sql), made if missing
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       VARCHAR,
    applied_at TIMESTAMP DEFAULT current_timestamp
)
