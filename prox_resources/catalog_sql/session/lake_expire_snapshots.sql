-- DuckLake housekeeping: expire the snapshots older than age (an interval, as text).
CALL ducklake_expire_snapshots({lake}, older_than => now() - INTERVAL {age})
