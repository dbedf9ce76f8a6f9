-- variant, seed, version, task, metric, value, n: every evaluation of $target's checkpoints
SELECT variant, seed, version, task, metric, value, n FROM checkpoint_evals WHERE target = $target
