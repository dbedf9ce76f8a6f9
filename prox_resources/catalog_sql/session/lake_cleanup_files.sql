-- DuckLake housekeeping: delete the files of snapshots expired longer ago than age (an interval,
-- as text).
CALL ducklake_cleanup_old_files({lake}, older_than => now() - INTERVAL {age})
