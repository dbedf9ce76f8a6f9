"""Evaluating refiners on held-out examples: what ProX reports, computed the same way
(docs/methods.md#refiner-training).

- document level: F1 of keep/drop decisions (per class and macro), with the executor's own
  reading of each program (only a clear drop_doc() drops);
- chunk level: line-F1 of removed lines, micro-averaged over windows;
- both: the parse rate, the share of programs that parse with no error and at least one call.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from prox_assets.core.executor import execute_doc_program
from prox_assets.core.programs import Stage, parse_program


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
        pl, gl = removed_lines(p, s, e), removed_lines(g, s, e)
        tp += len(pl & gl)
        fp += len(pl - gl)
        fn += len(gl - pl)
    precision, recall, score = f1(tp, fp, fn)
    return {
        "n": len(predicted),
        "parse_rate": sum(parses(p, "chunk") for p in predicted) / max(len(predicted), 1),
        "line_precision": precision,
        "line_recall": recall,
        "line_f1": score,
    }


def with_shots(chat: list[dict], shots: Sequence[tuple[list[dict], str]]) -> list[dict]:
    """The chat with worked examples (user turn, assistant answer) before the real input: how
    the un-tuned base model is prompted, so the comparison is fair to it."""
    system, rest = chat[:1], chat[1:]
    turns = []
    for shot_chat, target in shots:
        turns += [shot_chat[-1], {"role": "assistant", "content": target}]
    return system + turns + rest


def load_chat(messages: str) -> list[dict]:
    return json.loads(messages)
