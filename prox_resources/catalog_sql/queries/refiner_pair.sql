-- doc_version, chunk_version, doc_sft_version, chunk_sft_version, doc_sft, chunk_sft (the SFT
-- sets' configs, JSON), chunk_report (JSON): the refiners of pair key $refiner_version
SELECT p.doc_version, p.chunk_version, vd.sft_version AS doc_sft_version,
       vc.sft_version AS chunk_sft_version, sd.config AS doc_sft, sc.config AS chunk_sft,
       vc.train_report AS chunk_report
FROM refiner_pairs p
JOIN refiner_versions vd ON vd.level = 'doc' AND vd.version = p.doc_version
JOIN refiner_versions vc ON vc.level = 'chunk' AND vc.version = p.chunk_version
JOIN sft_sets sd ON sd.level = 'doc' AND sd.sft_version = vd.sft_version
JOIN sft_sets sc ON sc.level = 'chunk' AND sc.sft_version = vc.sft_version
WHERE p.refiner_version = $refiner_version
LIMIT 1
