"""The partition dimensions of the asset graph."""

import dagster as dg

from prox_assets.core.variants import VARIANTS

# One partition per raw input file, added when the file arrives (sensor or `prox ingest`).
shard_partitions = dg.DynamicPartitionsDefinition(name="shard")

# One refiner per ProX stage.
level_partitions = dg.StaticPartitionsDefinition(["doc", "chunk"])

# A refiner version as the refined corpus sees it: d<doc version>-c<chunk version>, registered
# by the refiner asset whenever a new pair of document and chunk refiners exists.
refiner_version_partitions = dg.DynamicPartitionsDefinition(name="refiner_version")


def refiner_pair_key(doc_version: str, chunk_version: str) -> str:
    return f"d{doc_version[:8]}-c{chunk_version[:8]}"


# The refined corpus: every shard under every refiner version. Keys join the dimensions in
# alphabetical order of their names: "<refiner_version>|<shard>".
refined_partitions = dg.MultiPartitionsDefinition(
    {"shard": shard_partitions, "refiner_version": refiner_version_partitions}
)

# One partition per target task (a small set of task examples plus a disjoint held-out set),
# registered by `prox target add`.
target_partitions = dg.DynamicPartitionsDefinition(name="target")

# What a checkpoint trained on. Selection: the influence-selected subset, a random subset of the
# same size, the embedding-similarity subset of the same size, the whole pool. Refinement: the
# documents a refiner version saw, as raw text, as refined text, or raw text that passes the
# rule-based quality filters. `base` is the untrained model: the reference row.
variant_partitions = dg.StaticPartitionsDefinition(VARIANTS)

# Keys "<target>|<variant>".
checkpoint_partitions = dg.MultiPartitionsDefinition(
    {"target": target_partitions, "variant": variant_partitions}
)
