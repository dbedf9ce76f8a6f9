"""Evaluation of a checkpoint: the target task's held-out examples and clean held-out prose.

All metrics go through an engine backend's ``loglikelihood`` and ``complete`` (raw text, no
chat template: these are base-model evaluations), so they run the same on transformers or vLLM.

- ``heldout_loss``: mean negative log-likelihood per token of the gold answer given the prompt
  (every task; the smoothest signal at small scale);
- multiple choice (ARC, SciQ, MMLU-style): accuracy by summed log-likelihood of each choice, and
  by log-likelihood per character (``acc_per_char``, the OLMES normalisation);
- GSM8K: exact match of the final number of a greedy completion against the number after ``####``;
- SQuAD: token F1 of a short greedy completion against the gold answer (SQuAD's normalisation);
- ``prose_perplexity``: per-token perplexity of held-out clean prose.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_STOP = ("\n\nQuestion:", "\nQuestion:", "\n\n\n")


def final_number(text: str) -> str | None:
    """The answer number of a GSM8K-style solution: after ``####`` or "answer is" when present,
    otherwise the last number; commas and a trailing ``.0`` removed."""
    for marker in ("####", "answer is"):
        if marker in text:
            found = _NUMBER.findall(text.split(marker)[-1])
            if found:
                return _canonical(found[0])
    found = _NUMBER.findall(text)
    return _canonical(found[-1]) if found else None


def _canonical(number: str) -> str:
    number = number.replace(",", "")
    return number[:-2] if number.endswith(".0") else number.rstrip(".")


def cut_completion(text: str) -> str:
    """A completion up to where the model starts a new question."""
    for stop in _STOP:
        if stop in text:
            text = text.split(stop)[0]
    return text


_PUNCTUATION = set(string.punctuation)


def _normalize_answer(text: str) -> list[str]:
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def squad_f1(prediction: str, gold: str) -> float:
    pred, ref = _normalize_answer(prediction), _normalize_answer(gold)
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _n_tokens(backend, texts: Sequence[str]) -> list[int]:
    return [len(x) for x in backend.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def heldout_loss(backend, prompts: Sequence[str], answers: Sequence[str]) -> float:
    """Mean negative log-likelihood per answer token, over all answer tokens."""
    return _mean_nll(backend, backend.loglikelihood(prompts, answers), answers)


def _mean_nll(backend, ll: Sequence[float], answers: Sequence[str]) -> float:
    return -sum(ll) / max(1, sum(_n_tokens(backend, answers)))


def multiple_choice(
    backend, prompts: Sequence[str], choices: Sequence[Sequence[str]], gold: Sequence[int]
) -> dict[str, float]:
    contexts = [p for p, cs in zip(prompts, choices) for _ in cs]
    continuations = [c for cs in choices for c in cs]
    return _choice_accuracy(backend.loglikelihood(contexts, continuations), choices, gold)


def _choice_accuracy(
    ll: Sequence[float], choices: Sequence[Sequence[str]], gold: Sequence[int]
) -> dict[str, float]:
    acc = acc_char = 0
    at = 0
    for cs, g in zip(choices, gold):
        scores = ll[at : at + len(cs)]
        at += len(cs)
        acc += int(max(range(len(cs)), key=lambda i: scores[i]) == g)
        acc_char += int(max(range(len(cs)), key=lambda i: scores[i] / max(1, len(cs[i]))) == g)
    n = max(1, len(gold))
    return {"accuracy": acc / n, "acc_per_char": acc_char / n}


def gsm8k_exact_match(
    backend, prompts: Sequence[str], answers: Sequence[str], max_new_tokens: int
) -> float:
    completions = backend.complete(prompts, max_new_tokens)
    hits = [
        final_number(cut_completion(c)) == final_number(a) for c, a in zip(completions, answers)
    ]
    return sum(hits) / max(1, len(hits))


def squad_mean_f1(
    backend, prompts: Sequence[str], answers: Sequence[str], max_new_tokens: int = 24
) -> float:
    completions = backend.complete(prompts, max_new_tokens)
    scores = [
        squad_f1(cut_completion(c).strip().split("\n")[0], a) for c, a in zip(completions, answers)
    ]
    return sum(scores) / max(1, len(scores))


def prose_perplexity(backend, texts: Sequence[str], max_tokens: int = 256) -> float:
    """exp(mean negative log-likelihood per predicted token) of each text's first ``max_tokens``."""
    texts = [backend.truncate(t, max_tokens) for t in texts]
    ll = backend.loglikelihood([""] * len(texts), texts)
    predicted = sum(
        max(0, n - 1) for n in _n_tokens(backend, texts)
    )  # the first token has no context
    return math.exp(-sum(ll) / max(1, predicted))


def evaluate(
    backend,
    task: str,
    examples: Sequence[dict],
    prose: Sequence[str],
    max_new_tokens: int = 128,
    prose_tokens: int = 256,
) -> dict[str, float]:
    """Every metric that applies to ``task`` on ``examples`` (rows with prompt, answer, choices
    as a JSON list, gold), plus the perplexity of ``prose``."""
    import json

    prompts = [e["prompt"] for e in examples]
    answers = [e["answer"] for e in examples]
    choices = [
        json.loads(e["choices"]) if isinstance(e["choices"], str) else list(e["choices"])
        for e in examples
    ]
    with_choices = bool(examples) and all(choices)
    metrics: dict[str, float] = {}
    if examples:
        # the answer and every choice of a question in one call: they continue the same prompt,
        # which the backend then runs once for all of them
        pairs = [(p, c) for p, cs in zip(prompts, choices) for c in cs] if with_choices else []
        ll = backend.loglikelihood(prompts + [p for p, _ in pairs], answers + [c for _, c in pairs])
        metrics["heldout_loss"] = _mean_nll(backend, ll[: len(answers)], answers)
    if with_choices:
        gold = [int(e["gold"]) for e in examples]
        metrics |= _choice_accuracy(ll[len(answers) :], choices, gold)
    elif examples and task == "gsm8k":
        metrics["exact_match"] = gsm8k_exact_match(backend, prompts, answers, max_new_tokens)
    elif examples and task == "squad":
        metrics["f1"] = squad_mean_f1(backend, prompts, answers)
    if prose:
        metrics["prose_perplexity"] = prose_perplexity(backend, prose, prose_tokens)
    return metrics
