"""Targets, landmark_influence and selected_subset on a tiny model."""

import json

import polars as pl
import pytest

from prox_assets.audit import audit_document
from prox_assets.core.targets import load_task, split_target
from prox_resources.catalog import Catalog
from tests.support.pipeline import materialize


def test_targets_are_deduplicated_and_disjoint():
    arc = load_task("arc_challenge")
    assert len(arc) == len({e.example_id for e in arc}) == 598  # 2,388 request rows, one per choice
    assert all(e.answer == e.choices[e.gold] for e in arc[:50])
    mmlu = load_task("mmlu")
    assert len(mmlu) == 14042 and len({e.example_id for e in mmlu}) == 14042
    assert all(len(e.choices) == 4 and e.answer == e.choices[e.gold] for e in mmlu[::500])
    target, heldout = split_target(load_task("gsm8k"), 8, 200, seed=1)
    assert len(target) == 8 and len(heldout) == 200
    assert not {e.example_id for e in target} & {e.example_id for e in heldout}
    with pytest.raises(ValueError):
        split_target(arc, 500, 500)


@pytest.mark.slow
def test_influence_then_selection(pipeline):
    from prox_assets.cli import add_target, materialize_partitions

    instance, store, model = pipeline
    add_target("gsm8k-t", "gsm8k", 4, 20, 0)
    add_target("arc-t", "arc_challenge", 3, 20, 0)
    cfg = {
        "pool": "raw",
        "model": model,
        "landmarks": 6,
        "exact_holdout": 6,
        "max_len": 32,
        "warmup_steps": 2,
        "batch_size": 4,
    }
    first = materialize(instance, "landmark_influence", "gsm8k-t", cfg)
    meta = first.asset_materializations_for_node("landmark_influence")[0].metadata
    version = meta["influence_version"].value
    scores = store.read_parquet(f"influence/gsm8k-t/{version}/scores.parquet")
    assert scores.height == 20 and scores["is_landmark"].sum() == 6
    marks = scores.filter(pl.col("is_landmark"))
    assert (marks["score"] - marks["exact_score"]).abs().max() < 1e-6  # landmarks keep exact values
    assert (
        scores.filter(~pl.col("is_landmark"))["exact_score"].drop_nulls().len() == 6
    )  # the held-out check
    assert len(scores["scores_per_example"][0]) == 4
    for key in (
        "approximation_on_held_out_non_landmarks",
        "timings_s",
        "score_histogram",
        "flops_vs_rds_model",
        "warmup_adam_factor",
    ):
        assert key in meta
    assert meta["device"].value == "cpu"
    assert marks["exact_score"].abs().max() <= 1.0  # cosines

    arc = materialize(instance, "landmark_influence", "arc-t", cfg)
    versions = {
        "gsm8k-t": version,
        "arc-t": arc.asset_materializations_for_node("landmark_influence")[0]
        .metadata["influence_version"]
        .value,
    }
    alone = {
        t: store.read_parquet(f"influence/{t}/{v}/scores.parquet") for t, v in versions.items()
    }

    # both targets in one run (the backfill policy): the model is loaded and warmed up on the pool
    # once, each target works on its own copy, and each gets the scores a run of its own gives
    before = {r.run_id for r in instance.get_runs()}
    assert materialize_partitions("landmark_influence", ["gsm8k-t", "arc-t"], cfg) == {
        "gsm8k-t": "ok",
        "arc-t": "ok",
    }
    (run,) = [r for r in instance.get_runs() if r.run_id not in before]
    messages = [e.user_message for e in instance.all_logs(run.run_id)]
    assert sum(m.startswith("loaded model ") for m in messages) == 1
    assert sum(m.startswith("warm-up: ") for m in messages) == 1
    for target, v in versions.items():
        together = store.read_parquet(f"influence/{target}/{v}/scores.parquet")
        assert together["score"].to_list() == pytest.approx(
            alone[target]["score"].to_list(), abs=1e-6
        )

    sel = materialize(instance, "selected_subset", "gsm8k-t", {"budget": 5})
    chosen = store.read_parquet(f"selections/gsm8k-t/{version}.parquet")
    assert chosen["rank"].to_list() == [1, 2, 3, 4, 5] and chosen["budget"].unique().to_list() == [
        5
    ]
    assert chosen["weight"].sum() == pytest.approx(20.0)
    assert sel.asset_materializations_for_node("selected_subset")[0].metadata["budget"].value == 5
    simplex = materialize(
        instance, "selected_subset", "gsm8k-t", {"budget": 5, "method": "simplex"}
    )
    assert simplex.success
    weights = store.read_parquet(f"selections/gsm8k-t/{version}.parquet")["weight"]
    assert weights.sum() == pytest.approx(20.0, rel=1e-4) and (weights > 0).all()

    audit = audit_document(Catalog(), chosen["doc_id"][0])
    assert {r["target"] for r in audit["influence"]} == {"gsm8k-t", "arc-t"}
    assert [r["target"] for r in audit["selections"]] == ["gsm8k-t"]
    assert json.dumps(audit, default=str)


def test_influence_study_reports_every_measure_on_a_tiny_model(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prox_assets.core.influence import InfluenceConfig
    from prox_assets.core.influence_eval import influence_study

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager").eval()
    texts = [
        f"Document {i} about water, heat and metal cups, measured twice." for i in range(12)
    ] + [f"Problem {i}: what is {i} + {i}? Solution: {2 * i}." for i in range(12)]
    domains = ["prose"] * 12 + ["math"] * 12
    config = InfluenceConfig(max_len=24, warmup_steps=2, batch_size=8)
    report = influence_study(
        model,
        AutoTokenizer.from_pretrained(tiny_llama_dir),
        texts,
        domains,
        "math",
        ["Problem: 2 + 2?"],
        [" Solution: 4."],
        config,
        landmark_counts=[4, 8],
        draws=2,
        embeddings=["jvp-mean", "hidden-mean"],
        stability_samples=8,
        log=lambda m: None,
    )
    assert [(r["embedding"], r["landmarks"]) for r in report["landmarks"]] == [
        ("jvp-mean", 4),
        ("jvp-mean", 8),
        ("hidden-mean", 4),
        ("hidden-mean", 8),
    ]
    row = report["landmarks"][0]
    assert {
        "spearman",
        "pearson",
        "top10pct_recall",
        "domain_auroc",
        "shuffled_control",
        "cheaper_than_exact",
    } <= set(row)
    assert set(row["spearman"]) == {"mean", "std"}
    assert 0 <= report["exact"]["domain_auroc"] <= 1
    assert report["exact"]["warmup_seed_stability"][0]["samples"] == 8
    assert report["warmup"]["a_p01"] <= report["warmup"]["a_p99"]
    assert len(report["exact_scores"]) == 24


def test_exact_mode_gives_every_sample_its_exact_score(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prox_assets.core.influence import InfluenceConfig, compute_influence

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    texts = [f"Sample {i}: cups of water cool at different rates." for i in range(10)]
    out = compute_influence(
        model,
        tok,
        texts,
        ["Question: 2+2?\nAnswer:"],
        [" 4"],
        InfluenceConfig(landmarks=0, max_len=24, warmup_steps=1, batch_size=4),
        log=lambda m: None,
    )
    assert out.landmarks == list(range(10)) and out.holdout == []
    assert (out.scores - out.exact_landmarks).abs().max() < 1e-6
    assert out.timings["warmup_s"] > 0

    # a model warmed up beforehand (targets of one pool share it): the same scores, and the
    # timings report that warm-up's own time
    from prox_assets.core.influence import warm_up_on_pool

    config = InfluenceConfig(landmarks=0, max_len=24, warmup_steps=1, batch_size=4)
    fresh = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager").eval()
    warmed = warm_up_on_pool(fresh, tok, texts, config, log=lambda m: None)
    again = compute_influence(
        fresh, tok, texts, ["Question: 2+2?\nAnswer:"], [" 4"], config, lambda m: None, warmed
    )
    assert (again.scores - out.scores).abs().max() < 1e-6
    assert again.timings["warmup_s"] == warmed.seconds > 0
