"""The partition dimensions of the asset graph."""

import dagster as dg

# One partition per raw input file, added when the file arrives (sensor or `prox ingest`).
shard_partitions = dg.DynamicPartitionsDefinition(name="shard")

# One refiner per ProX stage.
level_partitions = dg.StaticPartitionsDefinition(["doc", "chunk"])
