"""Stage 3, synthesis: seed scores and raw documents -> ``sft_programs[level]``.

``doc``: keep_doc()/drop_doc() targets from the seed scores. ``chunk``: programs for
line-numbered windows of sampled documents, from the rule annotator (default), the LLM annotator
(few-shot, one prompt per noise type), or both merged. Written as versioned train/val/rejected
Parquet files under ``sft/<level>/<sft_version>/``. Where the labels come from:
docs/methods.md#sft-synthesis.
"""

import json
from fnmatch import fnmatch
from typing import Literal

import dagster as dg
import polars as pl

from prox_assets.core.annotators import RuleAnnotator, annotate_windows
from prox_assets.core.chunking import (
    DEFAULT_DOC_MAX_TOKENS,
    DEFAULT_WINDOW_TOKENS,
    chunk_document,
    hf_token_counter,
    truncate_to_tokens,
)
from prox_assets.core.real_pairs import Pair, page_split, pydocs_pair, pydocs_rel
from prox_assets.core.scoring import seed_sample
from prox_assets.core.sft import (
    SPLITS,
    SFTExample,
    SFTSet,
    balance_chunk_examples,
    balance_doc_examples,
    build_sft_set,
    chunk_annotator_name,
    chunk_examples,
    clean_examples,
    doc_example,
    doc_label,
    gold_page_examples,
    unparsable_targets,
)
from prox_assets.ingest import raw_corpus
from prox_assets.layout import SCORES, raw_paths, sft_prefix, sft_split_key
from prox_assets.metadata import counts_table, lineage, md_table, with_lineage
from prox_assets.partition_runs import ONE_PARTITION_PER_RUN
from prox_assets.partitions import level_partitions
from prox_assets.scoring import seed_scores
from prox_resources.catalog import Catalog
from prox_resources.device import GPU_STEP, DeviceSettings
from prox_resources.engine import ModelEngine
from prox_resources.models import resolve_model
from prox_resources.store import ObjectStore


class SFTConfig(dg.Config):
    val_fraction: float = 0.2
    seed: int = 0
    # whose tokenizer sizes documents and windows: the refiners' base model ("" = the engine's,
    # PROX_BASE_MODEL); the set records the name, and refiner[level] trains that model
    refiner_base_model: str = ""
    doc_max_tokens: int = DEFAULT_DOC_MAX_TOKENS  # the document refiner sees this many tokens
    window_tokens: int = DEFAULT_WINDOW_TOKENS  # chunk windows (core.chunking)
    chunk_docs_per_shard: int = 12
    annotator: Literal["rules", "llm", "both"] = "rules"  # for pages without gold labels
    max_removal_ratio: float = 0.75  # caps what rule/LLM labels remove; gold labels have no cap
    eval_only_shards: list[str] = [
        "news-*"
    ]  # a held-out domain: in no SFT set, only in evaluations
    heldout_pages: float = 0.3  # gold pages kept out of every SFT set: the evaluation's pages
    clean_sources: list[str] = ["janeaustenr", "math"]  # clean text: keep_chunk() / keep_doc()
    keep_fraction: float = 0.6  # chunk examples without a removal, at most (clean windows included)
    # windows removed whole, at most this many per window where content meets noise (0: no cap);
    # at their natural share a small refiner never learns where the noise starts (README)
    whole_per_partial: float = 1.0
    doc_keep_per_drop: float = 3.0


def _tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(name))


def _eval_only(shard: str, config: SFTConfig) -> bool:
    return any(fnmatch(shard, pattern) for pattern in config.eval_only_shards)


def _heldout(url: str | None, config: SFTConfig) -> bool:
    """A docs page the evaluation keeps out of every SFT set."""
    rel = pydocs_rel(url)
    return (
        rel is not None
        and page_split(f"pydocs:{rel}", config.heldout_pages, config.seed) == "heldout"
    )


def _gold_pair(url: str | None, text: str) -> Pair | None:
    """The layout-gold pair of a docs page, None for other documents."""
    rel = pydocs_rel(url)
    return None if rel is None else pydocs_pair(rel, text)


def _raw_shards(store: ObjectStore, catalog: Catalog, config: SFTConfig, log):
    for key in raw_paths(catalog).values():
        raw = store.read_parquet(key).select("doc_id", "shard", "source", "url", "text")
        if raw.height and _eval_only(raw["shard"][0], config):
            log.info(f"{key}: an evaluation-only shard, in no SFT set")
            continue
        yield key, raw


def _doc_examples(
    store: ObjectStore, catalog: Catalog, config: SFTConfig, tokenizer, log
) -> tuple[list[SFTExample], dict]:
    """Distant labels where a document has them (the docs' layout: index and near-empty pages
    are drops; clean sources are keeps), the seed rubric scores elsewhere."""
    rubric = {}
    for key in store.list(SCORES):
        for row in store.read_parquet(key).iter_rows(named=True):
            rubric[row["doc_id"]] = (row["keep"], row["model"])
    examples, agree = [], []
    for _, raw in _raw_shards(store, catalog, config, log):
        for doc_id, shard, source, url, text in raw.iter_rows():
            if _heldout(url, config):
                continue
            pair = _gold_pair(url, text)
            label = doc_label(
                None if pair is None else pair.keep,
                source in config.clean_sources,
                rubric.get(doc_id),
            )
            if label is None:
                continue
            if label.annotator != "rubric-scores" and doc_id in rubric:
                agree.append(rubric[doc_id][0] == label.keep)
            shown = truncate_to_tokens(text, tokenizer, config.doc_max_tokens)
            example = doc_example(doc_id, shard, shown, label.keep, label.model)
            example.annotator = label.annotator
            examples.append(example)
    report = {
        "rubric_vs_distant_agreement": round(sum(agree) / len(agree), 3) if agree else None,
        "rubric_vs_distant_compared": len(agree),
    }
    return balance_doc_examples(examples, config.doc_keep_per_drop, config.seed), report


def _chunk_examples(
    store, catalog: Catalog, config: SFTConfig, tokenizer, engine: ModelEngine, device, log
) -> list[SFTExample]:
    count = hf_token_counter(tokenizer)
    backend = engine.load(device) if config.annotator in ("llm", "both") else None
    heuristic = chunk_annotator_name(config.annotator)
    model = backend.model_id if backend is not None else "none"
    examples = []
    for key, raw in _raw_shards(store, catalog, config, log):
        rules = RuleAnnotator.for_shard(raw["text"])
        eligible = [d for d, u in zip(raw["doc_id"], raw["url"]) if not _heldout(u, config)]
        chosen = set(seed_sample(eligible, config.chunk_docs_per_shard, config.seed + 1))
        for doc_id, shard, source, url, text in raw.filter(
            pl.col("doc_id").is_in(chosen)
        ).iter_rows():
            windows = chunk_document(text, count, config.window_tokens)
            pair = _gold_pair(url, text)
            if pair is not None:
                if pair.keep:  # an index page is the document stage's to drop
                    body = chunk_document(pair.gold_text, count, config.window_tokens)
                    examples += gold_page_examples(
                        doc_id, shard, text, pair.labels, windows, pair.gold_text, body
                    )
            elif source in config.clean_sources:
                examples += clean_examples(doc_id, shard, text, windows)
            else:
                programs = annotate_windows(text, windows, config.annotator, rules, backend)
                examples += chunk_examples(
                    doc_id,
                    shard,
                    text,
                    windows,
                    programs,
                    heuristic,
                    model,
                    config.max_removal_ratio,
                )
        log.info(f"{key}: {len(examples)} chunk examples so far")
    return balance_chunk_examples(
        examples, config.keep_fraction, config.seed, config.whole_per_partial or None
    )


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
    # one level per run: its asset checks report once per step (and a level's work dwarfs a load)
    backfill_policy=ONE_PARTITION_PER_RUN,
    code_version="sft-v2",
    check_specs=[
        dg.AssetCheckSpec(
            "targets_parse",
            asset="sft_programs",
            description="Every accepted target program parses cleanly at its level.",
        ),
        dg.AssetCheckSpec(
            "label_balance",
            asset="sft_programs",
            description="Both labels occur; a one-class set fails.",
        ),
    ],
    description=(
        "The synthetic function-call SFT set of one refiner level, as chat examples in exactly "
        "the format the refiner sees at inference; doc: keep_doc()/drop_doc() from the seed "
        "scores; chunk: validated programs for line-numbered windows. Rejected programs are kept "
        "with their reason."
    ),
)
def sft_programs(
    context: dg.AssetExecutionContext,
    config: SFTConfig,
    store: ObjectStore,
    catalog: Catalog,
    engine: ModelEngine,
    device: DeviceSettings,
) -> dg.MaterializeResult:
    level = context.partition_key
    # the base model named in the set's config, its version and its record: what refiner[level] trains
    base_model = engine.base_or(config.refiner_base_model)
    config = config.model_copy(update={"refiner_base_model": base_model})
    tokenizer = _tokenizer(base_model)
    label_report: dict = {}
    if level == "doc":
        examples, label_report = _doc_examples(store, catalog, config, tokenizer, context.log)
    else:
        examples = _chunk_examples(store, catalog, config, tokenizer, engine, device, context.log)
    if not examples:
        raise dg.Failure(
            f"no {level} examples: materialize {'seed_scores' if level == 'doc' else 'raw_corpus'} first"
        )
    sft = build_sft_set(level, config.model_dump(), examples, config.val_fraction, config.seed)
    for split in SPLITS:
        store.write_parquet(sft_split_key(level, sft.version, split), sft.split(split))
    where = {"level": level, "sft_version": sft.version}
    catalog.replace_many(
        [
            (
                "sft_examples",
                where,
                with_lineage(sft.frame.drop("messages"), context, sft_version=sft.version),
            ),
            ("sft_sets", where, pl.DataFrame([_sft_set_row(context, store, sft, config)])),
        ]
    )
    # its data version: what refiner[level] consumes (prox_assets.lineage)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(sft.version),
        metadata=_metadata(store, sft, base_model, label_report),
        check_results=_checks(sft),
    )


def _sft_set_row(
    context: dg.AssetExecutionContext, store: ObjectStore, sft: SFTSet, config: SFTConfig
) -> dict:
    """The set's ``sft_sets`` row: where it is, its counts and the config that built it."""
    return {
        "level": sft.level,
        "sft_version": sft.version,
        "path": store.uri(sft_prefix(sft.level, sft.version)),
        "n_train": sft.n_train,
        "n_val": sft.n_val,
        "n_rejected": sft.n_rejected,
        "config": json.dumps(config.model_dump()),
        **lineage(context),
    }


def _metadata(store: ObjectStore, sft: SFTSet, base_model: str, label_report: dict) -> dict:
    return {
        "sft_version": sft.version,
        "refiner_base_model": base_model,  # refiner[level] trains it (its tokenizer sized these)
        "path": dg.MetadataValue.path(store.uri(sft_prefix(sft.level, sft.version))),
        "dagster/row_count": sft.accepted.height,
        "n_train": sft.n_train,
        "n_val": sft.n_val,
        "n_rejected": sft.n_rejected,
        "labels": counts_table(sft.labels(), "label"),
        "reject_reasons": counts_table(sft.reject_reasons(), "reason"),
        "annotators": counts_table(sft.annotators(), "annotator"),
        "labels_by_annotator": md_table(["annotator", "label", "n"], sft.labels_by_annotator()),
        **{k: v for k, v in label_report.items() if v is not None},
        "preview": md_table(["doc_id", "label", "target"], sft.preview()),
    }


def _checks(sft: SFTSet) -> list[dg.AssetCheckResult]:
    labels, bad = sft.labels(), unparsable_targets(sft.examples)
    return [
        dg.AssetCheckResult(
            check_name="targets_parse", passed=not bad, metadata={"unparsable": len(bad)}
        ),
        dg.AssetCheckResult(
            check_name="label_balance",
            passed=sft.minority() > 0,
            metadata={
                **{f"n_{k}": v for k, v in labels.items()},
                "minority_fraction": round(sft.minority() / max(sft.accepted.height, 1), 3),
            },
        ),
    ]
