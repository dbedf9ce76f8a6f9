-- No progress bar on the terminal for long statements.
SET enable_progress_bar = false
