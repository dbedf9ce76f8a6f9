"""Supervised fine-tuning of a refiner: the loss falls on the program tokens only
(docs/methods.md#refiner-training).

Each example is a chat (system + document or window) and its target program. The prompt is the
chat rendered with the model's own template and the generation prompt; the answer is whatever the
template adds for the assistant turn (the program and the end-of-turn token). Labels are -100 on
the prompt, so the model learns to write programs, not to reproduce documents. The loop itself
(AdamW, LoRA adapters, the learning-rate schedule) is ``core/training_loop.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prox_assets.core.training_loop import (
    TrainConfig,
    TrainReport,
    attach_adapters,
    pad_id,
    run_training,
)

Chat = list[dict[str, str]]

# New tokens for a chunk program when a refiner records no budget sized from its labels (one
# trained before the budget was).
FALLBACK_PROGRAM_TOKENS = 160


def version_id(base_model: str, sft_version: str, config: TrainConfig) -> str:
    """A refiner version: base model, SFT data version and hyperparameters, hashed."""
    payload = json.dumps(
        {"base": base_model, "sft": sft_version, "train": config.to_dict()}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def generation_budget(target_tokens_p99: int) -> int:
    """New tokens for a program: the training programs' p99 with room to spare, so a model that
    imitates its labels is not cut off (64 tokens truncated the long ones)."""
    return max(16, math.ceil(1.25 * target_tokens_p99) + 8)


def encode_example(
    tokenizer, chat: Chat, target: str, max_len: int
) -> tuple[list[int], list[int]] | None:
    """(input_ids, labels) with labels -100 on the prompt; None when longer than ``max_len``."""
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(
        chat + [{"role": "assistant", "content": target}], tokenize=False
    )
    if not full.startswith(prompt):  # a template that rewrites earlier turns: fall back to EOS
        full = prompt + target + (tokenizer.eos_token or "")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    if len(prompt_ids) + len(answer_ids) > max_len:
        return None
    return prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids


def train_refiner(
    model,
    tokenizer,
    examples: Sequence[tuple[Chat, str]],
    config: TrainConfig,
    out_dir: str | Path,
    progress: Callable[[int, int, float], None] | None = None,
) -> TrainReport:
    """Fine-tune ``model`` (float32, on its device; the engine loads it) on ``examples`` and save
    it, merged, to ``out_dir`` in ``save_pretrained`` layout (safetensors, tokenizer, chat template)."""
    import torch

    started = time.monotonic()
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    device = str(next(model.parameters()).device)

    report = TrainReport()
    encoded = []
    for chat, target in examples:
        item = encode_example(tokenizer, chat, target, config.max_seq_len)
        if item is None:
            report.skipped_too_long += 1
        else:
            encoded.append(item)
    if not encoded:
        raise ValueError(f"no training example fits max_seq_len={config.max_seq_len}")
    answer_lengths = sorted(sum(1 for y in labels if y != -100) for _, labels in encoded)
    report.target_tokens_p99 = answer_lengths[
        min(len(answer_lengths) - 1, int(0.99 * len(answer_lengths)))
    ]

    model = attach_adapters(model, config)
    report = run_training(model, encoded, config, pad_id(tokenizer), device, progress, report)

    if config.method == "lora":
        model = model.merge_and_unload()
    model.eval()
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    report.seconds = round(time.monotonic() - started, 1)
    return report
