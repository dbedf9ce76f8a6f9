"""Lineage through Dagster: a new refiner version marks what read the old one stale, and a
checkpoint's materialization names the refiner version, SFT sets and selection it came from."""

import dagster as dg
from dagster._core.definitions.data_version import StaleStatus, extract_data_provenance_from_entry
from dagster._utils.test.data_versions import get_stale_status_resolver

from prox_assets.definitions import ASSETS
from prox_assets.lineage import recorded
from prox_assets.refinement import refined_pool_sensor
from tests.support.pipeline import REFINER, materialize, refine, train_refiners

TARGET = "arc-t"
CHECKPOINTS = [f"{TARGET}|influence", f"{TARGET}|refined"]


def _materialize(instance, asset, key, config=None):
    result = materialize(instance, asset, key, config)
    assert result.success, (asset, key)
    return result


def _checkpoint(instance, key, config):
    target, variant = key.split("|")
    return _materialize(
        instance,
        "trained_checkpoint",
        dg.MultiPartitionKey({"target": target, "variant": variant}),
        config,
    )


def _status(instance, asset, key):
    return get_stale_status_resolver(instance, ASSETS).get_status(dg.AssetKey(asset), key)


def _causes(instance, asset, key):
    return [
        (c.dependency.asset_key.to_user_string() if c.dependency else None, c.reason)
        for c in get_stale_status_resolver(instance, ASSETS).get_stale_causes(
            dg.AssetKey(asset), key
        )
    ]


def test_a_new_refiner_version_marks_selection_and_checkpoints_stale(pipeline):
    from prox_assets.cli import add_target

    instance, _store, model = pipeline
    v1 = train_refiners(instance, model)
    for shard in ("web-00", "clean-00"):
        assert refine(instance, v1, shard).success
    _materialize(instance, "refined_pool", v1)
    add_target(TARGET, "arc_challenge", 3, 6, 0)
    influence = {
        "pool": "refined",
        "model": model,
        "landmarks": 4,
        "exact_holdout": 2,
        "max_len": 32,
        "warmup_steps": 1,
        "batch_size": 4,
    }
    checkpoint = {
        "base_model": model,
        "seeds": [0],
        "max_steps": 1,
        "batch_size": 2,
        "seq_len": 32,
        "lora_r": 4,
        "lora_layers": 1,
        "eval_examples": 2,
        "prose_passages": 1,
        "prose_tokens": 16,
    }
    _materialize(instance, "landmark_influence", TARGET, influence)
    _materialize(instance, "selected_subset", TARGET, {"budget": 3})
    for key in CHECKPOINTS:
        _checkpoint(instance, key, checkpoint)
    downstream = [
        ("landmark_influence", TARGET),
        ("selected_subset", TARGET),
        *[("trained_checkpoint", k) for k in CHECKPOINTS],
    ]
    assert {(a, k): _status(instance, a, k) for a, k in downstream} == dict.fromkeys(
        downstream, StaleStatus.FRESH
    )

    # a backfill of a new refiner version: new refiners, every shard refined, its pool recorded
    for level in ("doc", "chunk"):
        result = materialize(
            instance, "refiner", level, {**REFINER, "base_model": model, "seed": 1}
        )
    v2 = result.asset_materializations_for_node("refiner")[0].metadata["refiner_pair"].value
    assert v2 != v1
    for shard in ("web-00", "clean-00"):
        assert refine(instance, v2, shard).success
    # (refined_pool_sensor, when enabled, asks for the pool once every shard is refined)
    asks = refined_pool_sensor(dg.build_sensor_context(instance=instance))
    assert [r.partition_key for r in asks.run_requests] == [v2]
    _materialize(instance, "refined_pool", v2)
    assert not refined_pool_sensor(dg.build_sensor_context(instance=instance)).run_requests

    # what read v1's pool directly is stale now, through the refined_pool dependency
    assert _status(instance, "landmark_influence", TARGET) == StaleStatus.STALE
    assert ("refined_pool", "has a new dependency data version") in _causes(
        instance, "landmark_influence", TARGET
    )
    for key in CHECKPOINTS:
        assert _status(instance, "trained_checkpoint", key) == StaleStatus.STALE
        assert ("refined_pool", "has a new dependency data version") in _causes(
            instance, "trained_checkpoint", key
        )
    assert (
        _status(instance, "selected_subset", TARGET) == StaleStatus.FRESH
    )  # its influence is unchanged yet

    # re-materialized down the chain, each step carries the new version as its input
    _materialize(instance, "landmark_influence", TARGET, influence)
    influence_meta = recorded(instance, "landmark_influence", TARGET)
    assert (
        influence_meta.value("refiner_version") == v2
        and influence_meta.value("pool") == f"refined:{v2}"
    )
    assert _status(instance, "selected_subset", TARGET) == StaleStatus.STALE
    assert ("landmark_influence", "has a new dependency data version") in _causes(
        instance, "selected_subset", TARGET
    )
    _materialize(instance, "selected_subset", TARGET, {"budget": 3})
    selection = recorded(instance, "selected_subset", TARGET)
    assert selection.value("influence_version") == influence_meta.value("influence_version")
    assert selection.data_version == selection.value("selection_version")
    assert _status(instance, "selected_subset", TARGET) == StaleStatus.FRESH
    assert _status(instance, "trained_checkpoint", CHECKPOINTS[0]) == StaleStatus.STALE
    for key in CHECKPOINTS:
        _checkpoint(instance, key, checkpoint)
        assert _status(instance, "trained_checkpoint", key) == StaleStatus.FRESH

    # the checkpoint's materialization alone names what it came from ...
    pool = recorded(instance, "refined_pool", v2)
    for key in CHECKPOINTS:
        ckpt = recorded(instance, "trained_checkpoint", key)
        assert ckpt.value("refiner_version") == v2
        assert ckpt.value("doc_sft_version") == pool.value("doc_sft_version")
        assert ckpt.value("chunk_sft_version") == pool.value("chunk_sft_version")
    influence_ckpt = recorded(instance, "trained_checkpoint", CHECKPOINTS[0])
    assert influence_ckpt.value("selection_version") == selection.value("selection_version")
    assert influence_ckpt.value("influence_version") == influence_meta.value("influence_version")
    assert (
        recorded(instance, "trained_checkpoint", CHECKPOINTS[1]).value("selection_version")
        == "none"
    )
    # ... and the SFT sets are the ones Dagster recorded for sft_programs and the refiners
    for level in ("doc", "chunk"):
        assert pool.value(f"{level}_sft_version") == recorded(
            instance, "sft_programs", level
        ).value("sft_version")
        assert recorded(instance, "refiner", level).data_version == pool.value(f"{level}_refiner")

    # Dagster's own input provenance of the checkpoint: the selection and the pool it read
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("trained_checkpoint"), asset_partitions=[CHECKPOINTS[0]]
        ),
        limit=1,
    ).records[0]
    provenance = extract_data_provenance_from_entry(record.event_log_entry)
    assert {dg.AssetKey("selected_subset"), dg.AssetKey("refined_pool")} <= set(
        provenance.input_data_versions
    )
    assert provenance.is_user_provided

    # the catalog's view agrees: the CLI summaries show the versions Dagster recorded, and the audit
    # of a trained document names the selection and the refiner version
    from prox_assets.audit import audit_document, format_audit
    from prox_assets.summaries import refiner_summary, synthesis_summary
    from prox_resources.catalog import Catalog

    summary = refiner_summary(Catalog(), instance) + synthesis_summary(Catalog(), instance)
    printed = "\n".join(summary)
    assert f"refiner[doc] {pool.value('doc_refiner')}" in printed
    assert f"refiner[chunk] {pool.value('chunk_refiner')}" in printed
    for level in ("doc", "chunk"):
        assert f"sft_programs[{level}] {pool.value(f'{level}_sft_version')}:" in printed
    doc_id = Catalog().query(
        "SELECT doc_id FROM checkpoint_documents WHERE variant = 'influence' AND version = ?",
        [influence_ckpt.value("checkpoint_versions")],
    )["doc_id"][0]
    assert f"of refined:{v2}" in format_audit(audit_document(Catalog(), doc_id))
