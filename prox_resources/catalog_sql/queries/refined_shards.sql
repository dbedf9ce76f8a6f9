-- shard: every shard refiner version $refiner_version has refined
SELECT DISTINCT shard FROM program_runs WHERE refiner_version = $refiner_version
