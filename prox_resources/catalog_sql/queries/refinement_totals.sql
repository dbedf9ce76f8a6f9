-- refiner_version, n, kept, dropped, errored, chars_kept: what each refiner version did, by version
SELECT refiner_version, count(*) AS n, count(*) FILTER (status = 'kept') AS kept,
       count(*) FILTER (status = 'dropped') AS dropped, count(*) FILTER (status = 'error') AS errored,
       sum(n_chars_after) / sum(n_chars_before) AS chars_kept
FROM program_runs
GROUP BY 1 ORDER BY 1
