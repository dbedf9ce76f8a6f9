"""``prox demo`` as data: every asset of the graph, in data-flow order, as a list of steps
(asset, partitions, config) that ``prox_assets.runs.run_plan`` executes one after the other.

A step's config holds only what the demo sets differently from the asset's own Config class (the
CPU budgets below); everything else is the asset's default, so a default lives in one place. The
``prox demo`` options are ``DemoBudget``'s fields, with its defaults; an option left unset (None)
is the asset's own default. This module imports no Dagster at import time (the command line
builds its options from it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prox_assets.runs import Step

# Refiner budgets: `demo` fits the demo's ~20 minutes on a 2-core CPU; `cpu-large` is about 45
# minutes of refiner training and a larger held-out evaluation on the same machine (README).
BUDGETS: dict[str, dict[str, dict[str, Any]]] = {
    "demo": {
        "sft": {},  # sft_programs' own defaults (12 chunk documents per shard)
        "steps": {"doc": 80, "chunk": 64},
        "refiner": {
            "quality_pages": 4,
            "quality_news": 2,
            "quality_clean": 4,
            "quality_doc_pages": 12,
            "quality_max_chars": 5000,
            "eval_examples": 8,
        },
    },
    "cpu-large": {
        "sft": {"chunk_docs_per_shard": 60},
        "steps": {"doc": 120, "chunk": 450},
        "refiner": {
            "quality_pages": 24,
            "quality_news": 8,
            "quality_clean": 12,
            "quality_doc_pages": 40,
            "quality_max_chars": 10000,
        },
    },
}

# The demo's targets: (partition key, task).
TARGETS = (("gsm8k", "gsm8k"), ("arc-challenge", "arc_challenge"))


def config_default(config_class: type, name: str) -> Any:
    """The default of a field of an asset's Config class (the one place it is written)."""
    return config_class.model_fields[name].default


@dataclass(frozen=True)
class DemoBudget:
    """What ``prox demo`` lets a user change: each field an option of the command, with its
    help (``metadata``). None: the asset's own default (its Config class)."""

    budget: str = field(
        default="demo",
        metadata={
            "help": "Refiner budget: SFT documents, training steps and held-out evaluation size.",
            "choices": tuple(BUDGETS),
        },
    )
    seeds_per_shard: int | None = field(
        default=None,
        metadata={"help": "Seed documents scored per shard (default: seed_scores' own)."},
    )
    chunk_docs_per_shard: int | None = field(
        default=None, metadata={"help": "Documents per shard for chunk SFT (overrides --budget)."}
    )
    annotator: str | None = field(
        default=None,
        metadata={
            "help": "Chunk labels for pages without gold labels (default: sft_programs' own).",
            "choices": ("rules", "llm", "both"),
        },
    )
    refiner_steps: int | None = field(
        default=None,
        metadata={"help": "Fine-tuning steps per refiner level (overrides --budget)."},
    )
    refine_docs: int = field(default=4, metadata={"help": "Documents refined per shard (0 = all)."})
    refine_max_chars: int = field(
        default=4000,
        metadata={"help": "Sample refined documents among those this short (0 = any length)."},
    )
    checkpoint_targets: str = field(
        default="arc-challenge",
        metadata={
            "help": "Comma-separated targets (gsm8k, arc-challenge) to train and evaluate every "
            "variant for; '' skips training."
        },
    )
    train_steps: int = field(
        default=6,
        metadata={
            "help": "Training steps per checkpoint (x 4 windows x 128 tokens: the token budget "
            "of every variant)."
        },
    )
    eval_examples: int = field(
        default=32, metadata={"help": "Held-out target examples per evaluation."}
    )

    @property
    def refiner_level_steps(self) -> dict[str, int]:
        return {
            level: self.refiner_steps or n for level, n in BUDGETS[self.budget]["steps"].items()
        }

    @property
    def trained_targets(self) -> list[str]:
        return [t.strip() for t in self.checkpoint_targets.split(",") if t.strip()]


def _after_refiners(keys):
    """Partitions that exist only once a refiner version does (none before: the step is skipped)."""
    return lambda state: keys(state) if state.refiner_version else []


def demo_plan(b: DemoBudget) -> list[Step]:
    """Every asset of the graph, in data-flow order, at the demo's budgets: raw_corpus for the
    shards the demo uploaded, then everything downstream."""
    from prox_assets.core.variants import VARIANTS
    from prox_assets.runs import Step
    from prox_assets.scoring import SeedScoresConfig

    budget = BUDGETS[b.budget]
    sft: dict[str, Any] = dict(budget["sft"])
    if b.annotator is not None:
        sft["annotator"] = b.annotator
    if b.chunk_docs_per_shard is not None:
        sft["chunk_docs_per_shard"] = b.chunk_docs_per_shard
    scores = {} if b.seeds_per_shard is None else {"seeds_per_shard": b.seeds_per_shard}
    seeds = scores.get("seeds_per_shard", config_default(SeedScoresConfig, "seeds_per_shard"))
    steps = b.refiner_level_steps
    targets = [name for name, _ in TARGETS]
    trained = b.trained_targets
    return [
        Step("raw_corpus", lambda s: s.uploaded),
        Step(
            "seed_scores",
            lambda s: s.shards,
            scores,
            title=f"seed_scores ({seeds} seeds per shard through the model)",
        ),
        Step("sft_programs", ["doc", "chunk"], sft, title="sft_programs"),
        *(
            Step(
                "refiner",
                [level],
                {**budget["refiner"], "max_steps": steps[level]},
                title=(
                    f"refiner (LoRA, {steps['doc']} + {steps['chunk']} steps on this machine, "
                    f"budget {b.budget})"
                    if level == "doc"
                    else ""
                ),
            )
            for level in ("doc", "chunk")
        ),
        Step(
            "refined_corpus",
            _after_refiners(lambda s: [f"{s.refiner_version}|{shard}" for shard in s.shards]),
            {"max_docs": b.refine_docs, "sample_max_chars": b.refine_max_chars},
            title=f"refined_corpus (refiner {{refiner_version}}, {b.refine_docs} documents per shard)",
        ),
        Step("refined_pool", _after_refiners(lambda s: [s.refiner_version])),
        *(
            Step(
                "target_set",
                _after_refiners(lambda s, name=name: [name]),
                {"task": task, "n_heldout": 100},
                title=(
                    "target_set, landmark_influence, selected_subset (pool: the refined corpus)"
                    if i == 0
                    else ""
                ),
                register=True,
            )
            for i, (name, task) in enumerate(TARGETS)
        ),
        Step(
            "landmark_influence",
            _after_refiners(lambda s: targets),
            {"landmarks": 8, "exact_holdout": 8, "max_len": 96, "warmup_steps": 8},
        ),
        Step("selected_subset", _after_refiners(lambda s: targets)),
        Step(
            "trained_checkpoint",
            _after_refiners(lambda s: [f"{t}|{v}" for t in trained for v in VARIANTS]),
            {"max_steps": b.train_steps, "eval_examples": b.eval_examples, "prose_passages": 12},
            title=(
                f"trained_checkpoint ({len(VARIANTS)} variants x 2 seeds, {b.train_steps} steps "
                "each), evaluation_report"
            ),
        ),
        Step("evaluation_report", _after_refiners(lambda s: trained)),
    ]


def run_demo(b: DemoBudget, files, echo=print) -> dict[str, str]:
    """Upload ``files`` to incoming/ and register their shards, then run ``demo_plan``:
    asset[key] -> outcome."""
    from prox_assets.ingest import ingest_paths
    from prox_assets.runs import PlanState, run_plan

    echo("== raw_corpus")
    uploaded = list(ingest_paths(files, run=False, echo=echo))
    return run_plan(demo_plan(b), PlanState(uploaded=uploaded), echo=echo)
