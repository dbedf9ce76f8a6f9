"""Where things live in the object store: every key a stage reads or writes is built here.

The README's "Where things live", as code. Keys are relative to the store root (``PROX_STORE``,
default ``$PROX_HOME/store``: a local folder or ``s3://bucket/prefix``)::

    incoming/<file>                          raw input files; one file = one shard partition
    raw/<shard>/<run_id>.parquet             raw_corpus: one file per ingestion; the catalog's
                                             ingestions.raw_path names the current one
    scores/<shard>.parquet                   seed_scores: both rubrics' scores, critiques, keep
    sft/<level>/<version>/{train,val,rejected}.parquet   sft_programs
    models/refiner/<level>/<version>/        refiner checkpoints (safetensors + manifest.json)
    refined/<refiner_version>/<shard>.parquet   refined_corpus (its batches under
                                             refined/<refiner_version>/.parts/<shard>/ until done)
    pools/refined/<refiner_version>.json     refined_pool: the shard files, counts, refiners
    targets/<target>/{target,heldout}.parquet   target_set: the examples (prox target add)
    influence/<target>/<version>/{scores,landmarks}.parquet   landmark_influence
    selections/<target>/<version>.parquet    selected_subset
    models/checkpoints/<target>/<variant>/<version>/   trained_checkpoint (adapter + manifest.json)
    eval/heldout_prose.parquet               the held-out prose every checkpoint is measured on
    reports/<target>/evaluation.{parquet,png}   evaluation_report
    catalog/                                 a DuckLake catalog's Parquet files (PROX_CATALOG_DATA;
                                             ``prox_resources.settings.catalog_data_path``)

A model folder is complete once its ``manifest.json`` is written (``prox_resources.models``).
Shards, targets, levels and versions are names (``core/names.py``): no ``/``, no ``..``, so a key
built from them stays in its folder. This module imports no Dagster; what reads the catalog to
find a key (``raw_paths``) runs the catalog's named queries.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Literal

from prox_assets.core.names import validate_name

if TYPE_CHECKING:
    from prox_resources.catalog import CatalogCore
    from prox_resources.store import ObjectStore

INCOMING = "incoming/"
SCORES = "scores/"
HELDOUT_PROSE_KEY = "eval/heldout_prose.parquet"
_PARTS = ".parts"


# --- raw_corpus -------------------------------------------------------------------------------
def incoming_key(file_name: str) -> str:
    """Where ``prox ingest`` puts an input file (its shard is named after it)."""
    return INCOMING + file_name


def raw_prefix(shard: str) -> str:
    """The folder of ``shard``'s raw files (one per ingestion)."""
    return f"raw/{shard}/"


def raw_run_key(shard: str, run_id: str) -> str:
    """Each ingestion writes its own file; the catalog's ``ingestions.raw_path`` names the current
    one, so a run killed between the write and the catalog commit leaves only an orphan that the
    next ingestion of the shard deletes, never a file that looks current."""
    return f"{raw_prefix(shard)}{run_id}.parquet"


def legacy_raw_key(shard: str) -> str:
    """The old one-file layout of a shard's raw data (deleted when the shard is ingested again)."""
    return f"raw/{shard}.parquet"


def raw_paths(catalog: CatalogCore, shards: list[str] | None = None) -> dict[str, str]:
    """shard -> store key of its current raw file, for every ingested shard (or ``shards``)."""
    paths = dict(catalog.named_query("current_raw_files").rows())
    return paths if shards is None else {s: paths[s] for s in shards if s in paths}


# --- seed_scores, sft_programs, refiner -------------------------------------------------------
def scores_key(shard: str) -> str:
    return f"{SCORES}{shard}.parquet"


def sft_prefix(level: str, version: str) -> str:
    return f"sft/{level}/{version}"


def sft_split_key(level: str, version: str, split: str) -> str:
    """``split``: train, val (the accepted examples) or rejected."""
    return f"{sft_prefix(level, version)}/{split}.parquet"


def refiner_prefix(level: str, version: str) -> str:
    return f"models/refiner/{level}/{version}"


# --- refined_corpus, refined_pool -------------------------------------------------------------
def refined_prefix(version: str) -> str:
    return f"refined/{version}/"


def refined_key(version: str, shard: str) -> str:
    return f"{refined_prefix(version)}{shard}.parquet"


def refined_parts_prefix(version: str, shard: str) -> str:
    """The batches of a refined shard still being written (a later attempt resumes from them)."""
    return f"{refined_prefix(version)}{_PARTS}/{shard}"


def refined_part_key(version: str, shard: str, batch: int, n_batches: int, inputs: str) -> str:
    """One batch's rows; ``inputs`` is the digest of what made them (``inputs_digest``), so a
    resumed run reuses a part only when its documents and settings are the same."""
    return (
        f"{refined_parts_prefix(version, shard)}/"
        f"part-{batch:05d}-of-{n_batches:05d}-{inputs}.parquet"
    )


def inputs_digest(doc_ids: list[str], settings: str) -> str:
    """A short digest of a batch's document ids (content hashes) and the settings that refine it."""
    h = hashlib.sha256(settings.encode())
    for doc_id in doc_ids:
        h.update(b"\0" + doc_id.encode())
    return h.hexdigest()[:16]


def refined_shard_keys(store: ObjectStore, version: str) -> list[str]:
    """The finished shard files of a refiner version (not the part files of unfinished runs)."""
    return [k for k in store.list(refined_prefix(version)) if f"/{_PARTS}/" not in k]


def pool_manifest_key(version: str) -> str:
    return f"pools/refined/{version}.json"


# --- targets, landmark_influence, selected_subset ---------------------------------------------
def target_prefix(target: str) -> str:
    """``targets/<target>``; a target name that could leave that folder is refused (InvalidName)."""
    return f"targets/{validate_name(target, 'target name')}"


def target_key(target: str, split: Literal["target", "heldout"]) -> str:
    """The target examples influence is computed against, or those checkpoints are judged on."""
    return f"{target_prefix(target)}/{split}.parquet"


def influence_prefix(target: str, version: str) -> str:
    return f"influence/{target}/{version}"


def influence_scores_key(target: str, version: str) -> str:
    return f"{influence_prefix(target, version)}/scores.parquet"


def influence_landmarks_key(target: str, version: str) -> str:
    return f"{influence_prefix(target, version)}/landmarks.parquet"


def selection_key(target: str, version: str) -> str:
    """The subset chosen from influence scores ``version`` of ``target``."""
    return f"selections/{target}/{version}.parquet"


# --- trained_checkpoint, evaluation_report ----------------------------------------------------
def checkpoint_prefix(target: str, variant: str, version: str) -> str:
    return f"models/checkpoints/{target}/{variant}/{version}"


def evaluation_report_key(target: str, suffix: Literal["parquet", "png"]) -> str:
    return f"reports/{target}/evaluation.{suffix}"
