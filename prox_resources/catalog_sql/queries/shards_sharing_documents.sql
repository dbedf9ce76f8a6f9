-- shard, count: every other shard holding documents of $shard, and how many; most first
SELECT o.shard, count(*)
FROM documents d JOIN documents o ON o.doc_id = d.doc_id
WHERE d.shard = $shard AND o.shard <> $shard
GROUP BY 1 ORDER BY 2 DESC
