"""Continued pre-training of a base model on a set of documents, under a fixed token budget
(docs/methods.md#the-evidence-checkpoint-variants).

Every variant of a comparison (selected subset, random subset, whole pool, raw or refined text)
trains the same model for the same number of steps on full windows of the same length, so each
sees exactly the same number of tokens; a small set is repeated, a large one is cut short. Documents are joined
with the end-of-text token and cut into ``max_seq_len`` windows (standard packing); a document's
weight is how many times it is repeated in the stream (weights come from the selection).

A checkpoint is a LoRA adapter (``adapter_model.safetensors`` + ``adapter_config.json``, a
few MB) on top of the base model it names, or the whole model with ``method='full'``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from prox_assets.core.training_loop import (
    TrainConfig,
    TrainReport,
    attach_adapters,
    pad_id,
    run_training,
)

MIN_WINDOW_TOKENS = 16  # a shorter tail window is dropped: mostly padding, little signal


class TrainedLM(NamedTuple):
    """What ``train_lm`` leaves: its report, and the trained model in memory, in eval mode, as
    loading its checkpoint onto the base model gives it (LoRA merged into the fp32 base weights:
    the same tensors, so it is evaluated without reading the base model and adapter again)."""

    report: TrainReport
    model: Any


def checkpoint_version(
    base_model: str, documents: Sequence[tuple[str, float]], text_kind: str, config: TrainConfig
) -> str:
    """Base model, the exact training documents (doc_id, weight), raw or refined text, and the
    hyperparameters including the seed, hashed: equal inputs give the same checkpoint."""
    payload = json.dumps(
        {
            "base": base_model,
            "docs": sorted((d, round(w, 6)) for d, w in documents),
            "text": text_kind,
            "train": config.to_dict(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


MAX_REPEATS = 8  # the most times one document is repeated, however skewed its weight


def repeat_counts(weights: Sequence[float]) -> list[int]:
    """Integer repetitions proportional to ``weights`` with the smallest weight repeated once
    (uniform weights: each document once), and none more than ``MAX_REPEATS`` times: weights
    below ``1/MAX_REPEATS`` of the largest count once. Simplex weights can span many orders of
    magnitude (one at 1e-9 of another), which unbounded would repeat a document 1e9 times."""
    positive = [w for w in weights if w > 0 and math.isfinite(w)]
    if not positive:
        return [0] * len(weights)
    low = max(min(positive), max(positive) / MAX_REPEATS)
    return [
        min(MAX_REPEATS, max(1, round(w / low))) if w > 0 and math.isfinite(w) else 0
        for w in weights
    ]


def pack_documents(
    tokenizer,
    texts: Sequence[str],
    seq_len: int,
    weights: Sequence[float] | None = None,
    seed: int = 0,
    n_windows: int | None = None,
) -> list[list[int]]:
    """Token windows of ``seq_len`` from the documents (shuffled by ``seed``, repeated by
    weight) joined by the end-of-text token. With ``n_windows``, exactly that many full windows:
    the documents are passed over again (reshuffled) until the budget is filled, so every
    variant of a comparison trains on the same number of tokens."""
    counts = repeat_counts(weights) if weights is not None else [1] * len(texts)
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    rng = random.Random(seed)
    stream: list[int] = []
    while True:
        order = [
            i for i, c in enumerate(counts) for _ in range(c) if ids[i]
        ]  # an empty text adds nothing
        rng.shuffle(order)
        before = len(stream)
        for i in order:
            stream += ids[i] + eos
        if n_windows is None or len(stream) >= n_windows * seq_len or len(stream) == before:
            break
    if n_windows is not None:
        if len(stream) < n_windows * seq_len:
            return []
        return [stream[k * seq_len : (k + 1) * seq_len] for k in range(n_windows)]
    windows = [stream[s : s + seq_len] for s in range(0, len(stream), seq_len)]
    return [w for w in windows if len(w) >= MIN_WINDOW_TOKENS]


def train_lm(
    model,
    tokenizer,
    texts: Sequence[str],
    config: TrainConfig,
    out_dir: str | Path,
    weights: Sequence[float] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainedLM:
    """Next-token training of ``model`` (float32, on its device; the engine loads it) on every
    token of the packed documents for ``config.max_steps`` steps; the checkpoint (adapter or full
    model) and the tokenizer are saved to ``out_dir``. Returns the report and the trained model
    (``TrainedLM``)."""
    import torch

    if not config.max_steps:
        raise ValueError(
            "continued pre-training needs max_steps: the token budget is fixed, not the epochs"
        )
    started = time.monotonic()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    windows = pack_documents(
        tokenizer,
        texts,
        config.max_seq_len,
        weights,
        config.seed,
        n_windows=config.max_steps * config.batch_size,
    )
    if not windows:
        raise ValueError(f"the {len(texts)} training documents hold no token")
    device = str(next(model.parameters()).device)
    model = attach_adapters(model, config)
    report = run_training(
        model, [(w, w) for w in windows], config, pad_id(tokenizer), device, progress
    )
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)  # peft: the adapter only; full: the whole model
    tokenizer.save_pretrained(out_dir)
    report.seconds = round(time.monotonic() - started, 1)
    # Training keeps the weights fp32 (bf16 is autocast only) and leaves the base weights frozen,
    # so merging here computes what the loader's merge of the saved adapter computes.
    if config.method == "lora":
        model = model.merge_and_unload()
    model.eval()
    return TrainedLM(report, model)


def mean_std(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": round(statistics.fmean(values), 4),
        "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
    }


def seed_summary(rows: dict[str, list[float]]) -> dict[str, dict]:
    """Per variant: mean and std over seeds, and each seed's value (the evidence benchmarks)."""
    return {v: {**mean_std(x), "per_seed": [round(y, 4) for y in x]} for v, x in rows.items()}
