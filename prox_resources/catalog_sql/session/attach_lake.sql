-- Attach the DuckLake catalog (url: ducklake:postgres:<connection string>) as database, its
-- files under data_path and its metadata tables in the PostgreSQL schema metadata_schema;
-- read_only given: a read-only attach.
ATTACH {url} AS {database} (
    DATA_PATH {data_path}
    , METADATA_SCHEMA {metadata_schema}
    , READ_ONLY {read_only}
)
