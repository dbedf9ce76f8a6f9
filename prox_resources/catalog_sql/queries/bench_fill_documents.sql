-- prox bench scale: SYNTHETIC documents rows for i in [$start, $stop), $per_shard to a shard,
-- shaped like raw_corpus's (32-hex content-hash ids, a raw path per shard); never real data
INSERT INTO documents BY NAME
SELECT substr(md5(i::VARCHAR), 1, 32) AS doc_id, shard, 'bench' AS source,
       'https://example.org/page/' || i AS url, 800 + (i * 7919) % 9000 AS n_chars,
       120 + (i * 7919) % 1400 AS n_words,
       'raw/' || shard || '/run-' || (i // $per_shard) || '.parquet' AS raw_path,
       i % $per_shard AS row_index, 'run-' || (i // $per_shard) AS run_id, shard AS partition_key
FROM (
    SELECT i, 'bench-' || lpad((i // $per_shard)::VARCHAR, 4, '0') AS shard
    FROM range($start, $stop) t(i)
)
