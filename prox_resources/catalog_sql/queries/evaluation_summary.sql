-- target, variant, metric, mean, std, n: checkpoint evaluations over seeds, every target
SELECT target, variant, metric, avg(value) AS mean, coalesce(stddev_samp(value), 0) AS std,
       count(*) AS n
FROM checkpoint_evals
GROUP BY ALL ORDER BY target, metric, variant
