-- A trained checkpoint: one (target, variant, seed). Checkpoints with equal inputs share a
-- version (and files): e.g. the raw/refined variants are the same model for every target.
CREATE TABLE checkpoints (
    target        VARCHAR NOT NULL,
    variant       VARCHAR NOT NULL,
    seed          INTEGER NOT NULL,
    version       VARCHAR NOT NULL,
    base_model    VARCHAR,
    data_spec     VARCHAR,   -- where the documents came from (pool, selection or refiner version)
    text_kind     VARCHAR,   -- raw | refined
    n_docs        INTEGER,
    train_tokens  BIGINT,
    steps         INTEGER,
    final_loss    DOUBLE,
    seconds       DOUBLE,
    config        VARCHAR,   -- JSON: every hyperparameter, the seed included
    path          VARCHAR,
    run_id        VARCHAR,
    partition_key VARCHAR,
    written_at    TIMESTAMP DEFAULT current_timestamp
);

-- Which documents (and how often) a checkpoint trained on: the audit trail from a document.
CREATE TABLE checkpoint_documents (
    version       VARCHAR NOT NULL,
    doc_id        VARCHAR NOT NULL,
    weight        DOUBLE,
    target        VARCHAR,
    variant       VARCHAR,
    seed          INTEGER,
    run_id        VARCHAR,
    partition_key VARCHAR,
    written_at    TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE checkpoint_evals (
    target        VARCHAR NOT NULL,
    variant       VARCHAR NOT NULL,
    seed          INTEGER NOT NULL,
    version       VARCHAR NOT NULL,
    task          VARCHAR,
    metric        VARCHAR NOT NULL,
    value         DOUBLE,
    n             INTEGER,   -- examples (or prose passages) behind the value
    run_id        VARCHAR,
    partition_key VARCHAR,
    written_at    TIMESTAMP DEFAULT current_timestamp
);
