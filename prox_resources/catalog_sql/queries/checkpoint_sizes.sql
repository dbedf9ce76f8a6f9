-- variant, docs, train_tokens: the size of each variant's training data for $target
SELECT variant, any_value(n_docs) AS docs, any_value(train_tokens) AS train_tokens
FROM checkpoints WHERE target = $target GROUP BY variant
