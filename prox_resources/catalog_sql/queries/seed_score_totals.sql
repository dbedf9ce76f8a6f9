-- one row: n, shards, edu, fmt, keep: the seed documents scored, their shards, mean expected
-- scores and keep ratio
SELECT count(*) AS n, count(DISTINCT shard) AS shards, avg(edu_expected) AS edu,
       avg(format_expected) AS fmt, avg(keep::INT) AS keep
FROM seed_scores
