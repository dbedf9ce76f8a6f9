"""The training loop every fine-tuning here shares: AdamW over (input_ids, labels) pairs.

Used by the refiners' supervised fine-tuning (``core/refiner_training.py``: labels on the program
tokens only) and by continued pre-training of the checkpoints (``core/training.py``: labels on every
token of packed windows); ``deploy/gpu/check.py`` times it on a GPU. docs/methods.md#refiner-training
describes it.

LoRA (peft) by default; ``lora_layers`` puts adapters only on the top N blocks, which on a CPU
also stops back-propagation early (the dominant cost), at some cost in quality. Full fine-tuning
is one flag away for a GPU. The schedule is linear warm-up then cosine decay to ``min_lr``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    method: Literal["lora", "full"] = "lora"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_layers: int | None = 10  # adapters on the top N blocks only; None = every block
    target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 8
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 3
    weight_decay: float = 0.0
    max_seq_len: int = 512
    seed: int = 0
    dtype: str = "auto"  # bf16 autocast where the hardware runs it fast (core.precision)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainReport:
    steps: int = 0
    examples_seen: int = 0
    tokens_seen: int = 0
    skipped_too_long: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    target_tokens_p99: int = (
        0  # program length (tokens, incl. end of turn): sizes the output budget
    )
    bf16: bool = False  # whether dtype "auto" ran the matmuls in bf16 on this hardware

    def to_dict(self) -> dict:
        return asdict(self)


def lora_train_config(
    *, method: Literal["lora", "full"], lora_r: int, lora_layers: int | None, lr: float, **rest
) -> TrainConfig:
    """The one mapping from an asset's (or a benchmark's) LoRA settings to a ``TrainConfig``:
    alpha is twice the rank, ``lora_layers`` 0 or None puts adapters on every block, and the
    cosine schedule decays to a tenth of ``lr``. ``rest``: the other ``TrainConfig`` fields."""
    return TrainConfig(
        method=method,
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        lora_layers=lora_layers or None,
        lr=lr,
        min_lr=lr / 10,
        **rest,
    )


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(
        1, total - config.warmup_steps - 1
    )  # last step: min_lr
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (
        1 + math.cos(math.pi * min(1.0, progress))
    )


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def attach_adapters(model, config: TrainConfig):
    """LoRA adapters on the top ``lora_layers`` blocks (``method='lora'``), or the model as is."""
    if config.method != "lora":
        return model
    from peft import LoraConfig, get_peft_model

    n_layers = model.config.num_hidden_layers
    layers = (
        None
        if config.lora_layers is None
        else list(range(max(0, n_layers - config.lora_layers), n_layers))
    )
    return get_peft_model(
        model,
        LoraConfig(
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=0.0,
            target_modules=list(config.target_modules),
            layers_to_transform=layers,
            task_type="CAUSAL_LM",
        ),
    )


def run_training(
    model,
    encoded: Sequence[tuple[list[int], list[int]]],
    config: TrainConfig,
    pad: int,
    device: str = "cpu",
    progress: Callable[[int, int, float], None] | None = None,
    report: TrainReport | None = None,
) -> TrainReport:
    """AdamW over (input_ids, labels) pairs, shuffled and cycled until ``max_steps`` (or
    ``epochs``); right-padded batches; gradient clipping at 1. Seeded by the caller."""
    import torch

    from prox_assets.core.precision import autocast, uses_bf16

    report = report or TrainReport()
    report.bf16 = uses_bf16(device, config.dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(encoded) / config.batch_size)
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    order: list[int] = []
    model.train()
    for step in range(total):
        if len(order) < config.batch_size:
            fresh = list(range(len(encoded)))
            random.shuffle(fresh)
            order += fresh
        batch = [encoded[i] for i in order[: config.batch_size]]
        del order[: config.batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (x, y) in enumerate(batch):  # right padding: positions need no correction
            ids[row, : len(x)] = torch.tensor(x)
            labels[row, : len(y)] = torch.tensor(y)
            mask[row, : len(x)] = 1
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, total, config)
        with autocast(device, config.dtype):
            loss = causal_lm_loss(model, ids.to(device), mask.to(device), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        report.steps += 1
        report.examples_seen += len(batch)
        report.tokens_seen += int(mask.sum())
        report.losses.append(round(loss.item(), 4))
        if progress:
            progress(step + 1, total, report.losses[-1])
    model.eval()
    return report


def causal_lm_loss(model, ids, mask, labels):
    """Mean next-token cross-entropy over the labelled positions, as ``model(labels=...).loss``
    computes it, but with only the positions some row has a label after projected onto the
    vocabulary (the model's own ``logits_to_keep``). A refiner's labels are its program, ~a tenth
    of an SFT example's tokens, and the projection with its fp32 softmax over 49K logits per
    position was about a fifth of a step's FLOPs on a CPU and most of its memory traffic.
    ``labels`` may stay on the CPU: the positions are worked out there, so a GPU never waits."""
    import torch

    targets = labels[:, 1:].cpu()
    labelled = targets != -100  # the logits at position p predict the token at p + 1
    positions = labelled.any(0).nonzero().squeeze(1)
    kept = labelled[:, positions].flatten().nonzero().squeeze(1)
    logits = model(
        input_ids=ids, attention_mask=mask, logits_to_keep=positions.to(ids.device)
    ).logits
    logits = logits.flatten(0, 1).index_select(0, kept.to(ids.device))
    wanted = targets[:, positions].flatten()[kept].to(ids.device)
    return torch.nn.functional.cross_entropy(logits.float(), wanted)
