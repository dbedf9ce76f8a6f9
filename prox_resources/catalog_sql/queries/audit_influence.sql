-- prox audit: document $doc_id's influence scores, every target and version
SELECT * FROM influence_scores WHERE doc_id = $doc_id
