-- No SET after this one: a query cannot turn the settings above back on.
SET lock_configuration = true
