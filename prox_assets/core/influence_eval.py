"""How good influence scores are, measured (no Dagster): the acceptance test and
``prox bench influence`` both run ``influence_study``.

On a pool whose samples carry a domain label and a target from one of those domains it reports
- whether the exact scores mean something: domain AUROC (the target's domain ranked first), the
  target domain's share of the top quarter, and agreement across warm-up seeds;
- how well landmark estimates track the exact scores, per embedding and landmark count, with the
  spread over landmark draws: Spearman, Pearson, top-10% recall and AUROC of the estimates on the
  non-landmarks, and the same for a control whose embeddings are shuffled across samples (it
  carries no information, so a metric that cannot tell it from the real thing proves nothing);
- the RDS-style embedding baseline (similarity of mean-pooled hidden states) on the same metrics;
- wall-clock of each phase, and the landmark method's cost against exact scoring of the pool.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from prox_assets.core.influence import (
    AdamState,
    InfluenceConfig,
    all_target_gradients,
    auroc,
    choose_landmarks,
    embed_texts,
    exact_scores_of,
    krr_propagate,
    mean_hidden_states,
    pearson,
    spearman,
    topk_recall,
    warm_up_on_pool,
)
from prox_assets.core.training import mean_std, seed_summary

if TYPE_CHECKING:
    from prox_assets.core.training_loop import TrainConfig


def exact_pool_scores(
    model,
    tokenizer,
    texts: Sequence[str],
    prompts: Sequence[str],
    answers: Sequence[str],
    config: InfluenceConfig,
    log: Callable[[str], None] = print,
    warmup_texts: Sequence[str] | None = None,
) -> tuple[torch.Tensor, object, AdamState, dict[str, float]]:
    """Warm up a copy of ``model`` (seed ``config.seed``) on ``warmup_texts`` (default: the
    pool), then exact scores (n, m) of every sample of ``texts``. Returns the scores, the
    warmed-up copy, its Adam state and timings."""
    work = copy.deepcopy(model)
    adam = warm_up_on_pool(work, tokenizer, warmup_texts or texts, config, log)
    timings = {"warmup_s": adam.seconds}
    t = time.perf_counter()
    targets = all_target_gradients(work, tokenizer, prompts, answers, config)
    timings["target_grads_s"] = time.perf_counter() - t
    t = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if (done - 1) // config.batch_size % 10 == 0:
            log(f"exact scores {done}/{total} ({time.perf_counter() - t:.0f}s)")

    scores = exact_scores_of(work, tokenizer, texts, targets, adam, config, progress)
    timings["exact_s"] = time.perf_counter() - t
    return scores, work, adam, timings


EMBEDDINGS = ("jvp-mean", "jvp-last", "hidden-mean")


def embed_pool(
    model, tokenizer, texts: Sequence[str], config: InfluenceConfig, kind: str
) -> torch.Tensor:
    """Embeddings the landmarks propagate through: ``jvp-mean`` / ``jvp-last`` (JVP of the first
    blocks, pooled over tokens or the last token) or ``hidden-mean`` (mean-pooled last hidden
    states, the RDS embedding used as the kernel space)."""
    if kind not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {kind!r}; known: {', '.join(EMBEDDINGS)}")
    if kind == "hidden-mean":
        return mean_hidden_states(
            model, tokenizer, texts, config.max_len, config.batch_size, config.dtype
        )
    return embed_texts(model, tokenizer, texts, config, pooling=kind.split("-", 1)[1])


def landmark_accuracy(
    emb: torch.Tensor,
    exact: torch.Tensor,
    positive: Sequence[bool],
    count: int,
    draws: int,
    ridge: float,
    centre: bool,
    method: str = "uniform",
    shuffle: bool = False,
) -> dict:
    """Estimates from ``count`` landmarks (``draws`` seeded draws) against the exact mean scores
    on the non-landmarks: mean and std over draws of each metric. ``shuffle``: the control, whose
    embeddings are permuted across samples (a fresh permutation per draw)."""
    n = len(exact)
    metrics: dict[str, list[float]] = {
        "spearman": [],
        "pearson": [],
        "top10pct_recall": [],
        "domain_auroc": [],
        "top_quarter_auroc": [],
    }
    for draw in range(draws):
        if shuffle:
            emb = emb[torch.randperm(n, generator=torch.Generator().manual_seed(1000 + draw))]
        marks = choose_landmarks(n, count, seed=draw, embeddings=emb, method=method)
        est = krr_propagate(emb, marks, exact[marks], ridge, centre=centre).flatten()
        taken = set(marks)
        rest = [i for i in range(n) if i not in taken]
        e, x = est[rest], exact[rest]
        quarter = x >= torch.quantile(x, 0.75)
        metrics["spearman"].append(spearman(e, x))
        metrics["pearson"].append(pearson(e, x))
        metrics["top10pct_recall"].append(topk_recall(e, x, max(1, len(rest) // 10)))
        metrics["domain_auroc"].append(auroc(e, [positive[i] for i in rest]))
        metrics["top_quarter_auroc"].append(auroc(e, quarter.tolist()))
    return {name: mean_std(v) for name, v in metrics.items()}


def influence_study(
    model,
    tokenizer,
    texts: Sequence[str],
    domains: Sequence[str],
    target_domain: str,
    prompts: Sequence[str],
    answers: Sequence[str],
    config: InfluenceConfig,
    landmark_counts: Sequence[int] = (24,),
    draws: int = 5,
    embeddings: Sequence[str] = ("jvp-mean", "jvp-last", "hidden-mean"),
    stability_seeds: Sequence[int] = (1,),
    stability_samples: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    domains = list(domains)
    positive = [d == target_domain for d in domains]
    n = len(texts)
    log(f"pool {n} samples ({sum(positive)} {target_domain}), {len(prompts)} target examples")
    scores, warm, adam, timings = exact_pool_scores(
        model, tokenizer, texts, prompts, answers, config, log
    )
    exact = scores.mean(1)
    top_quarter = torch.topk(exact, max(1, n // 4)).indices.tolist()
    per_domain = {
        d: round(float(exact[[i for i in range(n) if domains[i] == d]].mean()), 6)
        for d in sorted(set(domains))
    }
    report: dict = {
        "pool": n,
        "target_examples": len(prompts),
        "max_len_tokens": config.max_len,
        "target_domain": target_domain,
        "warmup": {
            "steps": config.warmup_steps,
            "lr": config.warmup_lr,
            **{k: float(f"{v:.4g}") for k, v in adam.factor_spread().items()},
            "loss_first": round(adam.losses[0], 4) if adam.losses else None,
            "loss_last": round(adam.losses[-1], 4) if adam.losses else None,
        },
        "exact": {
            "domain_auroc": round(auroc(exact, positive), 4),
            "target_domain_share_of_top_quarter": round(
                sum(positive[i] for i in top_quarter) / len(top_quarter), 4
            ),
            "mean_score_per_domain": per_domain,
            "per_target_example_domain_auroc": mean_std(
                [auroc(scores[:, j], positive) for j in range(scores.shape[1])]
            ),
        },
    }

    # stability: the same exact scores from other warm-up seeds (on a subset when asked)
    subset = (
        list(range(n))
        if not stability_samples or stability_samples >= n
        else sorted(
            torch.randperm(n, generator=torch.Generator().manual_seed(7))[
                :stability_samples
            ].tolist()
        )
    )
    stability = []
    for seed in stability_seeds:
        # only the seed changes: the same warm-up pool, a different draw of its batches
        other, _, _, t_other = exact_pool_scores(
            model,
            tokenizer,
            [texts[i] for i in subset],
            prompts,
            answers,
            replace(config, seed=seed),
            log,
            warmup_texts=texts,
        )
        stability.append(
            {
                "seed": seed,
                "samples": len(subset),
                "spearman_vs_seed_" + str(config.seed): round(
                    spearman(other.mean(1), exact[subset]), 4
                ),
                "seconds": round(sum(t_other.values()), 1),
            }
        )
    report["exact"]["warmup_seed_stability"] = stability

    # landmark estimates per embedding, and the shuffled control
    report["landmarks"] = []
    embed_s, embedded = {}, {}
    for kind in embeddings:
        t = time.perf_counter()
        emb = embedded[kind] = embed_pool(warm, tokenizer, texts, config, kind)
        embed_s[kind] = time.perf_counter() - t
        for count in landmark_counts:
            if count >= n:
                continue
            row = {
                "embedding": kind,
                "landmarks": count,
                "draws": draws,
                **landmark_accuracy(
                    emb,
                    exact,
                    positive,
                    count,
                    draws,
                    config.ridge,
                    config.centre,
                    config.landmark_method,
                ),
            }
            control = landmark_accuracy(
                emb,
                exact,
                positive,
                count,
                max(draws, 20),
                config.ridge,
                config.centre,
                config.landmark_method,
                shuffle=True,
            )  # KRR is cheap: more draws
            row["shuffled_control"] = {k: control[k] for k in ("spearman", "domain_auroc")}
            per_sample_exact = timings["exact_s"] / n
            cost = embed_s[kind] + per_sample_exact * count
            row["seconds"] = round(cost, 1)
            row["cheaper_than_exact"] = round((timings["exact_s"]) / cost, 2)
            report["landmarks"].append(row)
            log(
                f"{kind} L={count}: spearman {row['spearman']['mean']:.3f} ± {row['spearman']['std']:.3f}, "
                f"domain AUROC {row['domain_auroc']['mean']:.3f}, control {row['shuffled_control']['spearman']['mean']:.3f}"
            )

    t = (
        time.perf_counter()
    )  # RDS-style baseline: similarity to the target in mean-pooled hidden states
    pool_h = embedded.get("hidden-mean")
    if pool_h is None:
        pool_h = embed_pool(warm, tokenizer, texts, config, "hidden-mean")
    target_h = embed_pool(
        warm, tokenizer, [p + a for p, a in zip(prompts, answers)], config, "hidden-mean"
    )
    rds = (pool_h @ target_h.T).mean(1)
    report["embedding_baseline"] = {
        "spearman_vs_exact": round(spearman(rds, exact), 4),
        "pearson_vs_exact": round(pearson(rds, exact), 4),
        "domain_auroc": round(auroc(rds, positive), 4),
        "seconds": round(time.perf_counter() - t + embed_s.get("hidden-mean", 0), 1),
    }
    report["timings_s"] = {
        **{k: round(v, 1) for k, v in timings.items()},
        "exact_per_sample_s": round(timings["exact_s"] / n, 3),
        **{f"embed_{k}_s": round(v, 1) for k, v in embed_s.items()},
    }
    report["exact_scores"] = exact.tolist()
    return report


def selection_training_evidence(
    load,
    serve,
    texts: Sequence[str],
    selected: Sequence[int],
    heldout_prompts: Sequence[str],
    heldout_answers: Sequence[str],
    train: TrainConfig,
    seeds: Sequence[int] = (0, 1),
    log: Callable[[str], None] = print,
) -> dict:
    """Does the selection help? The base model trained under one token budget on the selected
    samples and on a random subset of the same size (a new draw per seed), each evaluated by
    the held-out target loss (NLL per answer token); the untrained model is the reference row.
    Reports mean and std over seeds per variant and whether influence beats random by more than
    the sum of both spreads. ``load(checkpoint=None, train=False)``: the base model (with a
    checkpoint on top) as (model, tokenizer); ``serve(loaded)``: an engine backend over it."""
    import random
    import tempfile
    from dataclasses import replace as _replace

    from prox_assets.core.evaluation import heldout_loss
    from prox_assets.core.training import train_lm

    if not train.max_steps:
        raise ValueError("the evidence compares checkpoints under one token budget: set max_steps")

    def evaluate(checkpoint) -> float:
        return heldout_loss(serve(load(checkpoint)), heldout_prompts, heldout_answers)

    rows: dict[str, list[float]] = {"base": [evaluate(None)]}
    seconds: dict[str, float] = {}
    for seed in seeds:
        config = _replace(train, seed=seed)
        randoms = random.Random(1000 + seed).sample(range(len(texts)), len(selected))
        for variant, subset in (("influence", list(selected)), ("random", randoms)):
            t = time.perf_counter()
            with tempfile.TemporaryDirectory() as out:
                model, tokenizer = load(None, train=True)
                train_lm(model, tokenizer, [texts[i] for i in subset], config, out)
                loss = evaluate(out)
            seconds[variant] = seconds.get(variant, 0.0) + time.perf_counter() - t
            rows.setdefault(variant, []).append(loss)
            log(f"seed {seed} {variant}: held-out loss {loss:.4f} ({time.perf_counter() - t:.0f}s)")
    summary = seed_summary(rows)
    gap = summary["random"]["mean"] - summary["influence"]["mean"]
    spread = summary["random"]["std"] + summary["influence"]["std"]
    return {
        "tokens_per_checkpoint": train.max_steps * train.batch_size * train.max_seq_len,
        "selected": len(selected),
        "pool": len(texts),
        "seeds": list(seeds),
        "heldout_examples": len(heldout_prompts),
        "heldout_loss": summary,
        "influence_minus_random": round(-gap, 4),
        "seed_spread": round(spread, 4),
        "influence_beats_random_beyond_spread": gap > spread,
        "train_seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def selection_experiment(
    load,
    serve,
    texts: Sequence[str],
    domains: Sequence[str],
    prompts: Sequence[str],
    answers: Sequence[str],
    heldout_prompts: Sequence[str],
    heldout_answers: Sequence[str],
    config: InfluenceConfig,
    train: TrainConfig,
    budget_fraction: float = 0.25,
    seeds: Sequence[int] = (0, 1),
    log: Callable[[str], None] = print,
) -> dict:
    """The method end to end as ``landmark_influence`` + ``selected_subset`` run it (landmark
    estimates, round robin over target examples), then ``selection_training_evidence`` (``load``,
    ``serve``: as there)."""
    from prox_assets.core.influence import compute_influence, round_robin

    model, tokenizer = load(None)
    result = compute_influence(model, tokenizer, texts, prompts, answers, config, log=log)
    k = max(1, round(budget_fraction * len(texts)))
    selected = round_robin(result.scores, k, seed=config.seed)
    composition = {d: sum(domains[i] == d for i in selected) for d in sorted(set(domains))}
    log(f"selected {k} of {len(texts)}: {composition}")
    del model
    evidence = selection_training_evidence(
        load, serve, texts, selected, heldout_prompts, heldout_answers, train, seeds, log
    )
    return {
        "selected_domains": composition,
        "pool_domains": {d: domains.count(d) for d in sorted(set(domains))},
        "influence_accuracy": {k: round(v, 4) for k, v in result.accuracy.items()},
        "influence_timings_s": {k: round(v, 1) for k, v in result.timings.items()},
        **evidence,
    }
