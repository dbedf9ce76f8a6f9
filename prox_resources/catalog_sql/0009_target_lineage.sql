-- Targets are an asset (target_set): every row names the run and partition that wrote it.
ALTER TABLE targets ADD COLUMN run_id VARCHAR;
ALTER TABLE targets ADD COLUMN partition_key VARCHAR;
