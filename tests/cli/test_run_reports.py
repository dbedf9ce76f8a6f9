"""What the commands report besides parsing arguments: `prox backfill`'s plan (prox_assets.backfill)
and the catalog summaries `prox ingest` and `prox demo` print (prox_assets.summaries)."""

import dagster as dg
import pytest

from prox_assets.backfill import plan_refinement_backfill
from prox_assets.core.errors import UserError
from prox_assets.partitions import refiner_version_partitions, shard_partitions
from prox_assets.refinement import refined_corpus


def test_a_refinement_backfill_plan_covers_every_shard_in_the_policys_runs():
    instance = dg.DagsterInstance.ephemeral()
    with pytest.raises(UserError, match=r"unknown refiner version 'd1-c1'; known: \[\]"):
        plan_refinement_backfill(instance, "d1-c1")
    instance.add_dynamic_partitions(refiner_version_partitions.name, ["d1-c1"])
    instance.add_dynamic_partitions(shard_partitions.name, ["web-00", "web-01", "news-00"])
    plan = plan_refinement_backfill(instance, "d1-c1")
    assert plan.partitions == ["d1-c1|web-00", "d1-c1|web-01", "d1-c1|news-00"]
    assert plan.per_run == refined_corpus.backfill_policy.max_partitions_per_run
    assert plan.runs == 1
    assert plan_refinement_backfill(instance, "d1-c1", ["news-00"]).partitions == ["d1-c1|news-00"]
    line = plan.launched("abc", "http://ui")
    assert line.startswith("backfill abc: 3 partitions of refined_corpus in 1 run(s)")
    assert line.endswith("then refined_pool[d1-c1] -> http://ui/overview/backfills/abc")


def test_the_summaries_read_the_catalog(prox_env):
    from prox_assets.scale_bench import BENCH_REFINER_VERSION, fill_catalog
    from prox_assets.summaries import (
        evaluation_summary,
        ingest_summary,
        refined_summary,
        refiner_summary,
    )
    from prox_resources.catalog import PlainCatalog

    catalog = PlainCatalog()
    catalog.migrate()
    fill_catalog(catalog, 20, n_shards=4)
    assert ingest_summary(catalog)[0].startswith("catalog: 0 shards, read ")  # no raw file ingested
    [refined] = refined_summary(catalog)
    assert refined.startswith(f"refined_corpus[{BENCH_REFINER_VERSION}]: 20 documents = kept ")
    assert evaluation_summary(catalog) == []
    assert refiner_summary(catalog, dg.DagsterInstance.ephemeral()) == []  # no refiner version yet
