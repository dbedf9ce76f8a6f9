-- prox audit: where document $doc_id was seen again and quarantined as a duplicate
SELECT shard, locator, reason, run_id FROM quarantine WHERE detail = $doc_id
