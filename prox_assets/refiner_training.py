"""Stage 4, the refiners: ``sft_programs[level]`` -> ``refiner[level]``.

Fine-tunes the base model on the level's SFT set, writes the checkpoint to
``models/refiner/<level>/<version>/`` (safetensors, tokenizer, chat template; ``manifest.json``
last, so a killed upload never looks finished), evaluates it against the un-tuned base model
prompted few-shot on the same held-out examples, and registers the pair of latest document and
chunk refiners as a ``refiner_version`` partition key for the refined corpus.
"""

import json
from dataclasses import dataclass
from typing import Literal

import dagster as dg
import polars as pl

from prox_assets.core.chunking import DEFAULT_DOC_MAX_TOKENS, DEFAULT_WINDOW_TOKENS
from prox_assets.core.refiner_eval import (
    RefinerEvaluation,
    evaluate_on_sft_val,
    evaluation_new_tokens,
    load_chat,
)
from prox_assets.core.refiner_quality import (
    MODELS,
    Quality,
    build_quality_set,
    quality_headlines,
    quality_rows,
    refiner_quality,
)
from prox_assets.core.refiner_training import (
    FALLBACK_PROGRAM_TOKENS,
    generation_budget,
    train_refiner,
    version_id,
)
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
    run = _refiner_run(context, config, store, engine)
    report = _train(context, store, engine, device, run)
    tags = lineage(context)
    catalog.replace_rows(
        "refiner_versions", run.where, pl.DataFrame([run.catalog_row(report, store, tags)])
    )
    evaluation = _evaluate(context, config, store, catalog, engine, device, run, report)
    catalog.replace_rows(
        "refiner_evals",
        run.where,
        pl.DataFrame([{**run.where, **row, **tags} for row in evaluation.rows()]),
    )
    pair = _register_pair(context, catalog, run.level, run.version)
    return dg.MaterializeResult(
        data_version=dg.DataVersion(run.version),
        metadata={
            "refiner_version": run.version,
            "refiner_pair": pair or "waiting for the other level",
            "path": dg.MetadataValue.path(store.uri(run.prefix)),
            "sft_version": run.sft_version,
            "base_model": run.base_model,
            "method": config.method,
            **_metadata(report, evaluation),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="beats_base_model",
                passed=evaluation.beats_base,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "refiner": evaluation.score("refiner"),
                    "base_few_shot": evaluation.score("base-few-shot"),
                },
            )
        ],
    )


@dataclass(frozen=True)
class RefinerRun:
    """One refiner to train: its level and version, what it trains from (the base model, the SFT
    set and its splits, the hyperparameters) and where its checkpoint goes."""

    level: str
    version: str
    base_model: str
    sft_version: str
    train_config: TrainConfig
    train: pl.DataFrame
    val: pl.DataFrame

    @property
    def prefix(self) -> str:
        return refiner_prefix(self.level, self.version)

    @property
    def where(self) -> dict[str, str]:
        """Its rows in the catalog's refiner tables."""
        return {"level": self.level, "version": self.version}

    def manifest(self) -> dict:
        return {
            **self.where,
            "base_model": self.base_model,
            "sft_version": self.sft_version,
            "train_config": self.train_config.to_dict(),
        }

    def catalog_row(self, report: dict, store: ObjectStore, tags: dict) -> dict:
        """Its ``refiner_versions`` row."""
        return {
            **self.manifest(),
            "train_config": json.dumps(self.train_config.to_dict()),
            "train_report": json.dumps(report),
            "path": store.uri(self.prefix),
            **tags,
        }


def _refiner_run(
    context: dg.AssetExecutionContext,
    config: RefinerConfig,
    store: ObjectStore,
    engine: ModelEngine,
) -> RefinerRun:
    """The refiner of ``context``'s level: the SFT set it consumes, read, and its version."""
    level = context.partition_key
    sft_set = consumed_sft_set(context.instance, level)
    sft_version = sft_set.value("sft_version")
    base_model = refiner_base_model(sft_set, config.base_model, engine)
    train_config = _train_config(config)
    return RefinerRun(
        level=level,
        version=version_id(base_model, sft_version, train_config),
        base_model=base_model,
        sft_version=sft_version,
        train_config=train_config,
        train=store.read_parquet(sft_split_key(level, sft_version, "train")),
        val=store.read_parquet(sft_split_key(level, sft_version, "val")),
    )


def _train(
    context: dg.AssetExecutionContext,
    store: ObjectStore,
    engine: ModelEngine,
    device: DeviceSettings,
    run: RefinerRun,
) -> dict:
    """``run``'s refiner trained once into its prefix (one already there is reused): its train
    report, with the generation budget sized from its training programs."""

    def train_it(folder, progress):
        context.log.info(
            f"training {run.level} refiner {run.version} on {run.train.height} examples "
            f"(SFT {run.sft_version})"
        )
        train = run.train
        examples = [(load_chat(m), t) for m, t in zip(train["messages"], train["target"])]
        model, tokenizer = engine.load_model(device, run.base_model, train=True)
        report = train_refiner(
            model, tokenizer, examples, run.train_config, folder, progress=progress
        ).to_dict()
        return {**report, "max_new_tokens": generation_budget(report["target_tokens_p99"])}

    report, reused = train_into_store(store, run.prefix, run.manifest(), train_it, context.log.info)
    if reused:
        context.log.info(f"refiner {run.level}/{run.version} already trained: reusing it")
    return report


def _evaluate(
    context: dg.AssetExecutionContext,
    config: RefinerConfig,
    store: ObjectStore,
    catalog: Catalog,
    engine: ModelEngine,
    device: DeviceSettings,
    run: RefinerRun,
    report: dict,
) -> RefinerEvaluation:
    """``run``'s refiner and the few-shot base model on the same held-out examples of its SFT
    set; and on held-out real data, unless the config turns that off."""
    local = engine.local()
    tuned = local.load(device, model=str(fetch_model(store, run.prefix)))
    base = local.load(device, model=str(resolve_model(run.base_model)))
    new_tokens = evaluation_new_tokens(
        run.level, config.max_new_tokens, report.get("max_new_tokens", FALLBACK_PROGRAM_TOKENS)
    )
    sft_val = evaluate_on_sft_val(
        tuned,
        base,
        run.train,
        run.val,
        run.level,
        examples=config.eval_examples,
        few_shot=config.few_shot,
        seed=config.seed,
        new_tokens=new_tokens,
        log=context.log.info,
    )
    quality: Quality = {}
    if config.quality_pages or config.quality_clean:
        sets = catalog.named_query("sft_set_config", level=run.level, sft_version=run.sft_version)
        sft_config = json.loads(sets["config"][0])
        context.log.info(
            f"evaluating {run.level} on held-out real data: refiner, perfect imitator, random "
            "control"
        )
        quality = _quality(tuned, run.level, config, sft_config, new_tokens)
    return RefinerEvaluation(run.level, new_tokens, sft_val, quality)


def _quality(
    tuned, level: str, config: RefinerConfig, sft_config: dict, new_tokens: int
) -> Quality:
    """``core.refiner_quality`` on the held-out real data the config and the SFT set's own
    config (its page split, its input sizes) give."""
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
    return refiner_quality(
        tuned,
        level,
        qset,
        new_tokens,
        config.seed,
        doc_max_tokens=sft_config.get("doc_max_tokens", DEFAULT_DOC_MAX_TOKENS),
        window_tokens=sft_config.get("window_tokens", DEFAULT_WINDOW_TOKENS),
    )


def _metadata(report: dict, evaluation: RefinerEvaluation) -> dict:
    """The materialization's figures: training, validation against the base model and the
    paper, held-out real data."""
    losses = report.get("losses", [])
    headline = evaluation.headline
    metadata = {
        "train_steps": report.get("steps", 0),
        "train_tokens": report.get("tokens_seen", 0),
        "train_seconds": report.get("seconds", 0),
        "loss_first_last": f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "n/a",
        "validation": md_table(
            ["metric", "refiner", "base model, few-shot"], evaluation.validation_rows()
        ),
        f"refiner_{headline}": evaluation.score("refiner"),
        f"base_{headline}": evaluation.score("base-few-shot"),
        f"paper_{headline}_0.35B": evaluation.paper_anchor,
        "max_new_tokens": evaluation.new_tokens,
        "program_tokens_p99": report.get("target_tokens_p99", 0),
    }
    if not evaluation.heldout:
        return metadata
    quality = evaluation.heldout
    return {
        **metadata,
        "heldout_quality": md_table(
            ["dataset metric", *MODELS], quality_rows(evaluation.level, quality)
        ),
        **quality_headlines(evaluation.level, quality),
    }


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
