"""Running refiners over documents: the document stage, then windows of the chunk stage.

``backend`` is anything with the engine's ``generate(chats, max_new_tokens)``; the executor is
the trusted part. Documents the document stage drops never reach the chunk stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from prox_assets.core.chunking import TokenCounter, Window, chunk_document
from prox_assets.core.executor import (
    ExecutionResult,
    ExecutorConfig,
    execute_chunk_programs,
    execute_doc_program,
)
from prox_assets.core.prompts import chunk_refiner_chat, doc_refiner_chat


def run_doc_refiner(backend, shown_texts: Sequence[str], max_new_tokens: int = 16,
                    config: ExecutorConfig = ExecutorConfig(), progress=None) -> list[tuple[str, ExecutionResult]]:
    """(program, result) per document; ``shown_texts`` are what the refiner sees (truncated)."""
    chats = [doc_refiner_chat(t) for t in shown_texts]
    programs = backend.generate(chats, max_new_tokens=max_new_tokens, progress=progress) if chats else []
    return [(p, execute_doc_program(t, p, config)) for t, p in zip(shown_texts, programs)]


@dataclass
class ChunkRun:
    windows: list[Window]
    programs: list[str]
    result: ExecutionResult


def run_chunk_refiner(
    backend, texts: Sequence[str], count_tokens: TokenCounter, window_tokens: int,
    max_new_tokens: int = 96, config: ExecutorConfig = ExecutorConfig(), progress=None,
) -> list[ChunkRun]:
    """Window every document, generate one program per window (all windows of all documents
    in one batched call), and execute each document's programs once."""
    windows = [chunk_document(t, count_tokens, window_tokens) for t in texts]
    chats = [chunk_refiner_chat(w.text) for ws in windows for w in ws]
    programs = backend.generate(chats, max_new_tokens=max_new_tokens, progress=progress) if chats else []
    runs, k = [], 0
    for text, ws in zip(texts, windows):
        mine = programs[k : k + len(ws)]
        k += len(ws)
        result = execute_chunk_programs(text, [(w.line_start, w.line_end, p) for w, p in zip(ws, mine)], config)
        runs.append(ChunkRun(ws, list(mine), result))
    return runs
