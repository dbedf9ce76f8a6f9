"""Benchmarks. Each reports a ratio against a baseline timed in the same run, because the
machines here are noisy; absolute numbers are secondary."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from prox_assets.core.chunking import split_lines
from prox_assets.core.executor import execute_chunk_program, execute_doc_program
from prox_assets.core.programs import parse_program


def line_pieces(text: str, piece_chars: int) -> list[str]:
    """``text`` cut at line boundaries into pieces of about ``piece_chars`` (short tails dropped)."""
    pieces, buf, size = [], [], 0
    for line in split_lines(text):
        buf.append(line)
        size += len(line) + 1
        if size >= piece_chars:
            pieces.append("\n".join(buf))
            buf, size = [], 0
    if size > piece_chars // 3:
        pieces.append("\n".join(buf))
    return pieces


def sample_texts(files: Sequence[Path], piece_chars: int = 3000) -> list[str]:
    """Documents of the sample corpus cut at line boundaries into pieces of ~``piece_chars``."""
    from prox_assets.core.ingest import read_documents, shard_name

    pieces: list[str] = []
    for path in files:
        with open(path, "rb") as f:
            result = read_documents(f, path.name, shard_name(path.name))
        for doc in result.documents:
            pieces += line_pieces(doc["text"], piece_chars)
    return pieces


def realistic_program(text: str, rng: random.Random) -> str:
    """About four calls, the way a chunk refiner writes them: a header range, a footer range,
    a normalize of a string present in the text, and a keep."""
    lines = split_lines(text)
    n = len(lines)
    calls = []
    if n > 4:
        head = rng.randint(0, min(3, n - 1))
        calls.append(f"remove_lines(line_start={0:03d}, line_end={head:03d})")
        tail = rng.randint(max(head + 1, n - 4), n - 1)
        calls.append(f"remove_lines(line_start={tail}, line_end={n - 1})")
    candidates = [ln for ln in lines if len(ln) > 20]
    if candidates:
        line = rng.choice(candidates)
        start = rng.randint(0, len(line) - 12)
        source = line[start : start + 12]
        calls.append(f"normalize(source_str={source!r}, target_str=\"\")")
    calls.append("keep_chunk()")
    return "\n".join(calls)


def _best_of(fn: Callable[[], None], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def executor_benchmark(texts: Sequence[str], n_docs: int = 20000, seed: int = 0) -> dict:
    rng = random.Random(seed)
    docs = [texts[i % len(texts)] for i in range(n_docs)]
    programs = [realistic_program(t, rng) for t in docs]
    doc_programs = ["keep_doc()" if rng.random() < 0.7 else "drop_doc()" for _ in docs]
    mb = sum(len(t.encode("utf-8")) for t in docs) / 1e6

    def baseline() -> None:
        for t in docs:
            "\n".join(t.split("\n"))

    def parse_only() -> None:
        for p in programs:
            parse_program(p, "chunk")

    def chunk_stage() -> None:
        for t, p in zip(docs, programs):
            execute_chunk_program(t, p)

    def both_stages() -> None:
        for t, d, p in zip(docs, doc_programs, programs):
            if not execute_doc_program(t, d).dropped:
                execute_chunk_program(t, p)

    t_base = _best_of(baseline)
    t_parse = _best_of(parse_only)
    t_chunk = _best_of(chunk_stage)
    t_both = _best_of(both_stages)
    calls = statistics.mean(len(parse_program(p, "chunk").calls) for p in programs[:2000])

    hostile = _hostile_parse_timings()
    return {
        "documents": n_docs,
        "mean_doc_bytes": round(mb * 1e6 / n_docs),
        "mean_calls_per_program": round(calls, 2),
        "baseline_split_join_docs_per_s": round(n_docs / t_base),
        "parse_only_programs_per_s": round(n_docs / t_parse),
        "chunk_execute_docs_per_s": round(n_docs / t_chunk),
        "chunk_execute_MB_per_s": round(mb / t_chunk, 1),
        "doc_plus_chunk_docs_per_s": round(n_docs / t_both),
        "chunk_execute_vs_baseline_time_ratio": round(t_chunk / t_base, 1),
        **hostile,
    }


def _hostile_parse_timings() -> dict:
    """Worst inputs we know for a regex parser, at two sizes: the time ratio shows linearity."""
    cases = {
        "unbalanced_args": lambda n: "remove_lines(" + "1, " * (n // 3),
        "unterminated_string": lambda n: 'normalize("' + "a\\\"" * (n // 3),
        "nested_parens": lambda n: "keep_chunk" + "(" * n,
        "many_statements": lambda n: "keep_chunk()\n" * (n // 13),
    }
    out = {}
    for name, make in cases.items():
        small, large = make(16_000), make(64_000)
        t_small = _best_of(lambda: parse_program(small, "chunk"), 5)
        t_large = _best_of(lambda: parse_program(large, "chunk"), 5)
        out[f"hostile_{name}_64KB_ms"] = round(t_large * 1e3, 2)
        out[f"hostile_{name}_4x_size_time_ratio"] = round(t_large / max(t_small, 1e-9), 1)
    return out


def matmul_peak_gflops(n: int = 2048, repeats: int = 8) -> float:
    """What this machine's BLAS sustains on a large fp32 matrix product: the practical ceiling."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = _best_of(lambda: [a @ b for _ in range(repeats)], 3)
    return 2 * n**3 * repeats / best / 1e9


def refine_benchmark(texts: Sequence[str], doc_backend, chunk_backend, doc_max_tokens: int,
                     window_tokens: int, chunk_new_tokens: int = 160, doc_new_tokens: int = 8) -> dict:
    """Documents/s and tokens/s of both refinement stages, and model FLOPs against the peak."""
    from prox_assets.core.chunking import hf_token_counter
    from prox_assets.core.prompts import chunk_refiner_chat, doc_refiner_chat
    from prox_assets.core.refine import run_chunk_refiner, run_doc_refiner

    peak = matmul_peak_gflops()
    tok = chunk_backend.tokenizer
    count = hf_token_counter(tok)
    shown = [doc_backend.truncate(t, doc_max_tokens) for t in texts]
    started = time.perf_counter()
    doc_runs = run_doc_refiner(doc_backend, shown, doc_new_tokens)  # refined_corpus's budgets
    kept = [t for t, (_, r) in zip(texts, doc_runs) if not r.dropped]
    chunk_runs = run_chunk_refiner(chunk_backend, kept, count, window_tokens, chunk_new_tokens)
    seconds = time.perf_counter() - started

    def prompt_tokens(chats) -> int:
        rendered = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        return sum(count(rendered))

    doc_prompt = prompt_tokens([doc_refiner_chat(t) for t in shown])
    chunk_prompt = prompt_tokens([chunk_refiner_chat(w.text) for r in chunk_runs for w in r.windows])
    generated = sum(count([p for p, _ in doc_runs])) + sum(count([p for r in chunk_runs for p in r.programs]))
    params = sum(p.numel() for p in chunk_backend.model.parameters())
    tokens = doc_prompt + chunk_prompt + generated
    flops = 2 * params * tokens  # weights only; attention adds a few percent at these lengths
    doc_tokens = sum(count(list(texts)))
    return {
        "documents": len(texts),
        "kept_after_doc_stage": len(kept),
        "windows": sum(len(r.windows) for r in chunk_runs),
        "seconds": round(seconds, 1),
        "documents_per_second": round(len(texts) / seconds, 3),
        "document_tokens_per_second": round(doc_tokens / seconds, 1),
        "model_tokens_processed": tokens,
        "generated_tokens": generated,
        "model_params": params,
        "model_GFLOP_per_document": round(flops / len(texts) / 1e9, 1),
        "achieved_GFLOP_per_s": round(flops / seconds / 1e9, 1),
        "matmul_peak_GFLOP_per_s_same_run": round(peak, 1),
        "fraction_of_peak": round(flops / seconds / 1e9 / peak, 3),
    }


DOMAINS = {"pydocs": "pydocs-", "news": "news-", "austen": "austen-", "math": "math-"}


def domain_pool(files: Sequence[Path], total: int, piece_chars: int = 600, seed: int = 0
                ) -> tuple[list[str], list[str]]:
    """A pool of ``total`` line-aligned pieces of ~``piece_chars`` from the four domains of the
    sample corpus (Python docs pages, news pages, Austen, MATH), with each piece's domain: equal
    shares, a domain with fewer pieces than its share giving the rest to the others."""
    pieces = {}
    for domain, prefix in DOMAINS.items():
        found = sample_texts([f for f in files if Path(f).name.startswith(prefix)], piece_chars)
        pieces[domain] = random.Random(seed).sample(found, len(found))
    quota = dict.fromkeys(pieces, 0)
    left = total
    while left > 0:
        open_domains = [d for d in pieces if quota[d] < len(pieces[d])]
        if not open_domains:
            break
        share = max(1, left // len(open_domains))
        for d in open_domains:
            take = min(share, len(pieces[d]) - quota[d], left)
            quota[d] += take
            left -= take
    texts, domains = [], []
    for d in pieces:
        texts += pieces[d][: quota[d]]
        domains += [d] * quota[d]
    return texts, domains
