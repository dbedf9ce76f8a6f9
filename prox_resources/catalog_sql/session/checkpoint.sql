-- Write an embedded catalog's WAL into its database file.
CHECKPOINT
