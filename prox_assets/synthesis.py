"""Stage 3, synthesis: seed scores and raw documents -> ``sft_programs[level]``.

``doc``: keep_doc()/drop_doc() targets from the seed scores. ``chunk``: programs for
line-numbered windows of sampled documents, from the rule annotator (default), the LLM annotator
(few-shot, one prompt per noise type), or both merged. Written as versioned train/val/rejected
Parquet files under ``sft/<level>/<sft_version>/``.
"""

import json
from collections import Counter
from typing import Literal

import dagster as dg
import polars as pl

from prox_assets.core.annotators import RuleAnnotator, llm_annotate, merge_programs
from prox_assets.core.chunking import chunk_document, hf_token_counter, truncate_to_tokens
from prox_assets.core.prompts import ANNOTATOR_PROMPT_VERSION
from prox_assets.core.scoring import seed_sample
from prox_assets.core.sft import (
    SFTExample,
    assign_splits,
    chunk_examples,
    doc_example,
    finalize,
    sft_version,
    unparsable_targets,
)
from prox_assets.ingest import raw_corpus, raw_key
from prox_assets.metadata import counts_table, lineage, md_table, with_lineage
from prox_assets.partitions import level_partitions
from prox_assets.scoring import seed_scores
from prox_resources.catalog import Catalog
from prox_resources.device import GPU_STEP, DeviceSettings
from prox_resources.engine import ModelEngine
from prox_resources.models import DEFAULT_MODEL, resolve_model
from prox_resources.store import ObjectStore


class SFTConfig(dg.Config):
    val_fraction: float = 0.2
    seed: int = 0
    refiner_base_model: str = DEFAULT_MODEL  # whose tokenizer sizes documents and windows
    doc_max_tokens: int = 384  # the document refiner sees this many tokens of a document
    window_tokens: int = 384  # chunk windows (the paper uses ~1500; shorter trains faster on CPUs)
    chunk_docs_per_shard: int = 12
    annotator: Literal["rules", "llm", "both"] = "rules"
    max_removal_ratio: float = 0.75


def sft_prefix(level: str, version: str) -> str:
    return f"sft/{level}/{version}"


def _tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name))


def _doc_examples(store: ObjectStore, config: SFTConfig, tokenizer) -> list[SFTExample]:
    examples = []
    for key in store.list("scores/"):
        scores = store.read_parquet(key)
        if not scores.height:
            continue
        shard = scores["shard"][0]
        texts = dict(store.read_parquet(raw_key(shard)).select("doc_id", "text").iter_rows())
        for row in scores.iter_rows(named=True):
            shown = truncate_to_tokens(texts[row["doc_id"]], tokenizer, config.doc_max_tokens)
            examples.append(doc_example(row["doc_id"], shard, shown, row["keep"], row["model"]))
    return examples


def _chunk_examples(store, config: SFTConfig, tokenizer, engine: ModelEngine, device, log) -> list[SFTExample]:
    count = hf_token_counter(tokenizer)
    backend = engine.load(device) if config.annotator in ("llm", "both") else None
    examples = []
    for key in store.list("raw/"):
        raw = store.read_parquet(key).select("doc_id", "shard", "text")
        rules = RuleAnnotator.for_shard(raw["text"])
        chosen = set(seed_sample(raw["doc_id"].to_list(), config.chunk_docs_per_shard, config.seed + 1))
        for doc_id, shard, text in raw.filter(pl.col("doc_id").is_in(chosen)).iter_rows():
            windows = chunk_document(text, count, config.window_tokens)
            programs = [rules.annotate(text, w) for w in windows] if config.annotator != "llm" else []
            if backend is not None:
                llm = llm_annotate(backend, [w.text for w in windows])
                programs = llm if config.annotator == "llm" else [merge_programs(p) for p in zip(programs, llm)]
            annotator = {"rules": "rules-v1", "llm": f"llm-{ANNOTATOR_PROMPT_VERSION}",
                         "both": f"rules-v1+llm-{ANNOTATOR_PROMPT_VERSION}"}[config.annotator]
            model = backend.model_id if backend is not None else "none"
            examples += chunk_examples(doc_id, shard, text, windows, programs, annotator, model,
                                       config.max_removal_ratio)
        log.info(f"{key}: {len(examples)} chunk examples so far")
    return examples


@dg.asset(
    partitions_def=level_partitions,
    deps=[
        dg.AssetDep(seed_scores, partition_mapping=dg.AllPartitionMapping()),
        dg.AssetDep(raw_corpus, partition_mapping=dg.AllPartitionMapping()),
    ],
    group_name="synthesis",
    kinds={"parquet"},
    owners=["team:data-platform"],
    **GPU_STEP,
    code_version="sft-v1",
    check_specs=[
        dg.AssetCheckSpec("targets_parse", asset="sft_programs",
                          description="Every accepted target program parses cleanly at its level."),
        dg.AssetCheckSpec("label_balance", asset="sft_programs",
                          description="Both labels occur; a one-class set fails."),
    ],
    description=(
        "The synthetic function-call SFT set of one refiner level, as chat examples in exactly "
        "the format the refiner sees at inference; doc: keep_doc()/drop_doc() from the seed "
        "scores; chunk: validated programs for line-numbered windows. Rejected programs are kept "
        "with their reason."
    ),
)
def sft_programs(
    context: dg.AssetExecutionContext, config: SFTConfig, store: ObjectStore, catalog: Catalog,
    engine: ModelEngine, device: DeviceSettings,
) -> dg.MaterializeResult:
    level = context.partition_key
    tokenizer = _tokenizer(config.refiner_base_model)
    if level == "doc":
        examples = _doc_examples(store, config, tokenizer)
    else:
        examples = _chunk_examples(store, config, tokenizer, engine, device, context.log)
    if not examples:
        raise dg.Failure(f"no {level} examples: materialize {'seed_scores' if level == 'doc' else 'raw_corpus'} first")

    assign_splits(examples, config.val_fraction, config.seed)
    version = sft_version(level, config.model_dump(), examples)
    finalize(examples, version)
    frame = pl.DataFrame([e.to_dict() for e in examples], schema_overrides={"reject_reason": pl.String})
    accepted = frame.filter(pl.col("status") == "accepted")
    prefix = sft_prefix(level, version)
    for split in ("train", "val"):
        store.write_parquet(f"{prefix}/{split}.parquet", accepted.filter(pl.col("split") == split))
    store.write_parquet(f"{prefix}/rejected.parquet", frame.filter(pl.col("status") == "rejected"))

    tags = lineage(context)
    n_train = int((accepted["split"] == "train").sum())
    n_val = accepted.height - n_train
    n_rejected = frame.height - accepted.height
    catalog.replace_many([
        ("sft_examples", {"level": level, "sft_version": version},
         with_lineage(frame.drop("messages"), context, sft_version=version)),
        ("sft_sets", {"level": level, "sft_version": version}, pl.DataFrame([{
            "level": level, "sft_version": version, "path": store.uri(prefix), "n_train": n_train,
            "n_val": n_val, "n_rejected": n_rejected, "config": json.dumps(config.model_dump()), **tags,
        }])),
    ])

    labels = Counter(accepted["label"].to_list())
    bad = unparsable_targets(examples)
    minority = min(labels.values()) if len(labels) == 2 else 0
    preview = accepted.head(4).select("doc_id", "label", "target").rows()
    return dg.MaterializeResult(
        metadata={
            "sft_version": version,
            "path": dg.MetadataValue.path(store.uri(prefix)),
            "dagster/row_count": accepted.height,
            "n_train": n_train,
            "n_val": n_val,
            "n_rejected": n_rejected,
            "labels": counts_table(labels, "label"),
            "reject_reasons": counts_table(Counter(frame["reject_reason"].drop_nulls().to_list()), "reason"),
            "annotators": counts_table(Counter(frame["annotator"].to_list()), "annotator"),
            "preview": md_table(["doc_id", "label", "target"], preview),
        },
        check_results=[
            dg.AssetCheckResult(check_name="targets_parse", passed=not bad,
                                metadata={"unparsable": len(bad)}),
            dg.AssetCheckResult(check_name="label_balance", passed=minority > 0,
                                metadata={**{f"n_{k}": v for k, v in labels.items()},
                                          "minority_fraction": round(minority / max(accepted.height, 1), 3)}),
        ],
    )
