-- reason, n: quarantined records by reason, most first
SELECT reason, count(*) AS n FROM quarantine GROUP BY 1 ORDER BY 2 DESC
