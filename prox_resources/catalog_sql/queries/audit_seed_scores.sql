-- prox audit: document $doc_id's seed scores (both rubrics) and verdict
SELECT shard, edu_score, edu_expected, format_score, format_expected, keep, model,
       prompt_version, edu_critique, format_critique, run_id
FROM seed_scores WHERE doc_id = $doc_id
