"""seed_scores and sft_programs as Dagster assets, end to end on a tiny model."""

import json

import dagster as dg
import polars as pl
import pytest

from prox_assets.definitions import ASSETS, build_resources
from prox_assets.partitions import shard_partitions
from prox_resources.catalog import Catalog
from prox_resources.store import ObjectStore

NAV = [
    "Home | Products | Blog | Contact",
    "Share on Facebook | Tweet",
    "© 2026 Example Ltd. All rights reserved.",
]


def _docs(n: int, noisy: bool) -> bytes:
    rows = []
    for i in range(n):
        body = [
            f"Paragraph {i}.{j}: the experiment measured how quickly water cools in a metal cup "
            f"compared with a ceramic one, and explained why."
            for j in range(6)
        ]
        rows.append(
            {"text": "\n".join((NAV[:2] if noisy else []) + body + (NAV[2:] if noisy else []))}
        )
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _run(instance, asset, key, config):
    return dg.materialize(
        ASSETS,
        selection=[asset],
        partition_key=key,
        instance=instance,
        resources=build_resources(),
        run_config={"ops": {asset: {"config": config}}},
    )


@pytest.fixture
def pipeline(prox_env, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("PROX_MODEL", str(tiny_llama_dir))
    store = ObjectStore()
    store.write_bytes("incoming/web-00.jsonl", _docs(12, noisy=True))
    store.write_bytes("incoming/clean-00.jsonl", _docs(8, noisy=False))
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(shard_partitions.name, ["web-00", "clean-00"])
        for shard in ("web-00", "clean-00"):
            assert dg.materialize(
                ASSETS,
                selection=["raw_corpus"],
                partition_key=shard,
                instance=instance,
                resources=build_resources(),
            ).success
        yield instance, store, str(tiny_llama_dir)


def test_seed_scores_then_both_sft_levels(pipeline):
    instance, store, model = pipeline
    for shard in ("web-00", "clean-00"):
        result = _run(instance, "seed_scores", shard, {"seeds_per_shard": 4, "max_doc_tokens": 64})
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
    doc = _run(instance, "sft_programs", "doc", sft_config)
    chunk = _run(instance, "sft_programs", "chunk", sft_config)
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
    again = _run(
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
    _run(instance, "seed_scores", "web-00", {"seeds_per_shard": 3, "max_doc_tokens": 32})
    scores = store.read_parquet("scores/web-00.parquet").with_columns(keep=pl.lit(True))
    store.write_parquet("scores/web-00.parquet", scores)  # every seed labelled keep
    result = dg.materialize(
        ASSETS,
        selection=["sft_programs"],
        partition_key="doc",
        instance=instance,
        resources=build_resources(),
        raise_on_error=False,
        run_config={"ops": {"sft_programs": {"config": {"refiner_base_model": model}}}},
    )
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["label_balance"].passed
    assert checks["label_balance"].metadata["n_keep"].value == 3
