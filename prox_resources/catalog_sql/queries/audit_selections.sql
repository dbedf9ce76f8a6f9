-- prox audit: the selections document $doc_id is in
SELECT * FROM selections WHERE doc_id = $doc_id
