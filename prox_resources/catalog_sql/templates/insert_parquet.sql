-- replace_rows from a Parquet file ($rows_file), streamed; {constants}: ", $col AS col" for each
-- column constant across the file
INSERT INTO {table} BY NAME SELECT *{constants} FROM read_parquet($rows_file)
