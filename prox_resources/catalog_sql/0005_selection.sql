CREATE TABLE targets (
    target        VARCHAR NOT NULL,
    task          VARCHAR,
    n_target      INTEGER,
    n_heldout     INTEGER,
    seed          INTEGER,
    path          VARCHAR,
    written_at    TIMESTAMP DEFAULT current_timestamp
);

-- Estimated influence of every pool document on a target (mean over the target's examples).
CREATE TABLE influence_scores (
    target        VARCHAR NOT NULL,
    version       VARCHAR NOT NULL,
    doc_id        VARCHAR NOT NULL,
    pool          VARCHAR,
    score         DOUBLE,
    is_landmark   BOOLEAN,
    exact_score   DOUBLE,   -- landmarks and the held-out check only
    run_id        VARCHAR,
    partition_key VARCHAR,
    written_at    TIMESTAMP DEFAULT current_timestamp
);

CREATE TABLE selections (
    target        VARCHAR NOT NULL,
    version       VARCHAR NOT NULL,
    doc_id        VARCHAR NOT NULL,
    weight        DOUBLE,
    rank          INTEGER,
    budget        INTEGER,
    method        VARCHAR,
    run_id        VARCHAR,
    partition_key VARCHAR,
    written_at    TIMESTAMP DEFAULT current_timestamp
);
