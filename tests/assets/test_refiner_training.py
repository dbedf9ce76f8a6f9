"""Refiner fine-tuning: the training loop's pieces, and the asset end to end on a tiny model."""

import json

import polars as pl
import pytest

from prox_assets.core.refiner_eval import (
    RefinerEvaluation,
    chunk_metrics,
    doc_metrics,
    evaluate_on_sft_val,
    evaluation_new_tokens,
    few_shot_examples,
    with_shots,
)
from prox_assets.core.refiner_training import encode_example, version_id
from prox_assets.core.training_loop import TrainConfig, lr_at
from prox_assets.partitions import refiner_version_partitions
from prox_resources.catalog import Catalog
from tests.support.pipeline import materialize


def test_loss_is_on_program_tokens_only(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    chat = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "[doc]\n[000]hello\n[/doc]"},
    ]
    ids, labels = encode_example(tok, chat, "remove_lines(line_start=0, line_end=0)", 512)
    answer = tok.decode([t for t in labels if t != -100])
    assert answer.startswith("remove_lines(line_start=0, line_end=0)") and "<|im_end|>" in answer
    assert "[doc]" not in answer and len(ids) == len(labels)
    assert encode_example(tok, chat, "keep_chunk()", 10) is None  # too long: skipped, not cut


def test_schedule_and_versions():
    c = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2)
    assert lr_at(0, 10, c) == pytest.approx(5e-4) and lr_at(1, 10, c) == pytest.approx(1e-3)
    assert lr_at(9, 10, c) == pytest.approx(1e-4)  # decays exactly to min_lr on the last step
    assert (
        version_id("m", "s1", c)
        != version_id("m", "s2", c)
        != version_id("m", "s1", TrainConfig(lr=2e-3))
    )
    assert version_id("m", "s1", c) == version_id(
        "m", "s1", TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=2)
    )


def test_metrics():
    m = doc_metrics(
        ["drop_doc()", "keep_doc()", "garbage", "drop_doc()"], ["drop", "keep", "drop", "keep"]
    )
    assert m["parse_rate"] == 0.75 and m["accuracy"] == 0.5
    assert m["drop_f1"] == pytest.approx(0.5) and m["keep_f1"] == pytest.approx(0.5)
    c = chunk_metrics(
        ["remove_lines(0, 2)", "keep_chunk()"],
        ["remove_lines(1, 3)", "remove_lines(5, 5)"],
        [(0, 4), (5, 6)],
    )
    assert c["line_precision"] == pytest.approx(2 / 3) and c["line_recall"] == pytest.approx(2 / 4)
    shots = [([{"role": "system", "content": "S"}, {"role": "user", "content": "u1"}], "a1")]
    chat = with_shots(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "u2"}], shots
    )
    assert [t["content"] for t in chat] == ["S", "u1", "a1", "u2"]


class _Echo:
    """A backend that writes the same program for every chat, and remembers the chats."""

    def __init__(self, program: str):
        self.program, self.chats = program, []

    def generate(self, chats, max_new_tokens):
        self.chats += chats
        return [self.program] * len(chats)


def test_a_refiner_evaluation_against_the_few_shot_base_model():
    def chat(text: str) -> str:
        return json.dumps([{"role": "system", "content": "S"}, {"role": "user", "content": text}])

    split = pl.DataFrame(
        {
            "messages": [chat(f"doc {i}") for i in range(6)],
            "target": ["drop_doc()", "keep_doc()"] * 3,
            "label": ["drop", "keep"] * 3,
        }
    )
    shots = few_shot_examples(split, "doc", 2, seed=0)
    assert [target for _, target in shots] == ["drop_doc()", "keep_doc()"]
    assert few_shot_examples(split, "doc", 1, seed=0) == shots[:1]
    tuned, base = _Echo("drop_doc()"), _Echo("keep_doc()")
    sft_val = evaluate_on_sft_val(
        tuned, base, split, split, "doc", examples=4, few_shot=2, seed=0, new_tokens=8
    )
    assert len(tuned.chats) == len(base.chats) == 4
    assert len(tuned.chats[0]) == 2 and len(base.chats[0]) == 6  # the base model gets the shots
    evaluation = RefinerEvaluation("doc", 8, sft_val)
    assert evaluation.headline == "macro_f1" and evaluation.paper_anchor == 0.826
    assert not evaluation.beats_base  # each says one label for all: equal macro-F1
    assert [r[0] for r in evaluation.validation_rows()] == sorted(sft_val["refiner"])
    rows = evaluation.rows()
    assert {r["model"] for r in rows} == {"refiner", "base-few-shot"}
    assert {r["dataset"] for r in rows} == {"sft-val"}
    heldout = {"refiner": {"doc-labelled": {"macro_f1": 0.5}}}
    assert RefinerEvaluation("doc", 8, sft_val, heldout).rows()[-1] == {
        "model": "refiner",
        "dataset": "doc-labelled",
        "metric": "macro_f1",
        "value": 0.5,
    }
    assert evaluation_new_tokens("doc", 99, 160) == 8
    assert evaluation_new_tokens("chunk", 0, 160) == 160
    assert evaluation_new_tokens("chunk", 99, 160) == 99


@pytest.mark.slow
def test_refiner_asset_two_versions_coexist(pipeline):
    instance, store, model = pipeline
    for shard in ("web-00", "clean-00"):
        materialize(instance, "seed_scores", shard, {"seeds_per_shard": 6, "max_doc_tokens": 48})
    sft = {
        "refiner_base_model": model,
        "doc_max_tokens": 48,
        "window_tokens": 96,
        "chunk_docs_per_shard": 6,
        "val_fraction": 0.3,
    }
    for level in ("doc", "chunk"):
        materialize(instance, "sft_programs", level, sft)

    cfg = {
        "base_model": model,
        "max_steps": 3,
        "batch_size": 2,
        "eval_examples": 4,
        "max_new_tokens": 12,
        "quality_pages": 1,
        "quality_news": 1,
        "quality_clean": 1,
        "quality_doc_pages": 2,
        "quality_max_chars": 3000,
        "max_seq_len": 512,
    }
    doc = materialize(instance, "refiner", "doc", cfg)
    chunk = materialize(instance, "refiner", "chunk", cfg)
    meta = chunk.asset_materializations_for_node("refiner")[0].metadata
    v1 = meta["refiner_version"].value
    pair1 = meta["refiner_pair"].value
    assert "validation" in meta and "heldout_quality" in meta and meta["train_steps"].value == 3
    assert meta["max_new_tokens"].value == 12  # the config's; 0 sizes it from the training programs
    checks = {c.check_name: c for c in chunk.get_asset_check_evaluations()}
    assert "beats_base_model" in checks  # a warning either way; a random tiny model may lose
    files = {k.rsplit("/", 1)[-1] for k in store.list(f"models/refiner/chunk/{v1}/")}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "manifest.json",
    } <= files

    v2_run = materialize(instance, "refiner", "chunk", {**cfg, "lr": 1e-4})  # a refiner update
    v2 = v2_run.asset_materializations_for_node("refiner")[0].metadata["refiner_version"].value
    assert v2 != v1
    assert store.exists(f"models/refiner/chunk/{v1}/manifest.json") and store.exists(
        f"models/refiner/chunk/{v2}/manifest.json"
    )
    versions = (
        Catalog()
        .query("SELECT version FROM refiner_versions WHERE level = 'chunk'")["version"]
        .to_list()
    )
    assert sorted(versions) == sorted([v1, v2])
    evals = (
        Catalog()
        .query("SELECT DISTINCT version, model FROM refiner_evals WHERE level = 'chunk'")
        .rows()
    )
    assert {(v1, "refiner"), (v1, "base-few-shot"), (v2, "refiner"), (v2, "base-few-shot")} <= set(
        evals
    )
    ceiling = dict(
        Catalog()
        .query(
            "SELECT model, value FROM refiner_evals WHERE level = 'chunk' AND version = ? AND dataset = 'pydocs-heldout' "
            "AND metric = 'line_f1'",
            [v1],
        )
        .rows()
    )
    assert ceiling["perfect-imitator"] == 1.0 and set(ceiling) == {
        "refiner",
        "perfect-imitator",
        "random-control",
    }
    keys = instance.get_dynamic_partitions(refiner_version_partitions.name)
    assert pair1 in keys and len(keys) == 2
    manifest = json.loads(store.read_bytes(f"models/refiner/chunk/{v2}/manifest.json"))
    assert manifest["train_config"]["lr"] == 1e-4 and doc.success
