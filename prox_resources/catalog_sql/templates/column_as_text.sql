-- a result column as DuckDB's own text (prox catalog, for a type polars cannot hold or print)
CAST({column} AS VARCHAR) AS {column}
