-- path: where checkpoints of $version were written (for any target)
SELECT DISTINCT path FROM checkpoints WHERE version = $version
