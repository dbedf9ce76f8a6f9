-- DuckLake housekeeping: merge the small files that per-partition writes leave.
CALL ducklake_merge_adjacent_files({lake})
