-- replace_rows from a data frame registered on the connection as _rows
INSERT INTO {table} BY NAME SELECT * FROM _rows
