"""Fixtures of the asset tests: a test instance with two ingested shards and a tiny model."""

import dagster as dg
import pytest

from prox_assets.partitions import shard_partitions
from prox_resources.store import ObjectStore
from tests.support.pipeline import materialize, noisy_docs


@pytest.fixture
def pipeline(prox_env, tiny_llama_dir, monkeypatch):
    """(instance, store, model): raw_corpus of a noisy shard (web-00, 12 documents) and a clean
    one (clean-00, 8), PROX_MODEL the tiny random Llama."""
    monkeypatch.setenv("PROX_MODEL", str(tiny_llama_dir))
    store = ObjectStore()
    store.write_bytes("incoming/web-00.jsonl", noisy_docs(12, noisy=True))
    store.write_bytes("incoming/clean-00.jsonl", noisy_docs(8, noisy=False))
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, ["web-00", "clean-00"])
        for shard in ("web-00", "clean-00"):
            assert materialize(instance, "raw_corpus", shard).success
        yield instance, store, str(tiny_llama_dir)
