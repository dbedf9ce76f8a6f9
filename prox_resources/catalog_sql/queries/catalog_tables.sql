-- table_name: every table of the catalog (prox audit skips the sections of tables not made yet)
SELECT table_name FROM information_schema.tables
