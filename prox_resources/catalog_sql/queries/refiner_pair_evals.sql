-- level, version, model, dataset, metric, value: the headline evaluations of doc refiner
-- $doc_version and chunk refiner $chunk_version
SELECT level, version, model, dataset, metric, value
FROM refiner_evals
WHERE ((level = 'doc' AND version = $doc_version) OR (level = 'chunk' AND version = $chunk_version))
  AND metric IN ('macro_f1', 'line_f1', 'parse_rate', 'noise_removed', 'gold_text_kept',
                 'tokens_kept', 'docs_dropped')
ORDER BY 1, 4, 5, 3
