-- prox audit: the checkpoints trained on document $doc_id, with its weight and their data
SELECT d.target, d.variant, d.seed, d.version, d.weight, c.text_kind, c.data_spec,
       c.train_tokens, c.path, d.run_id
FROM checkpoint_documents d LEFT JOIN checkpoints c USING (target, variant, seed, version)
WHERE d.doc_id = $doc_id
ORDER BY 1, 2, 3
