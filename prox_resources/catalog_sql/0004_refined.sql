-- What each refiner version did to each document: both programs, the edits applied, errors.
CREATE TABLE program_runs (
    doc_id          VARCHAR NOT NULL,
    shard           VARCHAR NOT NULL,
    refiner_version VARCHAR NOT NULL,
    doc_program     VARCHAR,
    chunk_programs  VARCHAR,   -- JSON list, one per window
    windows         VARCHAR,   -- JSON list of [line_start, line_end]
    edits           VARCHAR,   -- JSON list of the executor's edits
    errors          VARCHAR,   -- JSON list of the executor's errors
    kept            BOOLEAN,
    reason          VARCHAR,   -- why dropped: drop_doc, too_few_words_after_edits, ...
    n_chars_before  BIGINT,
    n_chars_after   BIGINT,
    refined_path    VARCHAR,
    run_id          VARCHAR,
    partition_key   VARCHAR,
    written_at      TIMESTAMP DEFAULT current_timestamp
);
