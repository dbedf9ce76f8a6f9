"""seed_scores and sft_programs as Dagster assets, end to end on a tiny model."""

import json

import polars as pl

from prox_resources.catalog import Catalog
from tests.support.pipeline import materialize


def test_seed_scores_then_both_sft_levels(pipeline):
    instance, store, model = pipeline
    for shard in ("web-00", "clean-00"):
        result = materialize(
            instance, "seed_scores", shard, {"seeds_per_shard": 4, "max_doc_tokens": 64}
        )
        meta = result.asset_materializations_for_node("seed_scores")[0].metadata
        assert meta["dagster/row_count"].value == 4 and "score_histogram" in meta
    scores = store.read_parquet("scores/web-00.parquet")
    assert (
        scores["edu_score"].is_between(0, 5).all()
        and scores["format_expected"].is_between(0, 5).all()
    )
    assert (scores["model"] == model).all() and (scores["prompt_version"] == "score-v1").all()
    assert Catalog().query("SELECT count(*) n FROM seed_scores")["n"][0] == 8

    sft_config = {
        "refiner_base_model": model,
        "doc_max_tokens": 64,
        "window_tokens": 96,
        "chunk_docs_per_shard": 6,
        "val_fraction": 0.3,
    }
    doc = materialize(instance, "sft_programs", "doc", sft_config)
    chunk = materialize(instance, "sft_programs", "chunk", sft_config)
    for result in (doc, chunk):
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert checks["targets_parse"].passed
        assert "label_balance" in checks
    checks = {c.check_name: c for c in chunk.get_asset_check_evaluations()}
    assert checks["label_balance"].passed  # noisy windows get removals, clean ones keep_chunk()

    meta = chunk.asset_materializations_for_node("sft_programs")[0].metadata
    version = meta["sft_version"].value
    train = store.read_parquet(f"sft/chunk/{version}/train.parquet")
    val = store.read_parquet(f"sft/chunk/{version}/val.parquet")
    assert train.height + val.height == meta["dagster/row_count"].value > 0
    assert set(train["doc_id"]).isdisjoint(val["doc_id"])
    removal = train.filter(pl.col("label") == "remove")["target"].to_list()
    assert any("remove_lines" in t for t in removal)
    chat = json.loads(train["messages"][0])
    assert chat[1]["content"].startswith("[doc]\n[000]") or chat[1]["content"].startswith(
        "[doc]\n["
    )

    sets = Catalog().query("SELECT level, n_train, n_val FROM sft_sets ORDER BY level").rows()
    assert [s[0] for s in sets] == ["chunk", "doc"]
    again = materialize(
        instance, "sft_programs", "chunk", sft_config
    )  # same inputs: same version, no duplicates
    assert (
        again.asset_materializations_for_node("sft_programs")[0].metadata["sft_version"].value
        == version
    )
    n = Catalog().query(f"SELECT count(*) n FROM sft_examples WHERE sft_version = '{version}'")[
        "n"
    ][0]
    assert (
        n
        == train.height
        + val.height
        + store.read_parquet(f"sft/chunk/{version}/rejected.parquet").height
    )


def test_one_class_doc_set_fails_the_balance_check(pipeline):
    instance, store, model = pipeline
    materialize(instance, "seed_scores", "web-00", {"seeds_per_shard": 3, "max_doc_tokens": 32})
    scores = store.read_parquet("scores/web-00.parquet").with_columns(keep=pl.lit(True))
    store.write_parquet("scores/web-00.parquet", scores)  # every seed labelled keep
    result = materialize(
        instance, "sft_programs", "doc", {"refiner_base_model": model}, raise_on_error=False
    )
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["label_balance"].passed
    assert checks["label_balance"].metadata["n_keep"].value == 3
