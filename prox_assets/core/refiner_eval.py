"""Evaluating refiners on held-out examples: what ProX reports, computed the same way
(docs/methods.md#refiner-training).

- document level: F1 of keep/drop decisions (per class and macro), with the executor's own
  reading of each program (only a clear drop_doc() drops);
- chunk level: line-F1 of removed lines, micro-averaged over windows;
- both: the parse rate, the share of programs that parse with no error and at least one call.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import polars as pl

from prox_assets.core.executor import execute_doc_program
from prox_assets.core.programs import Stage, parse_program

# What ProX reports for its 0.35B refiners (validation; Zhou et al., 2024, arXiv:2409.17115), shown
# next to ours (docs/methods.md#refiner-training): (headline metric, value) per level.
PAPER_ANCHORS = {"doc": ("macro_f1", 0.826), "chunk": ("line_f1", 0.752)}
# New tokens a document program gets: keep_doc() is 4 tokens
DOC_NEW_TOKENS = 8

Chat = list[dict]
Shot = tuple[Chat, str]  # a worked example: the chat and its target program


def f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    score = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, score


def parses(program: str, level: Stage) -> bool:
    parsed = parse_program(program, level)
    return not parsed.errors and bool(parsed.calls)


def doc_metrics(predicted: Sequence[str], gold_labels: Sequence[str]) -> dict:
    """``gold_labels`` are "keep" / "drop"."""
    pred = ["drop" if execute_doc_program("", p).dropped else "keep" for p in predicted]
    out = {
        "n": len(pred),
        "parse_rate": sum(parses(p, "doc") for p in predicted) / max(len(pred), 1),
    }
    per_class = []
    for label in ("keep", "drop"):
        tp = sum(p == label and g == label for p, g in zip(pred, gold_labels))
        fp = sum(p == label and g != label for p, g in zip(pred, gold_labels))
        fn = sum(p != label and g == label for p, g in zip(pred, gold_labels))
        out[f"{label}_f1"] = f1(tp, fp, fn)[2]
        per_class.append(out[f"{label}_f1"])
    out["macro_f1"] = sum(per_class) / 2
    out["accuracy"] = sum(p == g for p, g in zip(pred, gold_labels)) / max(len(pred), 1)
    return out


def removed_lines(program: str, line_start: int, line_end: int) -> set[int]:
    lines: set[int] = set()
    for call in parse_program(program, "chunk").calls:
        if call.name == "remove_lines":
            s, e = (
                max(call.int_arg("line_start"), line_start),
                min(call.int_arg("line_end"), line_end),
            )
            lines.update(range(s, e + 1))
    return lines


def chunk_metrics(
    predicted: Sequence[str], gold: Sequence[str], spans: Sequence[tuple[int, int]]
) -> dict:
    tp = fp = fn = 0
    for p, g, (s, e) in zip(predicted, gold, spans):
        p_lines, g_lines = removed_lines(p, s, e), removed_lines(g, s, e)
        tp += len(p_lines & g_lines)
        fp += len(p_lines - g_lines)
        fn += len(g_lines - p_lines)
    precision, recall, score = f1(tp, fp, fn)
    return {
        "n": len(predicted),
        "parse_rate": sum(parses(p, "chunk") for p in predicted) / max(len(predicted), 1),
        "line_precision": precision,
        "line_recall": recall,
        "line_f1": score,
    }


def with_shots(chat: Chat, shots: Sequence[Shot]) -> Chat:
    """The chat with worked examples (user turn, assistant answer) before the real input: how
    the un-tuned base model is prompted, so the comparison is fair to it."""
    system, rest = chat[:1], chat[1:]
    turns = []
    for shot_chat, target in shots:
        turns += [shot_chat[-1], {"role": "assistant", "content": target}]
    return system + turns + rest


def load_chat(messages: str) -> Chat:
    return json.loads(messages)


def few_shot_examples(train: pl.DataFrame, level: str, n: int, seed: int) -> list[Shot]:
    """Worked examples for the base model from an SFT set's ``train`` split, one per label where
    possible, at most ``n``."""
    rng = random.Random(seed)
    shots = []
    for label in ("drop", "keep") if level == "doc" else ("remove", "keep"):
        rows = train.filter(pl.col("label") == label)
        if rows.height:
            i = rng.randrange(rows.height)
            shots.append((load_chat(rows["messages"][i]), rows["target"][i]))
    return shots[:n]


def score_programs(
    backend, val: pl.DataFrame, level: str, shots: Sequence[Shot] = (), max_new_tokens: int = 64
) -> dict:
    """``backend``'s programs for the SFT examples ``val`` (chats prefixed by ``shots``, if any),
    scored against their targets: ``doc_metrics`` or ``chunk_metrics``."""
    chats = [load_chat(m) for m in val["messages"]]
    if shots:
        chats = [with_shots(c, shots) for c in chats]
    predicted = backend.generate(chats, max_new_tokens=max_new_tokens)
    if level == "doc":
        return doc_metrics(predicted, val["label"].to_list())
    spans = list(zip(val["line_start"].to_list(), val["line_end"].to_list()))
    return chunk_metrics(predicted, val["target"].to_list(), spans)


def evaluation_new_tokens(level: str, configured: int, trained_budget: int) -> int:
    """New tokens per program in an evaluation: a document program's few; a chunk program's the
    configured number, else the budget sized from the refiner's training programs."""
    return DOC_NEW_TOKENS if level == "doc" else configured or trained_budget


@dataclass(frozen=True)
class RefinerEvaluation:
    """A refiner next to the base model prompted few-shot on the same held-out SFT examples
    (``sft_val``: {"refiner" | "base-few-shot": {metric: value}}), and the refiner, the perfect
    imitator and the random control on held-out real data (``heldout``: {model: {dataset:
    {metric: value}}}, ``core.refiner_quality``; empty when not run)."""

    level: str
    new_tokens: int
    sft_val: Mapping[str, Mapping[str, float]]
    heldout: Mapping[str, Mapping[str, Mapping[str, float]]] = field(default_factory=dict)

    @property
    def headline(self) -> str:
        """The metric ProX reports for the level (``PAPER_ANCHORS``)."""
        return PAPER_ANCHORS[self.level][0]

    @property
    def paper_anchor(self) -> float:
        return PAPER_ANCHORS[self.level][1]

    def score(self, model: str) -> float:
        """``model``'s headline metric on the held-out SFT examples, rounded."""
        return round(self.sft_val[model][self.headline], 3)

    @property
    def beats_base(self) -> bool:
        return self.sft_val["refiner"][self.headline] > self.sft_val["base-few-shot"][self.headline]

    def validation_rows(self) -> list[tuple[str, float, float]]:
        """(metric, refiner, base model few-shot) for every metric either has."""
        tuned, base = self.sft_val["refiner"], self.sft_val["base-few-shot"]
        return [
            (k, round(tuned.get(k, 0), 3), round(base.get(k, 0), 3))
            for k in sorted(set(tuned) | set(base))
        ]

    def rows(self) -> list[dict]:
        """One {model, dataset, metric, value} per figure: the SFT examples' ("sft-val"), then
        the held-out real data's."""
        return [
            {"model": model, "dataset": "sft-val", "metric": k, "value": float(v)}
            for model, values in self.sft_val.items()
            for k, v in values.items()
        ] + [
            {"model": model, "dataset": dataset, "metric": k, "value": float(v)}
            for model, datasets in self.heldout.items()
            for dataset, values in datasets.items()
            for k, v in values.items()
        ]


def evaluate_on_sft_val(
    tuned,
    base,
    train: pl.DataFrame,
    val: pl.DataFrame,
    level: str,
    *,
    examples: int,
    few_shot: int,
    seed: int,
    new_tokens: int,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, dict]:
    """The refiner (``tuned``) and the base model prompted with ``few_shot`` worked examples
    from ``train`` on the same seeded sample of ``examples`` held-out SFT examples ``val``."""
    sample = val.sample(n=min(examples, val.height), seed=seed) if val.height else val
    shots = few_shot_examples(train, level, few_shot, seed)
    log(f"evaluating on {sample.height} held-out examples")
    return {
        "refiner": score_programs(tuned, sample, level, max_new_tokens=new_tokens),
        "base-few-shot": score_programs(base, sample, level, shots, new_tokens),
    }
