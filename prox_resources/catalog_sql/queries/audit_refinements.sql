-- prox audit: what every refiner version did to document $doc_id (programs, edits, errors JSON)
SELECT refiner_version, shard, kept, reason, doc_program, chunk_programs, windows, edits, errors,
       n_chars_before, n_chars_after, refined_path, run_id, written_at
FROM program_runs WHERE doc_id = $doc_id ORDER BY written_at
