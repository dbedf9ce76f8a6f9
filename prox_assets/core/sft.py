"""Building the synthetic function-call SFT set: chat examples in exactly the refiner's format.

``doc`` examples come from scored seed documents (target ``keep_doc()`` / ``drop_doc()`` by the
ProX rule); ``chunk`` examples from line-numbered windows and an annotator's program. Every
example keeps its provenance (annotator, model, prompt version) and, when rejected, the reason.
Train/validation are split per document, so windows of one document never straddle the split.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from prox_assets.core.annotators import KEEP, validate_chunk_program
from prox_assets.core.chunking import Window
from prox_assets.core.prompts import REFINER_PROMPT_VERSION, chunk_refiner_chat, doc_refiner_chat
from prox_assets.core.programs import parse_program


@dataclass
class SFTExample:
    level: str
    doc_id: str
    shard: str
    messages: str  # JSON: the chat the refiner sees, without the answer
    target: str  # the program: the assistant's answer
    label: str  # doc: keep|drop; chunk: remove|keep
    annotator: str
    model: str
    status: str = "accepted"  # accepted | rejected
    reject_reason: str | None = None
    window_index: int = -1
    line_start: int = -1
    line_end: int = -1
    prompt_version: str = REFINER_PROMPT_VERSION
    split: str = ""
    example_id: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def doc_example(doc_id: str, shard: str, shown_text: str, keep: bool, scorer_model: str) -> SFTExample:
    target = "keep_doc()" if keep else "drop_doc()"
    return SFTExample(
        level="doc", doc_id=doc_id, shard=shard, messages=json.dumps(doc_refiner_chat(shown_text)),
        target=target, label="keep" if keep else "drop", annotator="rubric-scores", model=scorer_model,
    )


def chunk_examples(
    doc_id: str, shard: str, text: str, windows: Sequence[Window], programs: Sequence[str],
    annotator: str, model: str, max_removal_ratio: float,
) -> list[SFTExample]:
    out = []
    for window, program in zip(windows, programs):
        reason = validate_chunk_program(program, text, window, max_removal_ratio)
        out.append(SFTExample(
            level="chunk", doc_id=doc_id, shard=shard, messages=json.dumps(chunk_refiner_chat(window.text)),
            target=program, label="keep" if program == KEEP else "remove", annotator=annotator, model=model,
            status="rejected" if reason else "accepted", reject_reason=reason,
            window_index=window.index, line_start=window.line_start, line_end=window.line_end,
        ))
    return out


def assign_splits(examples: list[SFTExample], val_fraction: float, seed: int) -> None:
    """Per document, by a keyed hash: stable under re-runs and row order. The key has its own
    namespace: seed documents are *chosen* by the smallest ``seed:doc_id`` hashes, and reusing
    that key would put nearly all of them in one split."""
    for ex in examples:
        h = int(hashlib.sha256(f"split:{seed}:{ex.doc_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        ex.split = "val" if h < val_fraction else "train"


def sft_version(level: str, config: dict, examples: Sequence[SFTExample]) -> str:
    """Content-derived: the same config and the same examples give the same version."""
    h = hashlib.sha256(json.dumps({"level": level, "config": config}, sort_keys=True).encode())
    for ex in sorted(examples, key=lambda e: (e.doc_id, e.window_index)):
        h.update(f"{ex.doc_id}|{ex.window_index}|{ex.messages}|{ex.target}|{ex.status}\n".encode())
    return h.hexdigest()[:12]


def finalize(examples: list[SFTExample], version: str) -> None:
    for ex in examples:
        ex.example_id = hashlib.sha256(f"{version}:{ex.doc_id}:{ex.window_index}".encode()).hexdigest()[:16]


def unparsable_targets(examples: Sequence[SFTExample]) -> list[SFTExample]:
    """Accepted examples whose target does not parse cleanly at its level (must be none)."""
    bad = []
    for ex in examples:
        if ex.status == "accepted":
            parsed = parse_program(ex.target, ex.level)
            if parsed.errors or not parsed.calls:
                bad.append(ex)
    return bad
