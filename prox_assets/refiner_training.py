"""Stage 4, the refiners: ``sft_programs[level]`` -> ``refiner[level]``.

Fine-tunes the base model on the level's SFT set, writes the checkpoint to
``models/refiner/<level>/<version>/`` (safetensors, tokenizer, chat template; ``manifest.json``
last, so a killed upload never looks finished), evaluates it against the un-tuned base model
prompted few-shot on the same held-out examples, and registers the pair of latest document and
chunk refiners as a ``refiner_version`` partition key for the refined corpus.
"""

import json
import math
import random
from typing import Literal

import dagster as dg
import polars as pl

from prox_assets.core.chunking import (
    DEFAULT_DOC_MAX_TOKENS,
    DEFAULT_WINDOW_TOKENS,
    hf_token_counter,
)
from prox_assets.core.refiner_eval import chunk_metrics, doc_metrics, load_chat, with_shots
from prox_assets.core.refiner_quality import (
    MODELS,
    build_quality_set,
    chunk_stage_quality,
    doc_stage_quality,
    imitator_writers,
    model_writers,
    noise_rate,
    random_writers,
)
from prox_assets.core.refiner_training import train_refiner, version_id
from prox_assets.core.training_loop import TrainConfig, lora_train_config
from prox_assets.layout import refiner_prefix, sft_split_key
from prox_assets.lineage import Recorded, recorded
from prox_assets.metadata import lineage, md_table
from prox_assets.partition_runs import ONE_PARTITION_PER_RUN
from prox_assets.partitions import level_partitions, refiner_pair_key, refiner_version_partitions
from prox_assets.synthesis import sft_programs
from prox_resources.catalog import Catalog
from prox_resources.device import GPU_STEP, DeviceSettings
from prox_resources.engine import ModelEngine
from prox_resources.models import fetch_model, resolve_model, train_into_store
from prox_resources.settings import downloads_dir
from prox_resources.store import ObjectStore

# What ProX reports for its 0.35B refiners (validation; Zhou et al., 2024, arXiv:2409.17115), shown
# next to ours (docs/methods.md#refiner-training).
PAPER_ANCHORS = {"doc": ("macro_f1", 0.826), "chunk": ("line_f1", 0.752)}

# New tokens for a chunk program when a refiner records no budget sized from its labels (one
# trained before the budget was).
FALLBACK_PROGRAM_TOKENS = 160


class RefinerConfig(dg.Config):
    # "" = the base model the SFT set was built with (its tokenizer sized the examples); another
    # name is refused: re-materialize sft_programs with that refiner_base_model instead
    base_model: str = ""
    method: Literal["lora", "full"] = "lora"
    lora_r: int = 16
    lora_layers: int = 10  # adapters on the top N blocks; 0 = every block
    max_steps: int = 24  # the CPU demo budget; set 0 to train for `epochs`
    epochs: float = 3.0
    batch_size: int = 4
    lr: float = 3e-4
    max_seq_len: int = 640
    seed: int = 0
    eval_examples: int = 16  # held-out examples scored for both the refiner and the base model
    few_shot: int = 2  # worked examples given to the base model
    max_new_tokens: int = 0  # 0: sized from the training programs (their p99 length x 1.25 + 8)
    # held-out real data (core.refiner_quality); 0 pages and 0 clean texts disable it
    quality_pages: int = 6  # docs pages with layout gold (chunk stage)
    quality_news: int = 4  # newspaper pages, a domain no refiner trains on (chunk stage)
    quality_clean: int = 6  # held-out Austen passages and MATH problems, each (both stages)
    quality_doc_pages: int = 16  # docs pages for the document stage, half of them index pages
    quality_max_chars: int = 6000  # chunk-stage pages at most this long (a CPU budget)


def consumed_sft_set(instance: dg.DagsterInstance, level: str) -> Recorded:
    """sft_programs[level]'s latest materialization: the SFT set this refiner depends on (the
    event log, not the newest catalog row)."""
    found = recorded(instance, "sft_programs", level)
    if found is None:
        raise dg.Failure(f"no SFT set for level {level!r}: materialize sft_programs[{level}] first")
    return found


def refiner_base_model(sft_set: Recorded, configured: str, engine: ModelEngine) -> str:
    """The model a refiner trains from: the one whose tokenizer sized its SFT set's documents and
    windows (recorded by sft_programs), so that inputs are measured as they were at labelling.
    A config naming another model fails; an SFT set from before the record, the config's model
    or else the engine's base model."""
    built_with = sft_set.metadata.get("refiner_base_model")
    if built_with is None:
        return engine.base_or(configured)
    if configured and configured != built_with:
        raise dg.Failure(
            f"refiner base_model {configured!r}, but SFT set {sft_set.value('sft_version')} was "
            f"built with {built_with!r}'s tokenizer (its windows and truncation are counted in "
            f"those tokens): materialize sft_programs[{sft_set.partition}] with refiner_base_model "
            f"{configured!r}, or leave base_model empty"
        )
    return str(built_with)


def _train_config(config: RefinerConfig) -> TrainConfig:
    return lora_train_config(
        method=config.method,
        lora_r=config.lora_r,
        lora_layers=config.lora_layers,
        lr=config.lr,
        epochs=config.epochs,
        max_steps=config.max_steps or None,
        batch_size=config.batch_size,
        max_seq_len=config.max_seq_len,
        seed=config.seed,
    )


def _shots(train: pl.DataFrame, level: str, n: int, seed: int) -> list[tuple[list[dict], str]]:
    """Worked examples for the base model, one per label where possible."""
    rng = random.Random(seed)
    shots = []
    for label in ("drop", "keep") if level == "doc" else ("remove", "keep"):
        rows = train.filter(pl.col("label") == label)
        if rows.height:
            i = rng.randrange(rows.height)
            shots.append((load_chat(rows["messages"][i]), rows["target"][i]))
    return shots[:n]


def _evaluate(backend, val: pl.DataFrame, level: str, shots=None, max_new_tokens: int = 64) -> dict:
    chats = [load_chat(m) for m in val["messages"]]
    if shots:
        chats = [with_shots(c, shots) for c in chats]
    predicted = backend.generate(chats, max_new_tokens=max_new_tokens)
    if level == "doc":
        return doc_metrics(predicted, val["label"].to_list())
    spans = list(zip(val["line_start"].to_list(), val["line_end"].to_list()))
    return chunk_metrics(predicted, val["target"].to_list(), spans)


def generation_budget(target_tokens_p99: int) -> int:
    """New tokens for a program: the training programs' p99 with room to spare, so a model that
    imitates its labels is not cut off (64 tokens truncated the long ones)."""
    return max(16, math.ceil(1.25 * target_tokens_p99) + 8)


def _quality(tuned, level: str, config: RefinerConfig, sft_config: dict, new_tokens: int) -> dict:
    """{model: {dataset: {metric: value}}} on held-out real data for the refiner, the perfect
    imitator and the random control."""
    heldout = sft_config.get("heldout_pages")  # None: an SFT set from before the page split
    qset = build_quality_set(
        downloads_dir(),
        config.quality_pages if heldout else 0,
        config.quality_news,
        config.quality_clean,
        config.quality_doc_pages if heldout else 0,
        config.quality_max_chars,
        heldout or 0.0,
        sft_config.get("seed", 0),
    )
    writers = {
        "refiner": model_writers(tuned, new_tokens),
        "perfect-imitator": imitator_writers(),
        "random-control": random_writers(
            noise_rate(qset.pages),
            sum(not k for _, _, k in qset.docs) / max(len(qset.docs), 1),
            config.seed,
        ),
    }
    if level == "doc":
        limit = sft_config.get("doc_max_tokens", DEFAULT_DOC_MAX_TOKENS)
        return {
            m: doc_stage_quality(w[0], qset, lambda t: tuned.truncate(t, limit))
            for m, w in writers.items()
        }
    count = hf_token_counter(tuned.tokenizer)
    window = sft_config.get("window_tokens", DEFAULT_WINDOW_TOKENS)
    return {m: chunk_stage_quality(w[1], qset, count, window) for m, w in writers.items()}


# The figures issue readers look for first, per level: (dataset, metric).
HEADLINES = {
    "doc": [
        ("doc-labelled", "macro_f1"),
        ("docs-pydocs-index", "docs_dropped"),
        ("docs-austen", "docs_dropped"),
        ("docs-math", "docs_dropped"),
        ("docs-news", "docs_dropped"),
        ("docs-pydocs-content", "docs_dropped"),
    ],
    "chunk": [
        ("pydocs-heldout", "line_f1"),
        ("pydocs-heldout", "gold_text_kept"),
        ("pydocs-heldout", "noise_removed"),
        ("news-heldout", "gold_text_kept"),
        ("news-heldout", "noise_removed"),
        ("clean-austen", "tokens_kept"),
        ("clean-math", "tokens_kept"),
        ("clean-austen", "docs_dropped"),
        ("clean-math", "docs_dropped"),
    ],
}


@dg.asset(
    partitions_def=level_partitions,
    deps=[sft_programs],
    group_name="refiner_training",
    kinds={"pytorch", "safetensors"},
    owners=["team:data-platform"],
    **GPU_STEP,
    # one level per run: its asset checks report once per step (and a level's work dwarfs a load)
    backfill_policy=ONE_PARTITION_PER_RUN,
    code_version="refiner-v2",
    check_specs=[
        dg.AssetCheckSpec(
            "beats_base_model",
            asset="refiner",
            description="The fine-tuned refiner scores higher on held-out F1 than the base model prompted few-shot.",
        )
    ],
    description=(
        "A refiner for one ProX level, fine-tuned (LoRA by default) on sft_programs[level] with the "
        "loss on program tokens only. Checkpoint in save_pretrained layout under "
        "models/refiner/<level>/<version>/; version = hash(base model, SFT version, hyperparameters). "
        "Evaluated on held-out SFT examples against the base model prompted few-shot, and (chunk) on "
        "real noisy/clean page pairs."
    ),
)
def refiner(
    context: dg.AssetExecutionContext,
    config: RefinerConfig,
    store: ObjectStore,
    catalog: Catalog,
    engine: ModelEngine,
    device: DeviceSettings,
) -> dg.MaterializeResult:
    level = context.partition_key
    sft_set = consumed_sft_set(context.instance, level)
    sft_version = sft_set.value("sft_version")
    base_model = refiner_base_model(sft_set, config.base_model, engine)
    train = store.read_parquet(sft_split_key(level, sft_version, "train"))
    val = store.read_parquet(sft_split_key(level, sft_version, "val"))
    train_config = _train_config(config)
    version = version_id(base_model, sft_version, train_config)
    prefix = refiner_prefix(level, version)
    tags = lineage(context)
    base_path = resolve_model(base_model)

    def train_it(folder, progress):
        context.log.info(
            f"training {level} refiner {version} on {train.height} examples (SFT {sft_version})"
        )
        examples = [(load_chat(m), t) for m, t in zip(train["messages"], train["target"])]
        model, tokenizer = engine.load_model(device, base_model, train=True)
        report = train_refiner(
            model, tokenizer, examples, train_config, folder, progress=progress
        ).to_dict()
        return {**report, "max_new_tokens": generation_budget(report["target_tokens_p99"])}

    report, reused = train_into_store(
        store,
        prefix,
        {
            "level": level,
            "version": version,
            "base_model": base_model,
            "sft_version": sft_version,
            "train_config": train_config.to_dict(),
        },
        train_it,
        context.log.info,
    )
    if reused:
        context.log.info(f"refiner {level}/{version} already trained: reusing it")
    catalog.replace_rows(
        "refiner_versions",
        {"level": level, "version": version},
        pl.DataFrame(
            [
                {
                    "level": level,
                    "version": version,
                    "base_model": base_model,
                    "sft_version": sft_version,
                    "train_config": json.dumps(train_config.to_dict()),
                    "train_report": json.dumps(report),
                    "path": store.uri(prefix),
                    **tags,
                }
            ]
        ),
    )

    # --- evaluation: the refiner and the few-shot base model on the same held-out examples
    local = engine.local()
    tuned = local.load(device, model=str(fetch_model(store, prefix)))
    base = local.load(device, model=str(base_path))
    val_sample = (
        val.sample(n=min(config.eval_examples, val.height), seed=config.seed) if val.height else val
    )
    shots = _shots(train, level, config.few_shot, config.seed)
    context.log.info(f"evaluating on {val_sample.height} held-out examples")
    program_tokens = config.max_new_tokens or report.get("max_new_tokens", FALLBACK_PROGRAM_TOKENS)
    new_tokens = 8 if level == "doc" else program_tokens  # keep_doc() is 4 tokens
    metrics = {
        "refiner": _evaluate(tuned, val_sample, level, max_new_tokens=new_tokens),
        "base-few-shot": _evaluate(base, val_sample, level, shots, new_tokens),
    }
    quality = {}
    if config.quality_pages or config.quality_clean:
        sft_config = json.loads(
            catalog.named_query("sft_set_config", level=level, sft_version=sft_version)["config"][0]
        )
        context.log.info(
            f"evaluating {level} on held-out real data: refiner, perfect imitator, random control"
        )
        quality = _quality(tuned, level, config, sft_config, new_tokens)

    eval_rows = [
        {
            "level": level,
            "version": version,
            "model": model,
            "dataset": "sft-val",
            "metric": k,
            "value": float(v),
            **tags,
        }
        for model, values in metrics.items()
        for k, v in values.items()
    ] + [
        {
            "level": level,
            "version": version,
            "model": model,
            "dataset": dataset,
            "metric": k,
            "value": float(v),
            **tags,
        }
        for model, datasets in quality.items()
        for dataset, values in datasets.items()
        for k, v in values.items()
    ]
    catalog.replace_rows(
        "refiner_evals", {"level": level, "version": version}, pl.DataFrame(eval_rows)
    )
    pair = _register_pair(context, catalog, level, version)

    headline, anchor = PAPER_ANCHORS[level]
    keys = sorted(set(metrics["refiner"]) | set(metrics["base-few-shot"]))
    table = md_table(
        ["metric", "refiner", "base model, few-shot"],
        [
            (
                k,
                round(metrics["refiner"].get(k, 0), 3),
                round(metrics["base-few-shot"].get(k, 0), 3),
            )
            for k in keys
        ],
    )
    losses = report.get("losses", [])
    beats = metrics["refiner"][headline] > metrics["base-few-shot"][headline]
    return dg.MaterializeResult(
        data_version=dg.DataVersion(version),
        metadata={
            "refiner_version": version,
            "refiner_pair": pair or "waiting for the other level",
            "path": dg.MetadataValue.path(store.uri(prefix)),
            "sft_version": sft_version,
            "base_model": base_model,
            "method": config.method,
            "train_steps": report.get("steps", 0),
            "train_tokens": report.get("tokens_seen", 0),
            "train_seconds": report.get("seconds", 0),
            "loss_first_last": f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "n/a",
            "validation": table,
            f"refiner_{headline}": round(metrics["refiner"][headline], 3),
            f"base_{headline}": round(metrics["base-few-shot"][headline], 3),
            f"paper_{headline}_0.35B": anchor,
            "max_new_tokens": new_tokens,
            "program_tokens_p99": report.get("target_tokens_p99", 0),
            **_quality_metadata(level, quality),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="beats_base_model",
                passed=beats,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "refiner": round(metrics["refiner"][headline], 3),
                    "base_few_shot": round(metrics["base-few-shot"][headline], 3),
                },
            )
        ],
    )


def _quality_metadata(level: str, quality: dict) -> dict:
    if not quality:
        return {}
    rows = [
        (
            f"{d} {m}",
            *(round(quality[model].get(d, {}).get(m, float("nan")), 3) for model in MODELS),
        )
        for d, m in HEADLINES[level]
    ]
    headline = {
        f"heldout_{d}_{m}".replace("-", "_"): round(quality["refiner"][d][m], 3)
        for d, m in HEADLINES[level]
        if m in quality["refiner"].get(d, {})
    }
    return {"heldout_quality": md_table(["dataset metric", *MODELS], rows), **headline}


def _register_pair(
    context: dg.AssetExecutionContext, catalog: Catalog, level: str, version: str
) -> str | None:
    """This refiner and the other level's (its latest materialization in the event log) as one
    refiner_version partition key, once both exist; a new pair becomes the newest key."""
    other = "chunk" if level == "doc" else "doc"
    found = recorded(context.instance, "refiner", other)
    if found is None:
        return None
    versions = {level: version, other: found.value("refiner_version")}
    key = refiner_pair_key(versions["doc"], versions["chunk"])
    if not context.instance.has_dynamic_partition(refiner_version_partitions.name, key):
        context.instance.add_dynamic_partitions(refiner_version_partitions.name, [key])
    catalog.replace_rows(
        "refiner_pairs",
        {"refiner_version": key},
        pl.DataFrame(
            [
                {
                    "refiner_version": key,
                    "doc_version": versions["doc"],
                    "chunk_version": versions["chunk"],
                    "run_id": context.run.run_id,
                }
            ]
        ),
    )
    return key
