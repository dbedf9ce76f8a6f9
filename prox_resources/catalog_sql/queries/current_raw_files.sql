-- shard, raw_path: the store key of every ingested shard's current raw file, by shard
SELECT shard, raw_path FROM ingestions WHERE raw_path IS NOT NULL ORDER BY shard
