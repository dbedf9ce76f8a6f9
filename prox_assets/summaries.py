"""What the catalog holds after a run, as lines for the terminal (``prox ingest``, ``prox demo``).

Each summary reads named queries; where a step consumes a version (the SFT set of a level, the
refiner pair), it is the one Dagster recorded, as the assets read it (``prox_assets.lineage``).
"""

from __future__ import annotations

from prox_resources.catalog import CatalogCore


def ingest_summary(catalog: CatalogCore) -> list[str]:
    """Shards read, ingested and quarantined, and the quarantine's reasons."""
    counts = catalog.named_query("ingestion_totals").row(0, named=True)
    lines = [
        f"catalog: {counts['shards']} shards, read {counts['n_read']} = ingested {counts['n_ingested']}"
        f" + quarantined {counts['n_quarantined']}"
    ]
    for reason, n in catalog.named_query("quarantine_reasons").rows():
        lines.append(f"  quarantined {n:>5}  {reason}")
    return lines


def synthesis_summary(catalog: CatalogCore, instance) -> list[str]:
    """The seed scores, and the SFT set of each level's latest sft_programs materialization (what
    the refiners read)."""
    from prox_assets.lineage import recorded

    scores = catalog.named_query("seed_score_totals").row(0, named=True)
    lines = [
        f"seed_scores: {scores['n']} documents in {scores['shards']} shards, mean expected edu "
        f"{scores['edu'] or 0:.2f}, format {scores['fmt'] or 0:.2f}, keep ratio {scores['keep'] or 0:.2f}"
    ]
    current = [
        (level, found.value("sft_version"))
        for level in ("chunk", "doc")
        if (found := recorded(instance, "sft_programs", level))
    ]
    sets = [
        catalog.named_query("sft_set", level=level, sft_version=version).rows()[0]
        for level, version in current
    ]
    labels = {
        (level, label): n
        for level, version in current
        for label, n in catalog.named_query(
            "sft_label_counts", level=level, sft_version=version
        ).rows()
    }
    for level, version, n_train, n_val, n_rejected in sets:
        mix = ", ".join(f"{lab}={n}" for (lvl, lab), n in sorted(labels.items()) if lvl == level)
        lines.append(
            f"sft_programs[{level}] {version}: train {n_train}, val {n_val}, rejected {n_rejected}; {mix}"
        )
    return lines


def refiner_summary(catalog: CatalogCore, instance) -> list[str]:
    """The evaluations of the refiners of the newest refiner version (Dagster's, as the assets
    read it); none before there is one."""
    from prox_assets.refinement import latest_refiner_version, refiner_pair

    version = latest_refiner_version(instance)
    if not version:
        return []
    pair = refiner_pair(catalog, version)
    rows = catalog.named_query(
        "refiner_pair_evals", doc_version=pair.doc, chunk_version=pair.chunk
    ).rows()
    return [
        f"refiner[{level}] {version} {dataset:>19} {metric:>14} {model:>16} = {value:.3f}"
        for level, version, model, dataset, metric, value in rows
    ]


def refined_summary(catalog: CatalogCore) -> list[str]:
    """Per refiner version: documents kept, dropped and errored, and the characters kept."""
    return [
        f"refined_corpus[{version}]: {n} documents = kept {kept} + dropped {dropped} + errored {errored}; "
        f"{chars or 0:.1%} of characters kept"
        for version, n, kept, dropped, errored, chars in catalog.named_query(
            "refinement_totals"
        ).rows()
    ]


def evaluation_summary(catalog: CatalogCore) -> list[str]:
    """Per target, metric and variant: the mean and spread over seeds."""
    return [
        f"evaluation[{target}] {metric:>16} {variant:>14} = {mean:.4f} ± {std:.4f} (seeds {n})"
        for target, variant, metric, mean, std, n in catalog.named_query(
            "evaluation_summary"
        ).rows()
    ]
