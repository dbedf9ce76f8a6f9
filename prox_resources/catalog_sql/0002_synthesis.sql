-- Seed documents scored with the two rubrics (educational value, format/extraction quality).
CREATE TABLE seed_scores (
    doc_id         VARCHAR NOT NULL,
    shard          VARCHAR NOT NULL,
    edu_score      INTEGER,
    edu_expected   DOUBLE,
    edu_method     VARCHAR,
    edu_critique   VARCHAR,
    format_score   INTEGER,
    format_expected DOUBLE,
    format_method  VARCHAR,
    format_critique VARCHAR,
    keep           BOOLEAN,
    model          VARCHAR,
    backend        VARCHAR,
    prompt_version VARCHAR,
    run_id         VARCHAR,
    partition_key  VARCHAR,
    written_at     TIMESTAMP DEFAULT current_timestamp
);

-- Every synthetic SFT example, accepted or rejected (with the reason), per SFT set version.
CREATE TABLE sft_examples (
    example_id     VARCHAR NOT NULL,
    level          VARCHAR NOT NULL,
    sft_version    VARCHAR NOT NULL,
    doc_id         VARCHAR NOT NULL,
    shard          VARCHAR,
    window_index   INTEGER,
    line_start     INTEGER,
    line_end       INTEGER,
    target         VARCHAR,
    label          VARCHAR,
    status         VARCHAR,
    reject_reason  VARCHAR,
    split          VARCHAR,
    annotator      VARCHAR,
    model          VARCHAR,
    prompt_version VARCHAR,
    run_id         VARCHAR,
    partition_key  VARCHAR,
    written_at     TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE sft_sets (
    level          VARCHAR NOT NULL,
    sft_version    VARCHAR NOT NULL,
    path           VARCHAR,
    n_train        BIGINT,
    n_val          BIGINT,
    n_rejected     BIGINT,
    config         VARCHAR,
    run_id         VARCHAR,
    partition_key  VARCHAR,
    written_at     TIMESTAMP DEFAULT current_timestamp
);
