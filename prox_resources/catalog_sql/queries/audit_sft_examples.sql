-- prox audit: the SFT examples made from document $doc_id
SELECT level, sft_version, window_index, split, label, status, reject_reason, target, annotator,
       run_id
FROM sft_examples WHERE doc_id = $doc_id ORDER BY level, window_index
