-- Every ingested document, one row per (doc_id, shard). The text itself lives in the store at
-- raw_path; the catalog indexes it.
CREATE TABLE documents (
    doc_id        VARCHAR NOT NULL,
    shard         VARCHAR NOT NULL,
    source        VARCHAR,
    url           VARCHAR,
    n_chars       BIGINT,
    n_words       BIGINT,
    raw_path      VARCHAR,
    row_index     BIGINT,
    run_id        VARCHAR,
    partition_key VARCHAR,
    written_at    TIMESTAMP DEFAULT current_timestamp
);

-- Inputs that could not become documents, with the reason. Nothing is dropped silently.
CREATE TABLE quarantine (
    shard         VARCHAR NOT NULL,
    source_file   VARCHAR,
    locator       VARCHAR,   -- line:N, row:N, record:N or file
    reason        VARCHAR NOT NULL,
    detail        VARCHAR,
    sample        VARCHAR,   -- the first bytes of the offending input, escaped
    run_id        VARCHAR,
    partition_key VARCHAR,
    written_at    TIMESTAMP DEFAULT current_timestamp
);

-- One row per ingestion of a shard: the counts that must reconcile (read = ingested + quarantined).
CREATE TABLE ingestions (
    shard         VARCHAR NOT NULL,
    source_file   VARCHAR,
    n_read        BIGINT,
    n_ingested    BIGINT,
    n_quarantined BIGINT,
    raw_path      VARCHAR,
    run_id        VARCHAR,
    partition_key VARCHAR,
    written_at    TIMESTAMP DEFAULT current_timestamp
);
