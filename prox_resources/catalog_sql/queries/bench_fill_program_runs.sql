-- prox bench scale: SYNTHETIC program_runs rows of $refiner_version for the documents that
-- bench_fill_documents makes (same $start, $stop, $per_shard), shaped like refined_corpus's (JSON
-- programs, windows and edits of typical length, one document in five dropped)
INSERT INTO program_runs BY NAME
SELECT substr(md5(i::VARCHAR), 1, 32) AS doc_id, shard, $refiner_version AS refiner_version,
       CASE WHEN i % 5 = 0 THEN 'drop_doc()' ELSE 'keep_doc()' END AS doc_program,
       '["remove_lines(line_start=0, line_end=' || (i % 4) || ')\nnormalize(source_str=\"Share '
         || (i % 97) || '\", target_str=\"\")\nkeep_chunk()", "keep_chunk()"]' AS chunk_programs,
       '[[0, ' || (30 + i % 20) || '], [' || (31 + i % 20) || ', ' || (60 + i % 30) || ']]' AS windows,
       '[{"kind": "remove_lines", "line_start": 0, "line_end": ' || (i % 4)
         || ', "source": "", "target": "", "count": 0, "window": 0}, {"kind": "normalize", '
         || '"line_start": -1, "line_end": -1, "source": "Share ' || (i % 97)
         || '", "target": "", "count": 1, "window": 0}]' AS edits,
       '[]' AS errors, i % 5 <> 0 AS kept,
       CASE WHEN i % 5 = 0 THEN 'drop_doc' END AS reason,
       800 + (i * 7919) % 9000 AS n_chars_before,
       CASE WHEN i % 5 = 0 THEN 0 ELSE 700 + (i * 7919) % 9000 END AS n_chars_after,
       'refined/' || $refiner_version || '/' || shard || '.parquet' AS refined_path,
       'run-r' || (i // $per_shard) AS run_id, $refiner_version || '|' || shard AS partition_key,
       CASE WHEN i % 5 = 0 THEN 'dropped' ELSE 'kept' END AS status
FROM (
    SELECT i, 'bench-' || lpad((i // $per_shard)::VARCHAR, 4, '0') AS shard
    FROM range($start, $stop) t(i)
)
