-- replace_rows, first half: the rows of {table} matching {condition} (col = $col AND ...) go
DELETE FROM {table} WHERE {condition}
