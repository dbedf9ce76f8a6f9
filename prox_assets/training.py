"""Stage 7, the evidence: ``trained_checkpoint[target|variant]`` -> ``evaluation_report[target]``.

Every variant trains the same base model with the same hyperparameters, token budget and seeds
on different documents (see ``partitions.VARIANTS``), then is evaluated on the target task's
held-out examples and on held-out clean prose (``core/evaluation.py``). Checkpoints with equal
inputs are trained once: the refinement variants do not depend on the target, so the second
target reuses them and only evaluates.
"""

import base64
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import dagster as dg
import polars as pl

from prox_assets.core.evaluation import evaluate
from prox_assets.core.quality_filters import rule_filter
from prox_assets.core.refiner_training import TrainConfig
from prox_assets.core.samples import heldout_prose
from prox_assets.core.scoring import seed_sample
from prox_assets.core.training import checkpoint_version, train_lm
from prox_assets.ingest import raw_corpus, raw_paths
from prox_assets.metadata import lineage, md_table
from prox_assets.partition_runs import MODEL_BACKFILL_POLICY, PartitionOutcome, materialize_each
from prox_assets.partitions import VARIANTS, checkpoint_partitions, target_partitions
from prox_assets.lineage import consumed_refiner_version, content_version, recorded
from prox_assets.refine import read_refined_pool, refined_pool
from prox_assets.selection import pool_frame, pool_refiner_version, selected_subset, target_prefix
from prox_resources.catalog import Catalog
from prox_resources.device import GPU_STEP, DeviceSettings
from prox_resources.engine import ModelEngine
from prox_resources.models import DEFAULT_MODEL, fetch_model, train_into_store
from prox_resources.settings import downloads_dir
from prox_resources.store import ObjectStore

PROSE_KEY = "eval/heldout_prose.parquet"
# metric -> True when higher is better
METRICS = {"heldout_loss": False, "accuracy": True, "acc_per_char": True, "exact_match": True, "f1": True,
           "prose_perplexity": False}


class CheckpointConfig(dg.Config):
    base_model: str = DEFAULT_MODEL
    seeds: list[int] = [0, 1]
    # the token budget: max_steps x batch_size x seq_len tokens for every variant
    max_steps: int = 8
    batch_size: int = 4
    seq_len: int = 128
    lr: float = 1e-3  # LoRA with a budget of a few steps: the high end of the usual range
    method: Literal["lora", "full"] = "lora"
    lora_r: int = 8
    lora_layers: int = 4  # adapters on the top N blocks; 0 = every block
    refiner_version: str = ""  # raw / refined / rule_filtered: "" = the newest (refined_pool's last partition)
    eval_examples: int = 40  # held-out target examples evaluated (0 = all)
    prose_passages: int = 16
    prose_tokens: int = 256
    max_new_tokens: int = 96  # GSM8K / SQuAD completions

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(method=self.method, lora_r=self.lora_r, lora_alpha=2 * self.lora_r,
                           lora_layers=self.lora_layers or None, max_steps=self.max_steps,
                           batch_size=self.batch_size, lr=self.lr, min_lr=self.lr / 10,
                           warmup_steps=min(2, self.max_steps), max_seq_len=self.seq_len, seed=seed)


def checkpoint_prefix(target: str, variant: str, version: str) -> str:
    return f"models/checkpoints/{target}/{variant}/{version}"


def _target_task(catalog: Catalog, target: str) -> str:
    rows = catalog.query("SELECT task FROM targets WHERE target = ? LIMIT 1", [target]).rows()
    if not rows:
        raise dg.Failure(f"unknown target {target!r}: register it with `prox target add`")
    return rows[0][0]


@dataclass(frozen=True)
class CheckpointLineage:
    """What a checkpoint's documents came from; published in its materialization metadata."""

    refiner_version: str | None = None
    doc_sft_version: str | None = None
    chunk_sft_version: str | None = None
    selection_version: str | None = None
    influence_version: str | None = None

    @classmethod
    def of_pool(cls, store: ObjectStore, refiner_version: str | None, **selection) -> "CheckpointLineage":
        if refiner_version is None:
            return cls(**selection)
        pool = read_refined_pool(store, refiner_version)
        return cls(refiner_version, pool.doc_sft_version, pool.chunk_sft_version, **selection)

    def metadata(self) -> dict[str, str]:
        return {k: v or "none" for k, v in asdict(self).items()}


@dataclass(frozen=True)
class VariantDocuments:
    """What a variant trains on: doc_id, text, weight; raw or refined text; where it came from."""

    docs: pl.DataFrame
    text_kind: str
    spec: str
    lineage: CheckpointLineage
    notes: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SelectionInput:
    """The selection selected_subset[target] last materialized, and the pool it was chosen from."""

    chosen: pl.DataFrame  # doc_id, weight
    pool: pl.DataFrame  # doc_id, text
    spec: str
    lineage: CheckpointLineage


def _selection(store: ObjectStore, catalog: Catalog, instance: dg.DagsterInstance, target: str) -> SelectionInput:
    """The selection of selected_subset[target]'s latest materialization (its data version)."""
    found = recorded(instance, "selected_subset", target)
    if found is None:
        raise dg.Failure(f"no selection for {target}: materialize selected_subset[{target}]")
    version, pool_spec = found.value("influence_version"), found.value("pool")
    chosen = store.read_parquet(f"selections/{target}/{version}.parquet").select("doc_id", "weight")
    pool_ids = store.read_parquet(f"influence/{target}/{version}/scores.parquet").select("doc_id")
    pool = pool_frame(store, catalog, pool_spec).join(pool_ids, on="doc_id", how="semi")
    lineage = CheckpointLineage.of_pool(store, pool_refiner_version(pool_spec),
                                        selection_version=found.value("selection_version"),
                                        influence_version=version)
    return SelectionInput(chosen, pool, f"selection:{target}/{version} of {pool_spec}", lineage)


def _refinement_docs(store: ObjectStore, catalog: Catalog, version: str) -> pl.DataFrame:
    """doc_id, raw text, refined text, kept: every document of refined_pool[version]."""
    keys = list(read_refined_pool(store, version).shards.values())
    refined = pl.concat([store.read_parquet(k).select("doc_id", "shard", "text", "kept") for k in keys])
    raw = pl.concat([store.read_parquet(k).select("doc_id", pl.col("text").alias("raw_text"))
                     for k in raw_paths(catalog, refined["shard"].unique().sort().to_list()).values()])
    return refined.join(raw.unique("doc_id"), on="doc_id").sort("doc_id")


def variant_documents(store: ObjectStore, catalog: Catalog, instance: dg.DagsterInstance, target: str,
                      variant: str, seed: int, refiner_version: str | None,
                      embedding_scores=None) -> VariantDocuments:
    """The documents a variant trains on. ``refiner_version``: the refined pool the refinement
    variants read (config, else the newest); the selection variants read their selection's pool."""
    notes: dict = {}
    if variant in ("influence", "random", "embedding", "full"):
        sel = _selection(store, catalog, instance, target)
        pool, k = sel.pool, sel.chosen.height
        if variant == "influence":
            docs = pool.join(sel.chosen, on="doc_id")
        elif variant == "random":
            ids = set(seed_sample(pool["doc_id"].to_list(), k, seed))
            docs = pool.filter(pl.col("doc_id").is_in(ids)).with_columns(weight=pl.lit(1.0))
        elif variant == "embedding":
            scores = embedding_scores(pool)
            order = sorted(range(pool.height), key=lambda i: -scores[i])[:k]
            docs = pool[sorted(order)].with_columns(weight=pl.lit(1.0))
            notes["embedding_similarity_mean"] = round(sum(scores[i] for i in order) / max(1, k), 4)
        else:
            docs = pool.with_columns(weight=pl.lit(1.0))
        text_kind = "refined" if "of refined:" in sel.spec else "raw"
        return VariantDocuments(docs.select("doc_id", "text", "weight"), text_kind, sel.spec, sel.lineage, notes)
    if not refiner_version:
        raise dg.Failure("no refiner version yet: materialize refiner, refined_corpus and refined_pool")
    frame = _refinement_docs(store, catalog, refiner_version)
    notes["documents_refined"] = frame.height
    if variant == "refined":
        docs = frame.filter(pl.col("kept")).select("doc_id", "text")
        notes["kept_by_refiner"] = docs.height
    else:
        docs = frame.select("doc_id", pl.col("raw_text").alias("text"))
        if variant == "rule_filtered":
            reasons = rule_filter(docs["text"].to_list())
            dropped = pl.Series([r for r in reasons if r])
            notes["dropped_by_rules"] = dropped.value_counts(sort=True).rows() if len(dropped) else []
            docs = docs.filter(pl.Series([r is None for r in reasons]))
            notes["kept_by_rules"] = docs.height
    return VariantDocuments(docs.with_columns(weight=pl.lit(1.0)), "refined" if variant == "refined" else "raw",
                            f"refiner:{refiner_version}", CheckpointLineage.of_pool(store, refiner_version), notes)


def _heldout_prose(store: ObjectStore, n: int) -> list[str]:
    """Held-out prose, written to the store once so that every run evaluates on the same texts."""
    if not store.exists(PROSE_KEY):
        store.write_parquet(PROSE_KEY, pl.DataFrame({"text": heldout_prose(downloads_dir(), 64)}))
    texts = store.read_parquet(PROSE_KEY)["text"].to_list()
    step = max(1, len(texts) // max(1, n))
    return texts[::step][:n]


@dg.asset(
    partitions_def=checkpoint_partitions,
    # what it trains on: the target's selection, and (refinement variants) the newest refiner
    # version's pool, one partition (a config refiner_version names another, recorded as metadata)
    deps=[dg.AssetDep(selected_subset, partition_mapping=dg.MultiToSingleDimensionPartitionMapping("target")),
          dg.AssetDep(refined_pool, partition_mapping=dg.LastPartitionMapping()),
          dg.AssetDep(raw_corpus, partition_mapping=dg.AllPartitionMapping())],
    group_name="training",
    kinds={"pytorch", "safetensors"},
    owners=["team:data-platform"],
    **GPU_STEP,
    backfill_policy=MODEL_BACKFILL_POLICY,
    code_version="checkpoint-v1",
    description=(
        "The base model trained, with the same token budget, hyperparameters and seeds, on one "
        "variant's documents (influence / random / embedding / full pool; raw / refined / "
        "rule-filtered text; base = untrained), then evaluated on the target's held-out examples "
        "and on held-out prose. One checkpoint per seed under models/checkpoints/<target>/<variant>/."
    ),
)
def trained_checkpoint(context: dg.AssetExecutionContext, config: CheckpointConfig, store: ObjectStore,
                       catalog: Catalog, engine: ModelEngine, device: DeviceSettings) -> dg.MaterializeResult:
    # A run may hold many variants (MODEL_BACKFILL_POLICY). Each trains its own copy of the base
    # model and evaluates its own checkpoints: nothing to share but the run itself.
    def train(key) -> dict:
        keys = checkpoint_partitions.get_partition_key_from_str(str(key)).keys_by_dimension
        return train_variant(context, config, store, catalog, engine.local(), device, keys["target"],
                             keys["variant"], str(key))

    return materialize_each(context, train)


def train_variant(context: dg.AssetExecutionContext, config: CheckpointConfig, store: ObjectStore, catalog: Catalog,
                  engine: ModelEngine, device: DeviceSettings, target: str, variant: str,
                  partition_key: str) -> PartitionOutcome:
    """One partition of trained_checkpoint: its checkpoints, its catalog rows; returns its metadata
    (with what it came from: refiner version, SFT sets, selection) and its data version."""
    task = _target_task(catalog, target)
    heldout = store.read_parquet(f"{target_prefix(target)}/heldout.parquet")
    if config.eval_examples:
        heldout = heldout.head(config.eval_examples)
    prose = _heldout_prose(store, config.prose_passages)

    def embedding_scores(pool: pl.DataFrame) -> list[float]:
        from prox_assets.core.influence import representation_similarity

        model, tokenizer = engine.load_model(device, config.base_model)
        examples = store.read_parquet(f"{target_prefix(target)}/target.parquet")
        return representation_similarity(model, tokenizer, pool["text"].to_list(),
                                         [p + a for p, a in zip(examples["prompt"], examples["answer"])],
                                         max_len=config.seq_len).tolist()

    def run_eval(checkpoint_dir: Path | None) -> dict[str, float]:
        started = time.monotonic()
        backend = engine.serve(engine.load_model(device, config.base_model, adapter=checkpoint_dir), device)
        metrics = evaluate(backend, task, heldout.to_dicts(), prose, config.max_new_tokens, config.prose_tokens)
        context.log.info(f"evaluated in {time.monotonic() - started:.0f}s: "
                         + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
        return metrics

    tags = lineage(context, partition_key)
    checkpoints, members, evals, per_seed = [], [], [], []
    seeds = [config.seeds[0]] if variant == "base" else config.seeds  # the base model has no seed
    notes: dict = {}
    means: dict[str, list[float]] = {}
    # Only a random draw depends on the seed; other variants' documents are read (and scored or
    # filtered) once for all seeds.
    refiner_version = consumed_refiner_version(context, config.refiner_version)
    shared = None if variant in ("base", "random") else variant_documents(
        store, catalog, context.instance, target, variant, seeds[0], refiner_version, embedding_scores)
    lineage_of = CheckpointLineage()
    for seed in seeds:
        if variant == "base":
            version, docs, spec, text_kind, report, prefix = "base", None, config.base_model, "none", {}, None
            metrics = run_eval(None)
        else:
            chosen = shared or variant_documents(
                store, catalog, context.instance, target, variant, seed, refiner_version, embedding_scores)
            docs, text_kind, spec, notes, lineage_of = (chosen.docs, chosen.text_kind, chosen.spec, chosen.notes,
                                                         chosen.lineage)
            if docs.height == 0:
                raise dg.Failure(f"{variant}: no document to train on ({json.dumps(notes)})")
            train_config = config.train_config(seed)
            version = checkpoint_version(config.base_model, list(zip(docs["doc_id"], docs["weight"])), text_kind,
                                         train_config)
            prefix = _existing_checkpoint(store, catalog, version) or checkpoint_prefix(target, variant, version)

            def train_it(folder, progress):
                context.log.info(f"seed {seed}: training {version} on {docs.height} documents ({spec}, {text_kind})")
                model, tokenizer = engine.load_model(device, config.base_model, train=True)
                return train_lm(model, tokenizer, docs["text"].to_list(), train_config, folder,
                                docs["weight"].to_list(), progress=progress).to_dict()

            report, reused = train_into_store(store, prefix, {
                "target": target, "variant": variant, "seed": seed, "version": version,
                "base_model": config.base_model, "data_spec": spec, "text_kind": text_kind,
                "train_config": train_config.to_dict()}, train_it, context.log.info, log_every=4)
            if reused:
                context.log.info(f"seed {seed}: checkpoint {version} exists ({prefix}): evaluating only")
            metrics = run_eval(Path(fetch_model(store, prefix)))
            checkpoints.append({
                "target": target, "variant": variant, "seed": seed, "version": version,
                "base_model": config.base_model, "data_spec": spec, "text_kind": text_kind, "n_docs": docs.height,
                "train_tokens": report["tokens_seen"], "steps": report["steps"],
                "final_loss": report["losses"][-1] if report["losses"] else None, "seconds": report["seconds"],
                "config": json.dumps(train_config.to_dict()), "path": store.uri(prefix), **tags})
            members.append(docs.select("doc_id", "weight").with_columns(
                version=pl.lit(version), target=pl.lit(target), variant=pl.lit(variant), seed=pl.lit(seed),
                **{k: pl.lit(v) for k, v in tags.items()}))
        evals += [{"target": target, "variant": variant, "seed": seed, "version": version, "task": task,
                   "metric": m, "value": v, "n": len(prose) if m == "prose_perplexity" else heldout.height, **tags}
                  for m, v in metrics.items()]
        for m, v in metrics.items():
            means.setdefault(m, []).append(v)
        per_seed.append((seed, version, docs.height if docs is not None else 0,
                         report.get("tokens_seen", 0), report.get("seconds", 0),
                         *[round(metrics.get(m, float("nan")), 4) for m in METRICS]))

    where = {"target": target, "variant": variant}
    catalog.replace_many([
        ("checkpoints", where, pl.DataFrame(checkpoints) if checkpoints else None),
        ("checkpoint_documents", where, pl.concat(members) if members else None),
        ("checkpoint_evals", where, pl.DataFrame(evals)),
    ])
    versions = [row[1] for row in per_seed]
    return PartitionOutcome(data_version=content_version(*versions) if variant != "base" else "base", metadata={
        "variant": variant,
        "task": task,
        **lineage_of.metadata(),
        "checkpoint_versions": ", ".join(versions),
        "seeds": len(seeds),
        "dagster/row_count": per_seed[0][2],
        "train_tokens_per_seed": per_seed[0][3],
        "path": dg.MetadataValue.path(store.uri(checkpoint_prefix(target, variant, ""))),
        "per_seed": md_table(["seed", "version", "docs", "train tokens", "train s", *METRICS], per_seed),
        **{f"mean_{m}": round(sum(v) / len(v), 4) for m, v in means.items()},
        **{f"data/{k}": (json.dumps(v) if isinstance(v, list) else v) for k, v in notes.items()},
    })


def _existing_checkpoint(store: ObjectStore, catalog: Catalog, version: str) -> str | None:
    """Where a checkpoint of this version already is (trained for another target), if anywhere."""
    for (path,) in catalog.query("SELECT DISTINCT path FROM checkpoints WHERE version = ?", [version]).rows():
        prefix = path[len(store.uri("")):].strip("/") if path.startswith(store.uri("")) else None
        if prefix and store.exists(f"{prefix}/manifest.json"):
            return prefix
    return None


# --- the report ----------------------------------------------------------------------------------
def summarize(evals: pl.DataFrame) -> pl.DataFrame:
    """variant, metric, mean, std (over seeds; 0 with one seed), seeds."""
    return (evals.group_by("variant", "metric")
            .agg(mean=pl.col("value").mean(), std=pl.col("value").std(ddof=1).fill_null(0.0), seeds=pl.len())
            .sort("variant", "metric"))


def comparisons(summary: pl.DataFrame) -> list[tuple]:
    """The contrasts the report exists for: (contrast, metric, difference, better?)."""
    values = {(r["variant"], r["metric"]): r["mean"] for r in summary.iter_rows(named=True)}
    out = []
    for a, b in (("influence", "random"), ("influence", "embedding"), ("influence", "full"),
                 ("refined", "raw"), ("refined", "rule_filtered"), ("rule_filtered", "raw")):
        for metric, higher in METRICS.items():
            if (a, metric) in values and (b, metric) in values:
                diff = values[(a, metric)] - values[(b, metric)]
                out.append((f"{a} − {b}", metric, round(diff, 4), "yes" if (diff > 0) == higher and diff else "no"))
    return out


def plot_report(summary: pl.DataFrame, evals: pl.DataFrame, title: str) -> bytes:
    """One panel per metric: mean over seeds (bar), spread (error bar), each seed (dot)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if m in set(summary["metric"])]
    variants = [v for v in VARIANTS if v in set(summary["variant"])]
    ncols = min(2, len(metrics))  # two panels a row: fits the UI's metadata dialog
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax in axes.flat[len(metrics):]:
        ax.set_visible(False)
    for ax, metric in zip(axes.flat, metrics):
        rows = {r["variant"]: r for r in summary.filter(pl.col("metric") == metric).iter_rows(named=True)}
        xs = [v for v in variants if v in rows]
        ax.bar(range(len(xs)), [rows[v]["mean"] for v in xs], yerr=[rows[v]["std"] for v in xs],
               color=["#999999" if v == "base" else "#4477aa" if v in ("influence", "refined") else "#bbccee"
                      for v in xs], capsize=3)
        for i, v in enumerate(xs):
            seeds = evals.filter((pl.col("metric") == metric) & (pl.col("variant") == v))["value"].to_list()
            ax.scatter([i] * len(seeds), seeds, color="black", s=8, zorder=3)
        low = min(min(rows[v]["mean"] - rows[v]["std"] for v in xs), 0 if METRICS[metric] else float("inf"))
        high = max(rows[v]["mean"] + rows[v]["std"] for v in xs)
        if not METRICS[metric]:  # losses and perplexities: zoom on the differences
            pad = (high - low) * 0.5 or 0.01
            ax.set_ylim(low - pad, high + pad)
        ax.set_xticks(range(len(xs)), xs, rotation=40, ha="right", fontsize=8)
        ax.set_title(f"{metric} ({'higher' if METRICS[metric] else 'lower'} is better)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


@dg.asset(
    partitions_def=target_partitions,
    deps=[dg.AssetDep(trained_checkpoint, partition_mapping=dg.MultiToSingleDimensionPartitionMapping("target"))],
    group_name="training",
    kinds={"parquet", "matplotlib"},
    owners=["team:data-platform"],
    code_version="report-v1",
    description=(
        "Every variant's checkpoints side by side for one target: mean and spread over seeds of "
        "held-out task loss and accuracy (or exact match / F1) and held-out prose perplexity, "
        "the contrasts (influence vs random / embedding / full, refined vs raw / rule-filtered) "
        "and a plot. Written to reports/<target>/."
    ),
)
def evaluation_report(context: dg.AssetExecutionContext, store: ObjectStore, catalog: Catalog) -> dg.MaterializeResult:
    target = context.partition_key
    evals = catalog.query("SELECT variant, seed, version, task, metric, value, n FROM checkpoint_evals "
                          "WHERE target = ?", [target])
    if evals.is_empty():
        raise dg.Failure(f"no evaluated checkpoint for {target}: materialize trained_checkpoint[{target}|…]")
    ckpts = catalog.query("SELECT variant, any_value(n_docs) AS docs, any_value(train_tokens) AS train_tokens "
                          "FROM checkpoints WHERE target = ? GROUP BY variant", [target])
    summary = summarize(evals)
    metrics = [m for m in METRICS if m in set(summary["metric"])]
    cells = {(r["variant"], r["metric"]): f"{r['mean']:.4f} ± {r['std']:.4f}" for r in summary.iter_rows(named=True)}
    seeds = dict(summary.group_by("variant").agg(pl.col("seeds").max()).rows())
    sizes = {r["variant"]: (r["docs"], r["train_tokens"]) for r in ckpts.iter_rows(named=True)}
    present = [v for v in VARIANTS if v in seeds]
    table = [(v, seeds[v], *sizes.get(v, ("-", 0)), *[cells.get((v, m), "-") for m in metrics]) for v in present]
    task = evals["task"][0]
    png = plot_report(summary, evals, f"{target} ({task}): mean ± std over seeds")
    uri = store.write_parquet(f"reports/{target}/evaluation.parquet", summary)
    png_uri = store.write_bytes(f"reports/{target}/evaluation.png", png)
    missing = [v for v in VARIANTS if v not in seeds]
    return dg.MaterializeResult(metadata={
        "task": task,
        "variants": len(present),
        "missing_variants": ", ".join(missing) or "none",
        "held_out_examples": int(evals.filter(pl.col("metric") == "heldout_loss")["n"].max() or 0),
        "results": md_table(["variant", "seeds", "docs", "train tokens", *metrics], table),
        "contrasts": md_table(["contrast", "metric", "difference", "better"], comparisons(summary)),
        "plot": dg.MetadataValue.md(f"![evaluation](data:image/png;base64,{base64.b64encode(png).decode()})"),
        "plot_path": dg.MetadataValue.path(png_uri),
        "path": dg.MetadataValue.path(uri),
    })
