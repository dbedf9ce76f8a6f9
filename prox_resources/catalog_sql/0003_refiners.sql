-- Every trained refiner: one row per (level, version); earlier versions are never overwritten.
CREATE TABLE refiner_versions (
    level          VARCHAR NOT NULL,
    version        VARCHAR NOT NULL,
    base_model     VARCHAR,
    sft_version    VARCHAR,
    train_config   VARCHAR,   -- JSON
    train_report   VARCHAR,   -- JSON: steps, tokens, seconds, losses
    path           VARCHAR,
    run_id         VARCHAR,
    partition_key  VARCHAR,
    written_at     TIMESTAMP DEFAULT current_timestamp
);

-- Evaluations of refiners and of the un-tuned base model on the same held-out examples.
CREATE TABLE refiner_evals (
    level          VARCHAR NOT NULL,
    version        VARCHAR NOT NULL,  -- the refiner version evaluated against
    model          VARCHAR NOT NULL,  -- 'refiner' | 'base-few-shot'
    dataset        VARCHAR NOT NULL,  -- 'sft-val' | 'real-pairs'
    metric         VARCHAR NOT NULL,
    value          DOUBLE,
    run_id         VARCHAR,
    partition_key  VARCHAR,
    written_at     TIMESTAMP DEFAULT current_timestamp
);

-- A refiner version as the refined corpus sees it: one document refiner and one chunk refiner.
CREATE TABLE refiner_pairs (
    refiner_version VARCHAR NOT NULL,  -- the partition key: d<doc>-c<chunk>
    doc_version     VARCHAR NOT NULL,
    chunk_version   VARCHAR NOT NULL,
    run_id          VARCHAR,
    written_at      TIMESTAMP DEFAULT current_timestamp
);
