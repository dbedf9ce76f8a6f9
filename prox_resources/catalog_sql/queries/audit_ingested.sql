-- prox audit: the shards document $doc_id was ingested into, and where its raw row is
SELECT shard, source, url, raw_path, row_index, n_chars, n_words, run_id, written_at
FROM documents WHERE doc_id = $doc_id ORDER BY shard
