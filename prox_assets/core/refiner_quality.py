"""Refiner quality on held-out real data, next to a ceiling and a control.

Every figure runs the refined corpus's own path: the document stage reads the first
``doc_max_tokens`` tokens; the chunk stage windows the document, writes one program per window and
runs the executor over all windows at once. Three program writers go through the same path:

- ``refiner``: the model;
- ``perfect-imitator``: the gold labels written as programs (``annotators.gold_program``,
  keep_doc()/drop_doc()): what a perfect model scores through this path. If it scores badly, the
  evaluation is the bug;
- ``random-control``: each non-blank line removed with the gold's noise rate, keep/drop at the
  labelled drop rate: what a model that learned nothing about *which* lines scores.

Held-out data: docs pages whose keyed page hash put them out of every SFT set (layout gold), the
newspaper pages (a domain no refiner trains on, trigram gold), passages of the held-out novel and
MATH problems that are not in the corpus (clean text: everything should be kept).
"""

from __future__ import annotations

import copy
import functools
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prox_assets.core.annotators import gold_program, program_for_flags
from prox_assets.core.chunking import (
    DEFAULT_DOC_MAX_TOKENS,
    DEFAULT_WINDOW_TOKENS,
    TokenCounter,
    Window,
    chunk_document,
    hf_token_counter,
    split_lines,
)
from prox_assets.core.executor import execute_chunk_programs, execute_doc_program
from prox_assets.core.real_pairs import Labels, Pair, removal_metrics
from prox_assets.core.refiner_eval import doc_metrics

MODELS = ("refiner", "perfect-imitator", "random-control")

# {model: {dataset: {metric: value}}}
Quality = Mapping[str, Mapping[str, Mapping[str, float]]]

# The figures issue readers look for first, per level: (dataset, metric).
HEADLINES = {
    "doc": [
        ("doc-labelled", "macro_f1"),
        ("docs-pydocs-index", "docs_dropped"),
        ("docs-austen", "docs_dropped"),
        ("docs-math", "docs_dropped"),
        ("docs-news", "docs_dropped"),
        ("docs-pydocs-content", "docs_dropped"),
    ],
    "chunk": [
        ("pydocs-heldout", "line_f1"),
        ("pydocs-heldout", "gold_text_kept"),
        ("pydocs-heldout", "noise_removed"),
        ("news-heldout", "gold_text_kept"),
        ("news-heldout", "noise_removed"),
        ("clean-austen", "tokens_kept"),
        ("clean-math", "tokens_kept"),
        ("clean-austen", "docs_dropped"),
        ("clean-math", "docs_dropped"),
    ],
}


@dataclass
class QualitySet:
    pages: list[Pair] = field(
        default_factory=list
    )  # held-out docs pages worth keeping (layout gold)
    news: list[Pair] = field(default_factory=list)  # the evaluation-only domain
    clean: dict[str, list[str]] = field(default_factory=dict)  # "austen", "math": clean texts
    docs: list[tuple[str, str, bool]] = field(
        default_factory=list
    )  # (group, text, keep) for the document stage


# A chunk writer gets, per document, its text, gold labels and windows, and returns one program
# per window; a doc writer gets the shown texts and their labels and returns one program each.
ChunkWriter = Callable[[Sequence[str], Sequence[Labels], Sequence[list[Window]]], list[list[str]]]
DocWriter = Callable[[Sequence[str], Sequence[bool]], list[str]]


def model_writers(
    backend, chunk_new_tokens: int, doc_new_tokens: int = 8
) -> tuple[DocWriter, ChunkWriter]:
    from prox_assets.core.prompts import chunk_refiner_chat, doc_refiner_chat

    def docs(shown, _labels):
        return backend.generate([doc_refiner_chat(t) for t in shown], max_new_tokens=doc_new_tokens)

    def chunks(_texts, _labels, windows):
        flat = backend.generate(
            [chunk_refiner_chat(w.text) for ws in windows for w in ws],
            max_new_tokens=chunk_new_tokens,
        )
        out, k = [], 0
        for ws in windows:
            out.append(flat[k : k + len(ws)])
            k += len(ws)
        return out

    return docs, chunks


def imitator_writers() -> tuple[DocWriter, ChunkWriter]:
    def docs(_shown, labels):
        return ["keep_doc()" if keep else "drop_doc()" for keep in labels]

    def chunks(texts, labels, windows):
        return [[gold_program(t, lab, w) for w in ws] for t, lab, ws in zip(texts, labels, windows)]

    return docs, chunks


def random_writers(
    noise_rate: float, drop_rate: float, seed: int = 0
) -> tuple[DocWriter, ChunkWriter]:
    rng = random.Random(seed)

    def docs(shown, _labels):
        return ["drop_doc()" if rng.random() < drop_rate else "keep_doc()" for _ in shown]

    def chunks(texts, _labels, windows):
        out = []
        for t, ws in zip(texts, windows):
            lines = split_lines(t)
            out.append(
                [
                    program_for_flags(
                        lines,
                        [
                            bool(lines[i].strip()) and rng.random() < noise_rate
                            for i in range(w.line_start, w.line_end + 1)
                        ],
                        w,
                    )
                    for w in ws
                ]
            )
        return out

    return docs, chunks


def noise_rate(pairs: Sequence[Pair]) -> float:
    labels = [lab for p in pairs for lab in p.labels if lab is not None]
    return sum(not lab for lab in labels) / max(len(labels), 1)


def _run_chunk_stage(
    writer: ChunkWriter,
    texts: Sequence[str],
    labels: Sequence[Labels],
    count_tokens: TokenCounter,
    window_tokens: int,
):
    windows = [chunk_document(t, count_tokens, window_tokens) for t in texts]
    programs = writer(texts, labels, windows)
    return [
        execute_chunk_programs(t, [(w.line_start, w.line_end, p) for w, p in zip(ws, ps)])
        for t, ws, ps in zip(texts, windows, programs)
    ]


def _removed(result, text: str) -> set[int]:
    """Lines of ``text`` the result removed: all of them when the executor dropped the document."""
    if result.dropped:
        return set(range(text.count("\n") + 1))
    return {
        i
        for e in result.edits
        if e.kind == "remove_lines"
        for i in range(e.line_start, e.line_end + 1)
    }


def chunk_stage_quality(
    writer: ChunkWriter, qset: QualitySet, count_tokens: TokenCounter, window_tokens: int
) -> dict[str, dict[str, float]]:
    """Per dataset: removal precision/recall/F1 and gold text kept (pages, news); tokens kept
    and documents dropped (clean text)."""
    out: dict[str, dict[str, float]] = {}
    for name, pairs in (("pydocs-heldout", qset.pages), ("news-heldout", qset.news)):
        if not pairs:
            continue
        results = _run_chunk_stage(
            writer,
            [p.page_text for p in pairs],
            [p.labels for p in pairs],
            count_tokens,
            window_tokens,
        )
        out[name] = removal_metrics(
            pairs, [_removed(r, p.page_text) for r, p in zip(results, pairs)]
        )
        out[name]["docs_dropped"] = sum(r.dropped for r in results) / len(results)
        out[name]["windows_ignored"] = sum(len(r.ignored_windows) for r in results)
    for kind, texts in qset.clean.items():
        if not texts:
            continue
        clean_labels = [[True if ln.strip() else None for ln in split_lines(t)] for t in texts]
        results = _run_chunk_stage(writer, texts, clean_labels, count_tokens, window_tokens)
        before = count_tokens(list(texts))
        after = count_tokens([r.text for r in results])
        kept = sum(0 if r.dropped else a for r, a in zip(results, after))
        out[f"clean-{kind}"] = {
            "docs": len(texts),
            "tokens_kept": kept / max(sum(before), 1),
            "docs_dropped": sum(r.dropped for r in results) / len(results),
        }
    return out


def doc_stage_quality(
    writer: DocWriter, qset: QualitySet, truncate: Callable[[str], str]
) -> dict[str, dict[str, float]]:
    """Keep/drop F1 on the labelled documents, and the share dropped per group."""
    if not qset.docs:
        return {}
    shown = [truncate(text) for _, text, _ in qset.docs]
    labels = [keep for _, _, keep in qset.docs]
    programs = writer(shown, labels)
    out = {"doc-labelled": doc_metrics(programs, ["keep" if k else "drop" for k in labels])}
    dropped = [execute_doc_program("", p).dropped for p in programs]
    for group in sorted({g for g, _, _ in qset.docs}):
        mine = [d for (g, _, _), d in zip(qset.docs, dropped) if g == group]
        out.setdefault(f"docs-{group}", {})["docs_dropped"] = sum(mine) / len(mine)
        out[f"docs-{group}"]["docs"] = len(mine)
    return out


def build_quality_set(
    downloads,
    n_pages: int = 6,
    n_news: int = 4,
    n_clean: int = 6,
    n_doc_pages: int = 16,
    max_chars: int = 6000,
    heldout_fraction: float = 0.3,
    seed: int = 0,
) -> QualitySet:
    """A seeded sample of the held-out data; pages longer than ``max_chars`` are left out of the
    chunk-stage sets (a CPU budget), not of the document stage's. Built once per process for the
    same arguments (aligning the pages' labels takes seconds, and both refiner levels of a run
    such as ``prox demo`` evaluate on the same set); each call gets its own copy."""
    return copy.deepcopy(
        _quality_set(
            Path(downloads),
            n_pages,
            n_news,
            n_clean,
            n_doc_pages,
            max_chars,
            heldout_fraction,
            seed,
        )
    )


@functools.lru_cache(maxsize=4)
def _quality_set(
    downloads: Path,
    n_pages: int,
    n_news: int,
    n_clean: int,
    n_doc_pages: int,
    max_chars: int,
    heldout_fraction: float,
    seed: int,
) -> QualitySet:
    from prox_assets.core.real_pairs import news_pairs, page_split, pydocs_pair
    from prox_assets.core.samples import MATH_IN_CORPUS, PYDOCS_HTML, heldout_prose, math_problems

    rng = random.Random(seed)
    rels = sorted(
        p.relative_to(PYDOCS_HTML).as_posix().removesuffix(".html")
        for p in PYDOCS_HTML.rglob("*.html")
    )
    heldout = [
        r
        for r in rels
        if not r.startswith("_") and page_split(f"pydocs:{r}", heldout_fraction, seed) == "heldout"
    ]
    pairs = [p for p in (pydocs_pair(r) for r in heldout) if p is not None]
    content = [p for p in pairs if p.keep]
    index = [p for p in pairs if not p.keep]
    short = [p for p in content if len(p.page_text) <= max_chars]
    qset = QualitySet()
    qset.pages = rng.sample(short, min(n_pages, len(short)))
    every_news = list(news_pairs(downloads))  # read once: the chunk and the document stage's
    news = [p for p in every_news if p.keep]
    qset.news = rng.sample(
        [p for p in news if len(p.page_text) <= max_chars],
        min(n_news, sum(len(p.page_text) <= max_chars for p in news)),
    )
    austen = heldout_prose(downloads, n=n_clean, target_chars=1500)
    maths = [r["text"] for r in math_problems(limit=n_clean, offset=MATH_IN_CORPUS)]
    qset.clean = {"austen": austen, "math": maths}
    docs = [
        ("pydocs-index", p.page_text, False)
        for p in rng.sample(index, min(n_doc_pages // 2, len(index)))
    ]
    docs += [
        ("pydocs-content", p.page_text, True)
        for p in rng.sample(content, min(n_doc_pages - len(docs), len(content)))
    ]
    docs += [("news", p.page_text, p.keep) for p in every_news]
    docs += [("austen", t, True) for t in austen] + [("math", t, True) for t in maths]
    qset.docs = docs
    return qset


def refiner_quality(
    backend,
    level: str,
    qset: QualitySet,
    new_tokens: int,
    seed: int,
    doc_max_tokens: int = DEFAULT_DOC_MAX_TOKENS,
    window_tokens: int = DEFAULT_WINDOW_TOKENS,
) -> Quality:
    """The refiner (``backend``), the perfect imitator and the random control (``seed``) on
    ``qset`` through the ``level`` stage's own path: documents cut at ``doc_max_tokens``, or
    chunk windows of ``window_tokens`` with ``new_tokens`` per program."""
    writers = {
        "refiner": model_writers(backend, new_tokens),
        "perfect-imitator": imitator_writers(),
        "random-control": random_writers(
            noise_rate(qset.pages),
            sum(not k for _, _, k in qset.docs) / max(len(qset.docs), 1),
            seed,
        ),
    }
    if level == "doc":
        return {
            m: doc_stage_quality(w[0], qset, lambda t: backend.truncate(t, doc_max_tokens))
            for m, w in writers.items()
        }
    count = hf_token_counter(backend.tokenizer)
    return {m: chunk_stage_quality(w[1], qset, count, window_tokens) for m, w in writers.items()}


def quality_rows(level: str, quality: Quality) -> list[tuple]:
    """The level's headline figures (``HEADLINES``), one row each: "dataset metric" and each
    model's value (NaN where a model has none)."""
    return [
        (
            f"{d} {m}",
            *(round(quality[model].get(d, {}).get(m, float("nan")), 3) for model in MODELS),
        )
        for d, m in HEADLINES[level]
    ]


def quality_headlines(level: str, quality: Quality) -> dict[str, float]:
    """The refiner's headline figures by name, ``heldout_<dataset>_<metric>``."""
    return {
        f"heldout_{d}_{m}".replace("-", "_"): round(quality["refiner"][d][m], 3)
        for d, m in HEADLINES[level]
        if m in quality["refiner"].get(d, {})
    }


def refinement_training_evidence(
    load,
    serve,
    variants: dict[str, Sequence[str]],
    heldout: Sequence[str],
    train,
    seeds: Sequence[int] = (0, 1),
    prose_tokens: int = 256,
    log: Callable[[str], None] = print,
) -> dict:
    """What ProX is for: the base model trained under one token budget on the same pages as
    ``raw`` text, as ``refined`` text and as their ``clean`` sources (the ceiling), each seed,
    evaluated by the perplexity of ``heldout`` clean text (pages no variant trained on).
    Refined works when it lands between raw and clean, closer to clean, by more than the spread.
    ``load(checkpoint=None, train=False)``: the base model (with a checkpoint on top) as (model,
    tokenizer); ``serve(loaded)``: an engine backend over it."""
    import tempfile
    import time
    from dataclasses import replace

    from prox_assets.core.evaluation import prose_perplexity
    from prox_assets.core.training import seed_summary, train_lm

    def perplexity(checkpoint) -> float:
        return prose_perplexity(serve(load(checkpoint)), heldout, prose_tokens)

    rows: dict[str, list[float]] = {"base": [perplexity(None)]}
    log(f"base model: held-out perplexity {rows['base'][0]:.3f}")
    for seed in seeds:
        for name, texts in variants.items():
            t = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:
                model, tokenizer = load(None, train=True)
                train_lm(model, tokenizer, list(texts), replace(train, seed=seed), folder)
                rows.setdefault(name, []).append(perplexity(folder))
            log(
                f"seed {seed} {name}: held-out perplexity {rows[name][-1]:.3f} ({time.perf_counter() - t:.0f}s)"
            )
    summary = seed_summary(rows)
    out = {
        "tokens_per_checkpoint": train.max_steps * train.batch_size * train.max_seq_len,
        "seeds": list(seeds),
        "heldout_texts": len(heldout),
        "perplexity": summary,
        "characters": {v: sum(map(len, t)) for v, t in variants.items()},
    }
    if {"raw", "refined", "clean"} <= set(summary):
        raw, refined, clean = (summary[v]["mean"] for v in ("raw", "refined", "clean"))
        spread = summary["raw"]["std"] + summary["refined"]["std"]
        out["share_of_gap_closed"] = (
            round((raw - refined) / (raw - clean), 3) if raw != clean else None
        )
        out["raw_minus_refined"] = round(raw - refined, 4)
        out["seed_spread"] = spread
        out["refined_beats_raw_beyond_spread"] = raw - refined > spread
    return out


def refinement_variants(
    backend,
    count_tokens: TokenCounter,
    window_tokens: int,
    new_tokens: int,
    n_pages: int,
    n_heldout: int,
    max_chars: int,
    heldout_fraction: float = 0.3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, list[str]], list[str]]:
    """({"raw", "refined", "clean"}: texts of the same docs pages, clean texts of other pages), all
    from the held-out side of the SFT split. Clean is what the perfect imitator leaves (the Sphinx
    body, pilcrows normalised); refined is what the chunk refiner in ``backend`` leaves (a page it
    drops: empty)."""
    import time

    from prox_assets.core.real_pairs import page_split, pydocs_pairs

    rng = random.Random(seed)
    # only pages of no SFT set: the refiner has never seen the pages it refines here, and the
    # perplexity pages are disjoint from the training pages
    pairs = [
        p
        for p in pydocs_pairs()
        if p.keep
        and len(p.page_text) <= max_chars
        and page_split(p.name, heldout_fraction, seed) == "heldout"
    ]
    rng.shuffle(pairs)
    held = pairs[:n_heldout]
    train = pairs[n_heldout : n_heldout + n_pages]
    texts, labels = [p.page_text for p in train], [p.labels for p in train]
    clean = _run_chunk_stage(imitator_writers()[1], texts, labels, count_tokens, window_tokens)
    held_clean = _run_chunk_stage(
        imitator_writers()[1],
        [p.page_text for p in held],
        [p.labels for p in held],
        count_tokens,
        window_tokens,
    )
    t = time.perf_counter()
    refined = _run_chunk_stage(
        model_writers(backend, new_tokens)[1], texts, labels, count_tokens, window_tokens
    )
    quality = removal_metrics(train, [_removed(r, p.page_text) for r, p in zip(refined, train)])
    log(
        f"refined {len(texts)} pages in {time.perf_counter() - t:.0f}s: "
        + ", ".join(f"{k} {v:.3f}" for k, v in quality.items() if k != "pages")
    )
    return (
        {
            "raw": texts,
            "refined": ["" if r.dropped else r.text for r in refined],
            "clean": [r.text for r in clean],
        },
        [r.text for r in held_clean],
    )
