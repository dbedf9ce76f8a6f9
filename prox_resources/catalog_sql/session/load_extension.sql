-- Load a DuckDB extension from its file (path): DuckLake's extensions come from PyPI packages,
-- nothing is downloaded at run time.
LOAD {path}
