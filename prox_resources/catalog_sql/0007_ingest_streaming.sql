-- Streaming ingestion keeps exact quarantine counts but a bounded number of sample rows per file:
-- a row may stand for several records (a corrupt Parquet row group), and an ingestion says how
-- many quarantined records have no sample row.
ALTER TABLE quarantine ADD COLUMN n_records BIGINT DEFAULT 1;
ALTER TABLE ingestions ADD COLUMN n_quarantine_unsampled BIGINT DEFAULT 0;
