"""Benchmarks. Each reports a ratio against a baseline timed in the same run, because the
machines here are noisy; absolute numbers are secondary."""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prox_assets.core.chunking import split_lines
from prox_assets.core.executor import (
    execute_chunk_program,
    execute_chunk_programs,
    execute_doc_program,
)
from prox_assets.core.programs import parse_program
from prox_assets.reference_executor import execute_meta_operations


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
    from prox_assets.core.ingest import read_documents
    from prox_assets.core.names import shard_name

    pieces: list[str] = []
    for path in files:
        with open(path, "rb") as f:
            result = read_documents(f, path.name, shard_name(path.name))
        for doc in result.documents:
            pieces += line_pieces(doc["text"], piece_chars)
    return pieces


# Characters the reference misreads inside a normalize string: "," and "=" split its arguments,
# ")" ends the call, quotes are stripped, backslashes are not unescaped.
_REFERENCE_MISREADS = frozenset('",=)\\')


def realistic_program(text: str, rng: random.Random) -> str:
    """Four calls, the way a chunk refiner writes them: a header range, a footer range, a
    normalize of a string present in the text, and a keep. Spelled so that the reference reads
    them as the project's parser does (double quotes, no character it misreads): both executors
    must then give the same output."""
    lines = split_lines(text)
    n = len(lines)
    calls = []
    if n > 4:
        head = rng.randint(0, min(3, n - 1))
        calls.append(f"remove_lines(line_start={0:03d}, line_end={head:03d})")
        tail = rng.randint(max(head + 1, n - 4), n - 1)
        calls.append(f"remove_lines(line_start={tail}, line_end={n - 1})")
    candidates = [ln for ln in lines if len(ln) > 20]
    for _ in range(10 if candidates else 0):
        line = rng.choice(candidates)
        start = rng.randint(0, len(line) - 12)
        source = line[start : start + 12]
        if source.strip() and _REFERENCE_MISREADS.isdisjoint(source):
            calls.append(f'normalize(source_str="{source}", target_str="")')
            break
    calls.append("keep_chunk()")
    return "\n".join(calls)


def forty_line_documents(texts: Sequence[str], n_docs: int, n_lines: int = 40) -> list[str]:
    """``n_docs`` documents of ``n_lines`` consecutive lines of ``texts`` (reused when short)."""
    lines = [ln for t in texts for ln in split_lines(t)]
    docs = []
    for i in range(n_docs):
        start = (i * n_lines) % max(1, len(lines) - n_lines)
        docs.append("\n".join(lines[start : start + n_lines]))
    return docs


def _best_of(fn: Callable[[], None], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _best_of_interleaved(fns: Sequence[Callable[[], None]], repeats: int = 5) -> list[float]:
    """The best time of each function, run in turns so that a noisy neighbour slows all alike."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return best


def project_output(text: str, program: str) -> str:
    """The project's chunk executor, read as the reference reports: "" for a dropped document."""
    result = execute_chunk_program(text, program)
    return "" if result.dropped else result.text


def executor_against_reference(docs: Sequence[str], seed: int = 0, repeats: int = 5) -> dict:
    """The project's chunk executor against the reference's, on the same documents and
    programs: throughput of both (timed in turns, best of ``repeats``) and how many outputs agree."""
    rng = random.Random(seed)
    docs = [t for t in docs if t.split()]  # the reference divides by the word count
    programs = [realistic_program(t, rng) for t in docs]
    identical = sum(
        project_output(t, p) == execute_meta_operations(t, p) for t, p in zip(docs, programs)
    )

    def reference() -> None:
        for t, p in zip(docs, programs):
            execute_meta_operations(t, p)

    def project() -> None:
        for t, p in zip(docs, programs):
            execute_chunk_program(t, p)

    t_ref, t_project = _best_of_interleaved([reference, project], repeats)
    return {
        "documents": len(docs),
        "mean_lines": round(statistics.mean(t.count("\n") + 1 for t in docs), 1),
        "mean_bytes": round(statistics.mean(len(t.encode("utf-8")) for t in docs)),
        "identical_outputs": f"{identical}/{len(docs)}",
        "reference_docs_per_s": round(len(docs) / t_ref),
        "project_docs_per_s": round(len(docs) / t_project),
        "speedup_vs_reference": round(t_ref / t_project, 2),
    }


def executor_benchmark(texts: Sequence[str], n_docs: int = 20000, seed: int = 0) -> dict:
    """The chunk executor against the reference's string-splitting executor (ProX's
    ``execute_meta_operations``, reproduced in prox_assets.reference_executor) on two workloads of
    ``n_docs`` documents: 40-line documents cut from the sample corpus, and the sample corpus's
    ~3,000-character pieces. Then parse-only and two-stage throughput, and hostile inputs."""
    report: dict = {}
    workloads = {
        "lines40": forty_line_documents(texts, n_docs),
        "corpus": [texts[i % len(texts)] for i in range(n_docs)],
    }
    for name, docs in workloads.items():
        for key, value in executor_against_reference(docs, seed).items():
            report[f"{name}_{key}"] = value

    rng = random.Random(seed)
    docs = workloads["corpus"]
    programs = [realistic_program(t, rng) for t in docs]
    doc_programs = ["keep_doc()" if rng.random() < 0.7 else "drop_doc()" for _ in docs]
    mb = sum(len(t.encode("utf-8")) for t in docs) / 1e6

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

    t_parse = _best_of(parse_only)
    t_chunk = _best_of(chunk_stage)
    t_both = _best_of(both_stages)
    calls = statistics.mean(len(parse_program(p, "chunk").calls) for p in programs[:2000])
    report |= {
        "mean_calls_per_program": round(calls, 2),
        "parse_only_programs_per_s": round(n_docs / t_parse),
        "chunk_execute_MB_per_s": round(mb / t_chunk, 1),
        "doc_plus_chunk_docs_per_s": round(n_docs / t_both),
    }
    return report | _hostile_parse_timings() | _hostile_executor_timings()


def _hostile_parse_timings() -> dict:
    """Worst inputs we know for a regex parser, at two sizes: the time ratio shows linearity."""
    cases = {
        "unbalanced_args": lambda n: "remove_lines(" + "1, " * (n // 3),
        "unterminated_string": lambda n: 'normalize("' + 'a\\"' * (n // 3),
        "nested_parens": lambda n: "keep_chunk" + "(" * n,
        "many_statements": lambda n: "keep_chunk()\n" * (n // 13),
        # the canonical fast path's worst: scanned to the end, then parsed the general way
        "long_bare_name": lambda n: "a" * n + "()",
        "long_string_then_escape": lambda n: (
            'normalize(source_str="' + "a" * n + '\\t", target_str="")'
        ),
        "canonical_unterminated": lambda n: 'normalize(source_str="' + "a" * n,
    }
    out = {}
    for name, make in cases.items():
        small, large = make(16_000), make(64_000)
        t_small = _best_of(lambda p=small: parse_program(p, "chunk"), 5)
        t_large = _best_of(lambda p=large: parse_program(p, "chunk"), 5)
        out[f"hostile_{name}_64KB_ms"] = round(t_large * 1e3, 2)
        out[f"hostile_{name}_4x_size_time_ratio"] = round(t_large / max(t_small, 1e-9), 1)
    return out


def _hostile_executor_timings() -> dict:
    """Executor inputs that grow bookkeeping rather than text, at two sizes (4x apart)."""

    def many_windows(n: int) -> tuple[str, list]:
        # one window per line, each removing its own line or normalizing in it
        text = "\n".join(f"w{i} some words here" for i in range(n))
        progs = [
            f"remove_lines(line_start={i}, line_end={i})"
            if i % 2
            else f'normalize(source_str="w{i} ", target_str="")'
            for i in range(n)
        ]
        return text, [(i, i, p) for i, p in enumerate(progs)]

    def many_calls(n: int) -> tuple[str, list]:
        # the call limit's worth of one-line removals over a long document, one window
        text = "\n".join(f"line {i} of text" for i in range(n))
        prog = "\n".join(
            f"remove_lines(line_start={i}, line_end={i})" for i in range(0, n, max(1, n // 500))
        )
        return text, [(0, n - 1, prog)]

    out = {}
    for name, make in {"many_windows": many_windows, "many_calls": many_calls}.items():
        (t1, w1), (t4, w4) = make(2_000), make(8_000)
        t_small = _best_of(lambda t=t1, w=w1: execute_chunk_programs(t, w), 3)
        t_large = _best_of(lambda t=t4, w=w4: execute_chunk_programs(t, w), 3)
        out[f"hostile_{name}_8000_lines_ms"] = round(t_large * 1e3, 2)
        out[f"hostile_{name}_4x_size_time_ratio"] = round(t_large / max(t_small, 1e-9), 1)
    return out


def matmul_peak_gflops(
    n: int | None = None, repeats: int = 8, dtype: str = "float32", device: str = "cpu"
) -> float:
    """What this machine's BLAS (or GPU) sustains on a large matrix product in ``dtype``: the
    ceiling. On a GPU, fp32 is what torch's default precision gives (no TF32).

    On a CPU the size is chosen from a small probe product so that one product takes about 50 ms
    (at most 2048): a CPU without bf16 units (AVX2 only) runs bf16 products tens of times slower
    than fp32, and a fixed 2048 x 2048 bf16 measurement took over 15 minutes there."""
    import torch

    if n is None and device.startswith("cuda"):
        n = 8192
    elif n is None:
        probe = torch.randn(256, 256, dtype=getattr(torch, dtype))
        probe @ probe  # warm-up
        started = time.perf_counter()
        probe @ probe
        rate = 2 * 256**3 / max(time.perf_counter() - started, 1e-9)  # FLOP/s
        n = int(min(2048, max(256, (rate * 0.05 / 2) ** (1 / 3))))
    a, b = (torch.randn(n, n, dtype=getattr(torch, dtype), device=device) for _ in range(2))

    def products() -> None:
        for _ in range(repeats):
            a @ b
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    products()  # warm-up
    best = _best_of(products, 3)
    return 2 * n**3 * repeats / best / 1e9


def refine_once(
    texts: Sequence[str],
    doc_backend,
    chunk_backend,
    doc_max_tokens: int,
    window_tokens: int,
    chunk_new_tokens: int = 160,
    doc_new_tokens: int = 8,
) -> dict:
    """Both refinement stages over ``texts`` with refined_corpus's budgets: throughput, model
    FLOPs, and what was generated (to compare precisions)."""
    from prox_assets.core.chunking import hf_token_counter
    from prox_assets.core.prompts import chunk_refiner_chat, doc_refiner_chat
    from prox_assets.core.refinement import run_chunk_refiner, run_doc_refiner

    tok = chunk_backend.tokenizer
    count = hf_token_counter(tok)
    shown = [doc_backend.truncate(t, doc_max_tokens) for t in texts]
    started = time.perf_counter()
    doc_runs = run_doc_refiner(doc_backend, shown, doc_new_tokens)
    kept = [t for t, (_, r) in zip(texts, doc_runs) if not r.dropped]
    chunk_runs = run_chunk_refiner(chunk_backend, kept, count, window_tokens, chunk_new_tokens)
    seconds = time.perf_counter() - started

    def prompt_tokens(chats) -> int:
        rendered = [
            tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats
        ]
        return sum(count(rendered))

    doc_prompt = prompt_tokens([doc_refiner_chat(t) for t in shown])
    chunk_prompt = prompt_tokens(
        [chunk_refiner_chat(w.text) for r in chunk_runs for w in r.windows]
    )
    generated = sum(count([p for p, _ in doc_runs])) + sum(
        count([p for r in chunk_runs for p in r.programs])
    )
    params = chunk_backend.parameter_count() or 0
    tokens = doc_prompt + chunk_prompt + generated
    flops = 2 * params * tokens  # weights only; attention adds a few percent at these lengths
    return {
        "seconds": seconds,
        "flops": flops,
        "tokens": tokens,
        "generated": generated,
        "params": params,
        "doc_programs": [p for p, _ in doc_runs],
        "kept": kept,
        "chunk_runs": chunk_runs,
    }


def program_agreement(reference: dict, other: dict) -> dict:
    """How often two refinements of the same texts agree: per document program, and per chunk
    window (same program text, or programs whose execution on that window gives the same text).
    Windows are compared where both runs kept the document at the document stage."""
    from prox_assets.core.executor import execute_chunk_programs

    docs_same = sum(a == b for a, b in zip(reference["doc_programs"], other["doc_programs"]))
    theirs = dict(zip(other["kept"], other["chunk_runs"]))
    windows = identical = outputs_agree = 0
    for text, mine in zip(reference["kept"], reference["chunk_runs"]):
        if text not in theirs:
            continue
        for w, a, b in zip(mine.windows, mine.programs, theirs[text].programs):
            windows += 1
            identical += a == b
            if a == b:
                outputs_agree += 1
                continue
            ra, rb = (execute_chunk_programs(text, [(w.line_start, w.line_end, p)]) for p in (a, b))
            outputs_agree += (ra.text, ra.dropped) == (rb.text, rb.dropped)
    return {
        "doc_programs_identical": round(docs_same / max(len(reference["doc_programs"]), 1), 3),
        "windows_compared": windows,
        "window_programs_identical": round(identical / max(windows, 1), 3),
        "window_outputs_agree": round(outputs_agree / max(windows, 1), 3),
    }


def refine_benchmark(
    texts: Sequence[str],
    load: Callable[[str], tuple],
    doc_max_tokens: int,
    window_tokens: int,
    chunk_new_tokens: int = 160,
    doc_new_tokens: int = 8,
    dtypes: Sequence[str] = ("float32", "auto"),
    device: str = "cpu",
) -> dict:
    """Documents/s and model FLOP/s of both refinement stages in each of ``dtypes`` (the first is
    the reference), against the ``device``'s fp32 and bf16 matmul peaks, measured in this run;
    and how far each precision's programs agree with the reference's. ``load(dtype)`` gives the
    (document, chunk) backends in that precision."""
    peaks = {d: matmul_peak_gflops(dtype=d, device=device) for d in ("float32", "bfloat16")}
    runs = {}
    for dtype in dtypes:
        doc_backend, chunk_backend = load(dtype)
        refine_once(
            texts[:1], doc_backend, chunk_backend, doc_max_tokens, window_tokens, 4, 2
        )  # warm-up
        runs[dtype] = refine_once(
            texts,
            doc_backend,
            chunk_backend,
            doc_max_tokens,
            window_tokens,
            chunk_new_tokens,
            doc_new_tokens,
        )
    reference = runs[dtypes[0]]
    words = sum(len(t.split()) for t in texts)
    by_dtype = {}
    for dtype, run in runs.items():
        achieved = run["flops"] / run["seconds"] / 1e9
        by_dtype[dtype] = {
            "seconds": round(run["seconds"], 1),
            "documents_per_second": round(len(texts) / run["seconds"], 3),
            "words_per_second": round(words / run["seconds"], 1),
            "kept_after_doc_stage": len(run["kept"]),
            "windows": sum(len(r.windows) for r in run["chunk_runs"]),
            "model_tokens_processed": run["tokens"],
            "tokens_per_second": round(run["tokens"] / run["seconds"]),
            "generated_tokens": run["generated"],
            "achieved_GFLOP_per_s": round(achieved, 1),
            "fraction_of_fp32_peak": round(achieved / peaks["float32"], 3),
            "fraction_of_bf16_peak": round(achieved / peaks["bfloat16"], 3),
            "speedup_vs_reference": round(reference["seconds"] / run["seconds"], 2),
            **(
                {}
                if run is reference
                else {"agreement_with_reference": program_agreement(reference, run)}
            ),
        }
    return {
        "documents": len(texts),
        "reference_dtype": dtypes[0],
        "model_params": reference["params"],
        "model_GFLOP_per_document": round(reference["flops"] / len(texts) / 1e9, 1),
        "matmul_peak_GFLOP_per_s_same_run": {d: round(v, 1) for d, v in peaks.items()},
        "bf16_peak_over_fp32_peak": round(peaks["bfloat16"] / peaks["float32"], 2),
        "by_dtype": by_dtype,
    }


DOMAINS = {"pydocs": "pydocs-", "news": "news-", "austen": "austen-", "math": "math-"}


def domain_pool(
    files: Sequence[Path], total: int, piece_chars: int = 600, seed: int = 0
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


# --- ingestion: throughput against the whole-file reader, peak memory in a subprocess ----------
_INGEST_RSS_SCRIPT = """
import json, os, sys, tempfile, time
from prox_assets.benchmarks import peak_rss_mb
from prox_assets.core.ingest import write_shard
path = sys.argv[1]
started = time.perf_counter()
with open(path, "rb") as f, tempfile.TemporaryDirectory() as tmp:
    tally = write_shard(f, os.path.basename(path), "s", os.path.join(tmp, "d.parquet"), os.path.join(tmp, "i.parquet"))
print(json.dumps({"n_read": tally.n_read, "n_ingested": tally.n_ingested, "n_quarantined": tally.n_quarantined,
                  "samples": len(tally.samples), "reasons": dict(tally.reasons),
                  "seconds": round(time.perf_counter() - started, 2),
                  "rss_mb": peak_rss_mb()}))
"""


def peak_rss_mb() -> int:
    """This process's peak RSS since exec (VmHWM). Not getrusage's ru_maxrss: Linux carries the
    parent's peak across fork and exec into it, so a small child of a big parent reads big."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    raise RuntimeError("no VmHWM in /proc/self/status")


def ingest_in_subprocess(path: Path) -> dict:
    """Stream one file through ``write_shard`` in a fresh interpreter: its counts and peak RSS."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _INGEST_RSS_SCRIPT, str(path)],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"ingesting {path} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def jsonl_shard(path: Path, mb: int) -> int:
    """A JSONL shard of about ``mb`` MiB of prose-like documents; returns the document count."""
    n = size = 0
    with open(path, "w") as f:
        while size < mb << 20:
            line = (
                json.dumps(
                    {
                        "text": f"document {n} " + "lorem ipsum dolor sit amet " * (20 + n % 200),
                        "url": f"http://x.example/{n}",
                    }
                )
                + "\n"
            )
            f.write(line)
            size += len(line)
            n += 1
    return n


def gzip_bomb(path: Path, lines: int = 1_000_000) -> None:
    """A .jsonl.gz of a few KB holding ``lines`` malformed lines."""
    import gzip

    with gzip.open(path, "wb", compresslevel=9) as f:
        for _ in range(lines // 1000):
            f.write(b"{oops\n" * 1000)


def warc_header_bomb(path: Path, header_mb: int = 512) -> None:
    """A .warc.gz of ~0.5 MB: one good record, then a record whose header line is ``header_mb`` MiB."""
    import gzip

    body = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<p>kept</p>"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(
            b"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: http://a.example/\r\n"
            b"Content-Type: application/http; msgtype=response\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
            + b"\r\n\r\n"
        )
        f.write(b"WARC/1.0\r\nWARC-Type: response\r\nX-Big: ")
        chunk = b"a" * (1 << 20)
        for _ in range(header_mb):
            f.write(chunk)
        f.write(b"\r\n\r\n")


def ingest_benchmark(files: Sequence[Path], shard_mb: int, workdir: Path) -> dict:
    """Streaming ingestion against the whole-file reader on ``files`` (same run), and peak RSS of
    a generated ``shard_mb`` JSONL shard and of the two bombs, each in its own interpreter."""
    import os
    import tempfile

    import polars as pl

    from prox_assets.core.ingest import read_documents, write_shard

    total_mb = sum(p.stat().st_size for p in files) / 2**20

    def streaming() -> None:
        for p in files:
            with open(p, "rb") as f, tempfile.TemporaryDirectory() as tmp:
                write_shard(
                    f, p.name, "s", os.path.join(tmp, "d.parquet"), os.path.join(tmp, "i.parquet")
                )

    def whole_file() -> None:  # what raw_corpus did before streaming: read all, then write
        for p in files:
            with open(p, "rb") as f, tempfile.TemporaryDirectory() as tmp:
                result = read_documents(f, p.name, "s")
                pl.DataFrame(result.documents).write_parquet(
                    os.path.join(tmp, "d.parquet"), compression="zstd"
                )

    whole_s, stream_s = _best_of(whole_file), _best_of(streaming)
    shard = workdir / f"shard-{shard_mb}mb.jsonl"
    n_docs = jsonl_shard(shard, shard_mb)
    bomb, header = workdir / "bomb.jsonl.gz", workdir / "header.warc.gz"
    gzip_bomb(bomb)
    warc_header_bomb(header)
    big = ingest_in_subprocess(shard)
    shard.unlink()
    return {
        "sample_corpus_mb": round(total_mb, 1),
        "whole_file_mb_per_s": round(total_mb / whole_s, 1),
        "streaming_mb_per_s": round(total_mb / stream_s, 1),
        "streaming_vs_whole_file": round(whole_s / stream_s, 2),
        "shard": {
            "mb": shard_mb,
            "documents": n_docs,
            **big,
            "mb_per_s": round(shard_mb / big["seconds"], 1),
        },
        "gzip_bomb": {
            "file_kb": round(bomb.stat().st_size / 1024, 1),
            **ingest_in_subprocess(bomb),
        },
        "warc_header_bomb": {
            "file_kb": round(header.stat().st_size / 1024, 1),
            **ingest_in_subprocess(header),
        },
    }


# --- the model benchmarks of `prox bench`: the settings' engine, outside any Dagster run ---------
def engine_and_device(settings=None):
    """The engine and device the settings name, built by the functions that build the Dagster
    resources (``ModelEngine.from_settings``; the OpenAI server and key read from the settings
    when a model loads, as no run resolves an ``EnvVar`` here)."""
    from prox_resources.device import DeviceSettings
    from prox_resources.engine import ModelEngine
    from prox_resources.settings import ProxSettings

    settings = settings or ProxSettings.from_environment()
    return ModelEngine.from_settings(settings, env_vars=False), DeviceSettings.from_settings(
        settings
    )


def newest_refiner_version() -> str | None:
    from prox_assets.lineage import newest_refiner_version as newest
    from prox_assets.runs import instance

    return newest(instance())


def evidence_train_config(steps: int, batch_size: int, seq_len: int, lr: float):
    """The evidence benchmarks' checkpoints: LoRA r=8 on every block, one token budget."""
    from prox_assets.core.training_loop import lora_train_config

    return lora_train_config(
        method="lora",
        lora_r=8,
        lora_layers=None,
        lr=lr,
        max_steps=steps,
        batch_size=batch_size,
        warmup_steps=2,
        max_seq_len=seq_len,
    )


def local_models(engine, device):
    """(load, serve) over the engine's base model, for the evidence benchmarks' core functions."""

    def load(checkpoint=None, train=False):
        return engine.load_model(device, adapter=checkpoint, train=train)

    return load, lambda loaded: engine.serve(loaded, device)


def _sample_files() -> list[Path]:
    from prox_assets.core.samples import build_sample_corpus
    from prox_resources.settings import downloads_dir, prox_home

    return build_sample_corpus(prox_home() / "samples", downloads_dir())


def refine_precision_report(docs: int, refiner_version: str | None, dtypes: list[str]) -> dict:
    """``prox bench refine``: the newest (or the given) refiner pair, or the engine's own model if
    there is none, on ``docs`` raw documents in each precision of ``dtypes``."""
    import polars as pl

    from prox_assets.core.chunking import DEFAULT_DOC_MAX_TOKENS, DEFAULT_WINDOW_TOKENS
    from prox_assets.core.refiner_training import FALLBACK_PROGRAM_TOKENS
    from prox_assets.layout import raw_paths, refiner_prefix
    from prox_assets.refinement import refiner_pair
    from prox_resources.catalog import Catalog
    from prox_resources.device import DeviceSettings
    from prox_resources.models import fetch_model
    from prox_resources.store import ObjectStore

    store = ObjectStore()
    engine, device = engine_and_device()
    version = refiner_version or newest_refiner_version()
    if version:  # trained refiners are local folders: a local backend (openai: transformers)
        engine = engine.local()
        pair = refiner_pair(Catalog(), version)
        doc_model = str(fetch_model(store, refiner_prefix("doc", pair.doc)))
        chunk_model = str(fetch_model(store, refiner_prefix("chunk", pair.chunk)))
        sizes = (pair.doc_max_tokens, pair.window_tokens, pair.chunk_max_new_tokens)
    else:  # the engine's own model, wherever it runs
        doc_model = chunk_model = engine.model
        sizes = (DEFAULT_DOC_MAX_TOKENS, DEFAULT_WINDOW_TOKENS, FALLBACK_PROGRAM_TOKENS)
    texts = pl.concat([store.read_parquet(k).select("text") for k in raw_paths(Catalog()).values()])
    texts = texts.sample(n=min(docs, texts.height), seed=0)["text"].to_list()

    def load(dtype: str):
        settings = DeviceSettings(device=device.device, dtype=dtype)  # type: ignore[arg-type]
        return engine.load(settings, model=doc_model), engine.load(settings, model=chunk_model)

    report = refine_benchmark(texts, load, *sizes, dtypes=dtypes, device=device.resolve_device())
    return {
        "refiner_version": version or f"base model {engine.model}",
        "backend": engine.backend,
        "device": device.resolve_device(),
        **report,
    }


@dataclass(frozen=True)
class InfluenceBench:
    """What ``prox bench influence`` measures on: each field an option of the command (``--pool``
    for ``pool_size``, ``--field-name`` for the others; a tuple as a comma-separated list), with
    its default and help (``metadata``), written once here."""

    pool_size: int = field(
        default=400,
        metadata={
            "option": "--pool",
            "help": "Pool samples, split evenly over four domains (pydocs, news, Austen, MATH); "
            "all get exact scores.",
        },
    )
    landmarks: tuple[int, ...] = field(
        default=(12, 24, 48, 96), metadata={"help": "Landmark counts to compare."}
    )
    draws: int = field(default=5, metadata={"help": "Landmark draws per count (mean and spread)."})
    embeddings: tuple[str, ...] = field(
        default=("jvp-mean", "jvp-last", "hidden-mean"),
        metadata={"help": "Comma-separated: jvp-mean, jvp-last, hidden-mean."},
    )
    task: str = field(
        default="math", metadata={"help": "Target task (math: held-out MATH problems)."}
    )
    target_domain: str = field(
        default="math", metadata={"help": "The pool domain the target belongs to."}
    )
    n_target: int = 8
    max_len: int = 128
    piece_chars: int = 600
    warmup_steps: int = 16
    stability_samples: int = field(
        default=200,
        metadata={"help": "Samples re-scored under a second warm-up seed (0 = the whole pool)."},
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "auto: bf16 autocast where this CPU or GPU runs bf16 fast, else fp32.",
            "choices": ("auto", "float32", "bfloat16"),
        },
    )


def influence_report(bench: InfluenceBench, log: Callable[[str], None]) -> dict:
    """``prox bench influence``: the influence study on a four-domain pool of the sample corpus,
    on the base model as landmark_influence loads it."""
    from prox_assets.core.influence import InfluenceConfig
    from prox_assets.core.influence_eval import influence_study
    from prox_assets.core.targets import load_task, split_target

    texts, domains = domain_pool(_sample_files(), bench.pool_size, bench.piece_chars)
    targets, _ = split_target(load_task(bench.task), bench.n_target, 0)
    engine, device = engine_and_device()
    model, tokenizer = engine.local().load_model(device)
    config = InfluenceConfig(
        max_len=bench.max_len, warmup_steps=bench.warmup_steps, dtype=bench.dtype
    )
    report = influence_study(
        model,
        tokenizer,
        texts,
        domains,
        bench.target_domain,
        [t.prompt for t in targets],
        [t.answer for t in targets],
        config,
        list(bench.landmarks),
        bench.draws,
        list(bench.embeddings),
        stability_samples=bench.stability_samples,
        log=log,
    )
    report.pop("exact_scores")
    return report


def selection_report(
    pool_size: int,
    task: str,
    n_target: int,
    heldout: int,
    landmarks: int,
    budget_fraction: float,
    train,
    seeds: list[int],
    log: Callable[[str], None],
) -> dict:
    """``prox bench selection``: influence-selected against random subsets of a four-domain pool,
    trained under one token budget (``train``), held-out target loss over ``seeds``."""
    from prox_assets.core.influence import InfluenceConfig
    from prox_assets.core.influence_eval import selection_experiment
    from prox_assets.core.targets import load_task, split_target

    texts, domains = domain_pool(_sample_files(), pool_size, 600)
    targets, held = split_target(load_task(task), n_target, heldout)
    engine, device = engine_and_device()
    return selection_experiment(
        *local_models(engine.local(), device),
        texts,
        domains,
        [t.prompt for t in targets],
        [t.answer for t in targets],
        [t.prompt for t in held],
        [t.answer for t in held],
        InfluenceConfig(landmarks=landmarks, max_len=128),
        train,
        budget_fraction,
        seeds,
        log=log,
    )


def refinement_report(
    refiner_version: str | None,
    pages: int,
    heldout: int,
    max_chars: int,
    train,
    seeds: list[int],
    log: Callable[[str], None],
) -> dict:
    """``prox bench refinement``: docs pages as raw, refined (the chunk refiner of the newest or
    given version) and clean text, trained under one token budget, perplexity on held-out pages."""
    from prox_assets.core.chunking import hf_token_counter
    from prox_assets.core.errors import UserError
    from prox_assets.core.refiner_quality import refinement_training_evidence, refinement_variants
    from prox_assets.layout import refiner_prefix
    from prox_assets.refinement import refiner_pair
    from prox_resources.catalog import Catalog
    from prox_resources.models import fetch_model
    from prox_resources.store import ObjectStore

    version = refiner_version or newest_refiner_version()
    if not version:
        raise UserError(
            "no refiner version: materialize refiner[doc] and refiner[chunk] (or run prox demo)"
        )
    pair = refiner_pair(Catalog(), version)
    if pair.heldout_pages is None:
        raise UserError(
            f"{version}: its SFT set has no held-out docs pages; re-materialize sft_programs"
        )
    engine, device = engine_and_device()
    engine = engine.local()
    backend = engine.load(
        device, model=str(fetch_model(ObjectStore(), refiner_prefix("chunk", pair.chunk)))
    )
    variants, held = refinement_variants(
        backend,
        hf_token_counter(backend.tokenizer),
        pair.window_tokens,
        pair.chunk_max_new_tokens,
        pages,
        heldout,
        max_chars,
        pair.heldout_pages,
        pair.split_seed,
        log,
    )
    report = refinement_training_evidence(
        *local_models(engine, device), variants, held, train, seeds, log=log
    )
    return {"refiner_version": version, **report}


def sites_report(
    pages_per_site: int,
    whole_pages: bool,
    refiner_version: str | None,
    seeds: int,
    log: Callable[[str], None] = print,
) -> dict:
    """``prox bench sites``: every cleaner on every site of ``core/site_pages.SITES`` whose
    package is installed, learning from the other sites only (``core/site_eval``). The pages are
    each site's content pages (a seeded sample of ``pages_per_site``), as extracted
    (``whole_pages``: as whole pages, the ingest's old text). With a refiner version, its chunk
    refiner writes programs too (the doc stage is not run: every judged page is a content page)."""
    import random as _random

    from transformers import AutoTokenizer

    from prox_assets.core.chunking import DEFAULT_WINDOW_TOKENS, hf_token_counter
    from prox_assets.core.refiner_quality import model_writers
    from prox_assets.core.site_eval import leave_one_site_out, results_table
    from prox_assets.core.site_pages import SITES, missing_reason, site_pages
    from prox_resources.models import resolve_model
    from prox_resources.settings import DEFAULT_MODEL

    extracted: dict[str, list] = {}
    whole: dict[str, list] = {}
    skipped = {}
    for site in SITES:
        why = missing_reason(site)
        if why:
            skipped[site.name] = why
            continue
        pages = [p for p in site_pages(site) if p.pair.keep and p.whole is not None]
        _random.Random(f"sites:{site.name}").shuffle(pages)
        pages = pages[:pages_per_site]
        extracted[site.name] = [p.pair for p in pages]
        whole[site.name] = [p.whole for p in pages]
        log(f"{site.name}: {len(pages)} content pages")
    refiner = None
    window = DEFAULT_WINDOW_TOKENS
    if refiner_version:
        from prox_assets.layout import refiner_prefix
        from prox_assets.refinement import refiner_pair
        from prox_resources.catalog import Catalog
        from prox_resources.models import fetch_model
        from prox_resources.store import ObjectStore

        engine, device = engine_and_device()
        pair = refiner_pair(Catalog(), refiner_version)
        backend = engine.local().load(
            device, model=str(fetch_model(ObjectStore(), refiner_prefix("chunk", pair.chunk)))
        )
        window, new_tokens = pair.window_tokens, pair.chunk_max_new_tokens
        tokenizer = backend.tokenizer

        chunk_writer = model_writers(backend, new_tokens)[1]

        def refiner(texts, windows):
            return chunk_writer(texts, [], windows)
    else:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_MODEL))
    started = time.perf_counter()
    results = leave_one_site_out(
        extracted,
        hf_token_counter(tokenizer),
        window,
        whole=whole if whole_pages else None,
        refiner=refiner,
        seeds=seeds,
        log=log,
    )
    return {
        "text": "whole pages (no extraction)" if whole_pages else "main-content extraction",
        "refiner_version": refiner_version,
        "window_tokens": window,
        "skipped_sites": skipped,
        "seconds": round(time.perf_counter() - started, 1),
        "table": results_table(results, ("noise_removed", "body_kept", "body_chars_kept")),
        "rows": [
            {
                "site": r.site,
                "cleaner": r.cleaner,
                "pages": r.pages,
                "noise_lines": r.noise_lines,
                **{m: list(v) for m, v in r.figures.items()},
            }
            for r in results
        ],
    }
