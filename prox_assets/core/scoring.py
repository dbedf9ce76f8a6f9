"""Seed-document scoring with the two rubrics, and the ProX document label rule
(docs/methods.md#sft-synthesis).

Small models rarely write a clean "Score: N" line, so besides parsing the line we read the
model's next-token distribution over "0".."5" right after "Score: " and take its expectation:
one forward pass, no sampling, and far more stable. With ``with_critique`` the model first writes
a short critique (as ProX's annotator does) and the score is read after it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prox_assets.core.prompts import SCORE_CANDIDATES, score_chat, score_prefix

_SCORE_LINE = re.compile(r"score\s*[:=]?\s*\**\s*([0-5])\b", re.IGNORECASE)


@dataclass(frozen=True)
class RubricScore:
    score: int  # the score used for labels
    expected: float  # expectation of the next-token distribution over 0..5
    probs: tuple[float, ...]  # that distribution, renormalised over the six digits
    mass: float  # probability the model put on the six digits at all (a sanity signal)
    parsed: int | None  # the score written in the critique's final line, if any
    critique: str | None
    method: str  # "parsed" | "expected"


def seed_sample(doc_ids: Sequence[str], n: int, seed: int) -> list[str]:
    """A seeded sample that does not depend on row order: the n smallest keyed hashes."""
    key = lambda d: hashlib.sha256(f"{seed}:{d}".encode()).hexdigest()  # noqa: E731
    return sorted(doc_ids, key=key)[:n]


def parse_score_line(text: str) -> int | None:
    matches = _SCORE_LINE.findall(text or "")
    return int(matches[-1]) if matches else None


def expected_score(probs: dict[str, float]) -> tuple[float, tuple[float, ...], float]:
    raw = [max(probs.get(c, 0.0), 0.0) for c in SCORE_CANDIDATES]
    mass = sum(raw)
    if mass <= 0:
        return 0.0, tuple(1 / 6 for _ in raw), 0.0
    norm = tuple(p / mass for p in raw)
    return sum(i * p for i, p in enumerate(norm)), norm, mass


def prox_keep(edu: int, fmt: int) -> bool:
    """ProX's rule (Zhou et al., 2024): keep if educational value >= 3, or == 2 with format >= 4."""
    return edu >= 3 or (edu == 2 and fmt >= 4)


def score_documents(
    backend,
    documents: Sequence[str],
    rubric: str,
    with_critique: bool = False,
    critique_tokens: int = 96,
    progress: Callable[[int, int], None] | None = None,
) -> list[RubricScore]:
    chats = [score_chat(rubric, d, with_critique) for d in documents]
    critiques: list[str | None] = [None] * len(chats)
    if with_critique:
        written = backend.generate(chats, max_new_tokens=critique_tokens, progress=progress)
        # keep the critique, not whatever score line the model wrote: we read the score after it
        critiques = [re.split(r"(?i)score\s*[:=]", w)[0].strip() or w.strip() for w in written]
        parsed = [parse_score_line(w) for w in written]
    else:
        parsed = [None] * len(chats)
    prefixes = [score_prefix(c) for c in critiques]
    dists = backend.next_token_probs(
        chats, SCORE_CANDIDATES, prefixes=prefixes, progress=None if with_critique else progress
    )
    out = []
    for dist, p, critique in zip(dists, parsed, critiques):
        expected, norm, mass = expected_score(dist)
        score, method = (p, "parsed") if p is not None else (round(expected), "expected")
        out.append(RubricScore(score, expected, norm, mass, p, critique, method))
    return out
