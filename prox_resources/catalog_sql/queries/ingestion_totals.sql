-- one row: shards, n_read, n_ingested, n_quarantined summed over every shard's latest ingestion
SELECT count(*) AS shards, sum(n_read) AS n_read, sum(n_ingested) AS n_ingested,
       sum(n_quarantined) AS n_quarantined
FROM ingestions
