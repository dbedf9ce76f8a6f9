-- No file or network access from SQL (COPY ... TO, read_text, ATTACH, extension loading).
SET enable_external_access = false
