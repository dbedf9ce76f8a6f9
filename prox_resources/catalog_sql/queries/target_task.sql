-- task: the task target $target was registered from (no row: an unknown target)
SELECT task FROM targets WHERE target = $target LIMIT 1
