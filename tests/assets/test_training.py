"""Continued pre-training, evaluation, and trained_checkpoint / evaluation_report as assets."""

import math

import dagster as dg
import polars as pl
import pytest
import torch

from prox_assets.audit import audit_document, format_audit
from prox_assets.core.evaluation import (
    cut_completion,
    evaluate,
    final_number,
    multiple_choice,
    prose_perplexity,
    squad_f1,
)
from prox_assets.core.quality_filters import rule_filter
from prox_assets.core.report import comparisons, summarize
from prox_assets.core.training import (
    MAX_REPEATS,
    checkpoint_version,
    pack_documents,
    repeat_counts,
    train_lm,
)
from prox_assets.core.training_loop import TrainConfig
from prox_assets.partitions import VARIANTS
from prox_resources.catalog import Catalog
from prox_resources.device import DeviceSettings
from prox_resources.engine import ModelEngine
from tests.support.pipeline import materialize, refine, train_refiners

PROSE = (
    "It was a truth generally acknowledged that the evening walk along the river had done them "
    "all good. The light was soft, the talk was easy, and nobody hurried home."
)


def test_final_number_and_squad_f1():
    assert final_number("so she pays 3 + 4 = 7 dollars.\n#### 1,250") == "1250"
    assert final_number("The answer is 42.") == "42"
    assert final_number("first 3 then 5.0") == "5"
    assert final_number("no digits here") is None
    assert cut_completion(" 4 apples.\n\nQuestion: how many pears?") == " 4 apples."
    assert squad_f1("The Eiffel Tower", "eiffel tower") == 1.0
    assert squad_f1("in Paris, France", "Paris") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))
    assert squad_f1("", "Paris") == 0.0


def test_packing_repeats_by_weight_and_respects_the_window(tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    assert repeat_counts([2.0, 2.0, 4.0, 0.0]) == [1, 1, 2, 0]
    # simplex weights spanning orders of magnitude: bounded, still ordered (was [1, 10**9])
    assert repeat_counts([1e-9, 1.0]) == [1, MAX_REPEATS]
    assert repeat_counts([1e-9, 0.5, 1.0, float("nan")]) == [1, MAX_REPEATS // 2, MAX_REPEATS, 0]
    texts = [PROSE, "A short second document about rivers and walks and the light of the evening."]
    once = pack_documents(tok, texts, 32)
    twice = pack_documents(tok, texts, 32, weights=[2.0, 1.0])
    stream = lambda w: sum(len(x) for x in w)  # noqa: E731
    n0, n1 = (len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts)
    assert all(len(w) <= 32 for w in once) and stream(once) <= n0 + n1
    assert stream(twice) > stream(once) and stream(twice) <= 2 * n0 + n1
    assert pack_documents(tok, ["hi"], 32) == []  # shorter than a useful window
    budget = pack_documents(
        tok, texts, 32, n_windows=10, seed=1
    )  # a fixed budget: repeated to fill
    assert len(budget) == 10 and all(len(w) == 32 for w in budget)
    assert pack_documents(tok, [""], 32, n_windows=2) == []  # nothing to repeat


def test_version_depends_on_documents_text_and_seed():
    cfg = TrainConfig(max_steps=2, seed=0)
    docs = [("a", 1.0), ("b", 1.0)]
    v = checkpoint_version("m", docs, "raw", cfg)
    assert v == checkpoint_version("m", list(reversed(docs)), "raw", cfg)
    assert (
        len(
            {
                v,
                checkpoint_version("m", docs, "refined", cfg),
                checkpoint_version("m", docs[:1], "raw", cfg),
                checkpoint_version("m", docs, "raw", TrainConfig(max_steps=2, seed=1)),
            }
        )
        == 4
    )


def test_train_lm_saves_an_adapter_that_changes_the_model(tiny_llama_dir, tmp_path):
    cfg = TrainConfig(
        method="lora",
        lora_r=4,
        lora_alpha=8,
        lora_layers=1,
        max_steps=3,
        batch_size=2,
        lr=5e-3,
        warmup_steps=1,
        max_seq_len=32,
        seed=0,
    )
    engine, cpu = ModelEngine(model=str(tiny_llama_dir)), DeviceSettings(device="cpu")
    report, trained = train_lm(
        *engine.load_model(cpu, train=True), [PROSE] * 3, cfg, tmp_path / "ckpt"
    )
    assert report.steps == 3 and report.tokens_seen > 0
    assert (tmp_path / "ckpt" / "adapter_model.safetensors").exists()
    assert not (
        tmp_path / "ckpt" / "model.safetensors"
    ).exists()  # an adapter, not a copy of the base
    base, _ = engine.load_model(cpu)
    tuned, tok = engine.load_model(cpu, adapter=tmp_path / "ckpt")
    ids = tok(PROSE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(base(ids).logits, tuned(ids).logits)
    # the trained model in memory is what its checkpoint loads to, bit for bit, in fp32 and eval
    # mode: trained_checkpoint evaluates it without loading the base model and adapter again
    kept, loaded = trained.state_dict(), tuned.state_dict()
    assert kept.keys() == loaded.keys() and not trained.training
    assert all(kept[k].dtype == torch.float32 and torch.equal(kept[k], loaded[k]) for k in kept)
    again = train_lm(
        *engine.load_model(cpu, train=True), [PROSE] * 3, cfg, tmp_path / "again"
    ).report  # seeded
    assert again.losses == report.losses


def test_metrics_equal_direct_computation(tiny_llama_dir):
    engine, cpu = ModelEngine(model=str(tiny_llama_dir)), DeviceSettings(device="cpu")
    model, tok = loaded = engine.load_model(cpu)
    backend = engine.serve(loaded, cpu)
    ids = tok(PROSE, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:])
    assert prose_perplexity(backend, [PROSE], 10_000) == pytest.approx(
        math.exp(nll.item()), rel=1e-4
    )

    prompts, choices = (
        ["The sky is", "Two plus two is"],
        [[" blue", " green", " loud"], [" four", " five"]],
    )
    direct = []
    for p, cs in zip(prompts, choices):
        lls = backend.loglikelihood([p] * len(cs), cs)
        direct.append(max(range(len(cs)), key=lambda i: lls[i]))
    assert multiple_choice(backend, prompts, choices, direct)["accuracy"] == 1.0
    wrong = [(g + 1) % len(cs) for g, cs in zip(direct, choices)]
    assert multiple_choice(backend, prompts, choices, wrong)["accuracy"] == 0.0

    rows = [
        {"prompt": "Question: 1+1?\nAnswer:", "answer": " 2\n#### 2", "choices": "[]", "gold": -1}
    ]
    metrics = evaluate(backend, "gsm8k", rows, [PROSE], max_new_tokens=4)
    assert (
        set(metrics) == {"heldout_loss", "exact_match", "prose_perplexity"}
        and metrics["heldout_loss"] > 0
    )


def test_rule_filters_keep_prose_and_drop_boilerplate():
    prose = (
        "The village lay at the bottom of a wide valley, and in the spring the river rose until it "
        "touched the lowest gardens. Most families kept a boat for those weeks. The school moved into "
        "the church hall on the hill, where the children learned their letters beside stacked hymn books. "
        "Nobody complained about the damp, because the floods also brought rich soil to the fields. By "
        "June the water had gone back to its bed, the boats were turned over on trestles, and the "
        "orchards were heavy with blossom. Visitors often asked why people stayed in such a place. The "
        "answer was always the same: the valley fed them well, and they knew its moods as they knew "
        "their own. Older farmers could read the colour of the sky and say when the first rain would "
        "come, and they were rarely wrong."
    )
    junk = "\n".join(["Home | About | Contact | Login"] * 30)
    keep, drop = rule_filter([prose, junk])
    assert keep is None
    assert drop is not None and drop.split(":")[0] in (
        "gopher_repetition",
        "gopher_quality",
        "c4_quality",
        "fineweb_quality",
    )


def test_report_summary_and_contrasts():
    evals = pl.DataFrame(
        {
            "variant": ["influence", "influence", "random", "random", "refined", "raw"],
            "metric": ["heldout_loss"] * 4 + ["prose_perplexity"] * 2,
            "value": [2.0, 2.2, 2.5, 2.7, 30.0, 40.0],
        }
    )
    summary = summarize(evals)
    row = summary.filter(pl.col("variant") == "influence").row(0, named=True)
    assert (
        row["mean"] == pytest.approx(2.1)
        and row["std"] == pytest.approx(math.sqrt(0.02))
        and row["seeds"] == 2
    )
    got = {(c, m): (d, b) for c, m, d, b in comparisons(summary)}
    assert got[("influence − random", "heldout_loss")] == (pytest.approx(-0.5), "yes")
    assert got[("refined − raw", "prose_perplexity")] == (pytest.approx(-10.0), "yes")


@pytest.mark.slow
def test_every_variant_trains_evaluates_reports_and_audits(pipeline):
    from prox_assets.cli import add_target, materialize_partitions

    instance, store, model = pipeline
    version = train_refiners(instance, model)
    for shard in ("web-00", "clean-00"):
        assert refine(instance, version, shard).success
    assert materialize(instance, "refined_pool", version).success
    add_target("arc-t", "arc_challenge", 3, 12, 0)
    influence = {
        "pool": "raw",
        "model": model,
        "landmarks": 6,
        "exact_holdout": 4,
        "max_len": 32,
        "warmup_steps": 1,
        "batch_size": 4,
    }
    assert materialize(instance, "landmark_influence", "arc-t", influence).success
    assert materialize(instance, "selected_subset", "arc-t", {"budget": 5}).success

    config = {
        "base_model": model,
        "seeds": [0, 1],
        "max_steps": 2,
        "batch_size": 2,
        "seq_len": 32,
        "lora_r": 4,
        "lora_layers": 1,
        "eval_examples": 6,
        "prose_passages": 2,
        "prose_tokens": 32,
    }
    metas = {}
    for variant in VARIANTS:
        result = materialize(
            instance,
            "trained_checkpoint",
            dg.MultiPartitionKey({"target": "arc-t", "variant": variant}),
            config,
            raise_on_error=False,
        )
        if (
            variant == "rule_filtered" and not result.success
        ):  # every toy document fails the filters
            failure = next(e for e in result.all_events if e.is_step_failure)
            assert "no document to train on" in failure.step_failure_data.error.message
            continue
        assert result.success, variant
        metas[variant] = result.asset_materializations_for_node("trained_checkpoint")[0].metadata
        if variant == "random":  # two seeds trained in this run, so neither is loaded again, and
            # the second replays the blocks below its adapters from the first's evaluation
            logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
            evals = [m for m in logs if m.startswith("evaluated in ")]
            assert len(evals) == 2 and all("as trained, in memory" in m for m in evals), evals
            assert ["replayed for" in m for m in evals] == [False, True], evals

    catalog = Catalog()
    ckpts = catalog.query(
        "SELECT variant, seed, version, n_docs, train_tokens, path FROM checkpoints"
    )
    assert set(ckpts["variant"]) == set(metas) - {"base"}
    per_variant = dict(ckpts.group_by("variant").agg(pl.col("train_tokens").max()).rows())
    assert set(per_variant.values()) == {
        2 * 2 * 32
    }  # exactly the same token budget for every variant
    sizes = dict(ckpts.group_by("variant").agg(pl.col("n_docs").max()).rows())
    assert sizes["influence"] == sizes["random"] == sizes["embedding"] == 5 and sizes["full"] == 20
    assert ckpts.filter(pl.col("variant") == "random")["version"].n_unique() == 2  # one per seed
    for path in ckpts["path"]:
        prefix = path[len(store.uri("")) :].strip("/")
        assert store.exists(f"{prefix}/adapter_model.safetensors") and store.exists(
            f"{prefix}/manifest.json"
        )
    evals = catalog.query(
        "SELECT variant, metric, count(*) AS n FROM checkpoint_evals GROUP BY 1, 2"
    )
    assert {"heldout_loss", "accuracy", "acc_per_char", "prose_perplexity"} <= set(evals["metric"])
    assert evals.filter(pl.col("variant") == "random")["n"].min() == 2  # both seeds evaluated

    report = materialize(instance, "evaluation_report", "arc-t", {})
    meta = report.asset_materializations_for_node("evaluation_report")[0].metadata
    assert meta["variants"].value == len(metas)
    assert "influence − random" in meta["contrasts"].value and "± " in meta["results"].value
    assert meta["plot"].value.startswith("![evaluation](data:image/png;base64,")
    assert store.read_bytes("reports/arc-t/evaluation.png")[:4] == b"\x89PNG"

    # retraining the same partition reuses the checkpoints (same inputs, same version)
    again = materialize(
        instance,
        "trained_checkpoint",
        dg.MultiPartitionKey({"target": "arc-t", "variant": "full"}),
        config,
    )
    logs = [e.message for e in instance.all_logs(again.run_id) if e.message]
    assert sum("exists" in m and "evaluating only" in m for m in logs) == 2

    # four variants in one run (the backfill policy); a variant that fails does not stop the others;
    # a checkpoint two variants share is evaluated once in the run
    before = {r.run_id for r in instance.get_runs()}
    keys = ["arc-t|full", "arc-t|raw", "arc-t|refined", "arc-t|rule_filtered"]
    out = materialize_partitions("trained_checkpoint", keys, config)
    (run,) = [r for r in instance.get_runs() if r.run_id not in before]
    assert out["arc-t|full"] == out["arc-t|raw"] == out["arc-t|refined"] == "ok"
    rows = catalog.query(
        "SELECT version FROM checkpoints WHERE target = 'arc-t' AND variant IN "
        "('full', 'raw', 'refined', 'rule_filtered')"
    )
    shared = rows.height - rows["version"].n_unique()
    logs = [e.message for e in instance.all_logs(run.run_id) if e.message]
    assert sum("evaluated earlier in this run" in m for m in logs) == shared
    evals = [m for m in logs if m.startswith("evaluated in ")]
    assert len(evals) == rows["version"].n_unique()
    # checkpoints that exist are loaded; every evaluation after the first replays the bottom blocks
    assert all("(loaded; bottom 1 blocks replayed" in m for m in evals[1:]), evals
    if "rule_filtered" in metas:
        assert out["arc-t|rule_filtered"] == "ok"
    else:
        assert (
            "1 of 4 partitions failed" in out["arc-t|rule_filtered"]
            and "no document to train on" in out["arc-t|rule_filtered"]
        )

    chosen = catalog.query(
        "SELECT doc_id FROM checkpoint_documents WHERE variant = 'influence' LIMIT 1"
    )["doc_id"][0]
    audit = audit_document(catalog, chosen)
    variants = {r["variant"] for r in audit["checkpoints"]}
    assert {"influence", "full"} <= variants
    assert "trained checkpoint" in format_audit(audit)
