"""Running refiners over documents: the document stage, then windows of the chunk stage
(docs/methods.md#the-two-stages-over-a-corpus).

``backend`` is anything with the engine's ``generate(chats, max_new_tokens)``; the executor is
the trusted part. Documents the document stage drops never reach the chunk stage.

One document never costs the others. ``refine_documents`` runs every stage (input check,
truncation, generation, execution, windowing) document by document, and a document whose stage
raises gets a ``DocumentError`` (the stage and the exception) instead of a result; the rest go
on. Generation stays batched: when a batched call raises, each document's prompts are generated
on their own, so a prompt the engine rejects costs only its own document. Systematic failures
are not a document's fault and are raised: when no document of a call (or of a batch) can be
processed, the same path is run on an ordinary probe document, and if that fails too, its
exception fails the caller. ``run_doc_refiner`` and ``run_chunk_refiner`` are the strict forms
(a document's error is raised as ``DocumentFailed``) for callers that measure, not record.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from prox_assets.core.chunking import TokenCounter, Window, chunk_document
from prox_assets.core.executor import (
    ExecutionResult,
    ExecutorConfig,
    execute_chunk_programs,
    execute_doc_program,
)
from prox_assets.core.programs import ProgramIssue
from prox_assets.core.prompts import chunk_refiner_chat, doc_refiner_chat
from prox_assets.core.unicode import is_valid_unicode, printable

# An ordinary document: when nothing could be processed, this decides engine versus documents.
PROBE_TEXT = "A short and ordinary document about the weather.\nIt rained in the morning and cleared up later."
MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class DocumentError:
    """Why one document could not be refined: the stage that raised and what it raised."""

    stage: str  # input, truncate, doc_generate, doc_execute, windows, chunk_generate, chunk_execute, row
    message: str

    @classmethod
    def of(cls, stage: str, exc: BaseException) -> DocumentError:
        return cls(stage, printable(f"{type(exc).__name__}: {exc}")[:MAX_ERROR_CHARS])

    def __str__(self) -> str:
        return f"{self.stage}: {self.message}"

    def to_issue(self) -> ProgramIssue:
        return ProgramIssue("document_error", str(self))


class DocumentFailed(RuntimeError):
    def __init__(self, error: DocumentError):
        super().__init__(str(error))
        self.error = error


def check_text(text) -> str:
    """``text`` if it is a string every tokenizer and writer accepts; raises ValueError if not."""
    if not isinstance(text, str):
        raise ValueError(f"text is {type(text).__name__}, not a string")
    if not is_valid_unicode(text):
        raise ValueError("text is not valid Unicode (a lone surrogate)")
    return text


def _isolated(stage: str, fn: Callable, *args):
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001  (one document's failure, recorded as its error)
        return DocumentError.of(stage, exc)


def _each(items: Sequence, stage: str, fn: Callable) -> list:
    """``fn`` on every item that is not already an error, each failure its item's error."""
    return [x if isinstance(x, DocumentError) else _isolated(stage, fn, x) for x in items]


def _probe(backend, max_new_tokens: int = 1) -> None:
    """Raises if the engine cannot generate for an ordinary document either."""
    backend.generate([doc_refiner_chat(PROBE_TEXT)], max_new_tokens=max_new_tokens)


def _outputs(got, expected: int) -> list:
    if not isinstance(got, (list, tuple)) or len(got) != expected:
        n = len(got) if isinstance(got, (list, tuple)) else type(got).__name__
        raise RuntimeError(f"the engine returned {n} generations for {expected} prompts")
    return list(got)


def generate_per_document(
    backend, chats: Sequence, max_new_tokens: int, stage: str, progress=None
) -> list:
    """Generations for each document's chats (a list of chats, or a ``DocumentError`` passed
    through): one batched call; if it raises, one call per document, a failing one that
    document's error; if every document fails, the engine is probed and its failure raised.
    A generation that is not a string is its document's error; a wrong count is the engine's."""
    live = [i for i, c in enumerate(chats) if not isinstance(c, DocumentError) and c]
    out: list = [c if isinstance(c, DocumentError) else [] for c in chats]
    flat = [chat for i in live for chat in chats[i]]
    if not flat:
        return out
    try:
        got = backend.generate(flat, max_new_tokens=max_new_tokens, progress=progress)
    except Exception as exc:  # noqa: BLE001  (one prompt can fail a batch: retried one document at a time)
        per_doc: dict[int, DocumentError | list] = {}
        for i in live:
            if len(live) == 1:
                per_doc[i] = DocumentError.of(stage, exc)
                continue
            try:
                got_i = backend.generate(list(chats[i]), max_new_tokens=max_new_tokens)
            except Exception as one:  # noqa: BLE001
                per_doc[i] = DocumentError.of(stage, one)
                continue
            per_doc[i] = _outputs(got_i, len(chats[i]))
        if all(isinstance(r, DocumentError) for r in per_doc.values()):
            _probe(backend)  # the engine itself is broken: that fails the caller, not the documents
        for i, r in per_doc.items():
            out[i] = r
    else:
        got, k = _outputs(got, len(flat)), 0
        for i in live:
            out[i] = got[k : k + len(chats[i])]
            k += len(chats[i])
    for i in live:
        bad = (
            []
            if isinstance(out[i], DocumentError)
            else [g for g in out[i] if not isinstance(g, str)]
        )
        if bad:
            out[i] = DocumentError(stage, f"the engine returned {type(bad[0]).__name__}, not text")
    return out


def doc_stage(
    backend,
    shown_texts: Sequence,
    max_new_tokens: int = 16,
    config: ExecutorConfig = ExecutorConfig(),
    progress=None,
) -> list:
    """(program, result) or ``DocumentError`` per document; ``shown_texts`` are what the refiner
    sees (truncated), errors of an earlier stage passed through."""
    chats = _each(shown_texts, "doc_generate", lambda t: [doc_refiner_chat(check_text(t))])
    programs = generate_per_document(backend, chats, max_new_tokens, "doc_generate", progress)
    return [
        p
        if isinstance(p, DocumentError)
        else _isolated(
            "doc_execute", lambda t, prog: (prog, execute_doc_program(t, prog, config)), t, p[0]
        )
        for t, p in zip(shown_texts, programs)
    ]


@dataclass
class ChunkRun:
    windows: list[Window]
    programs: list[str]
    result: ExecutionResult


def chunk_stage(
    backend,
    texts: Sequence,
    count_tokens: TokenCounter,
    window_tokens: int,
    max_new_tokens: int = 96,
    config: ExecutorConfig = ExecutorConfig(),
    progress=None,
) -> list:
    """``ChunkRun`` or ``DocumentError`` per document: window every document, generate one
    program per window (all windows of all documents in one batched call), and execute each
    document's programs once."""
    windows = _each(
        texts, "windows", lambda t: chunk_document(check_text(t), count_tokens, window_tokens)
    )
    chats = _each(windows, "chunk_generate", lambda ws: [chunk_refiner_chat(w.text) for w in ws])
    programs = generate_per_document(backend, chats, max_new_tokens, "chunk_generate", progress)

    def run(text: str, ws: list[Window], mine: list[str]) -> ChunkRun:
        result = execute_chunk_programs(
            text, [(w.line_start, w.line_end, p) for w, p in zip(ws, mine)], config
        )
        return ChunkRun(ws, list(mine), result)

    return [
        p if isinstance(p, DocumentError) else _isolated("chunk_execute", run, t, ws, p)
        for t, ws, p in zip(texts, windows, programs)
    ]


def _strict(results: list) -> list:
    for r in results:
        if isinstance(r, DocumentError):
            raise DocumentFailed(r)
    return results


def run_doc_refiner(
    backend,
    shown_texts: Sequence[str],
    max_new_tokens: int = 16,
    config: ExecutorConfig = ExecutorConfig(),
    progress=None,
) -> list[tuple[str, ExecutionResult]]:
    """(program, result) per document; ``shown_texts`` are what the refiner sees (truncated).
    Strict: a document that cannot be refined raises ``DocumentFailed``."""
    return _strict(doc_stage(backend, shown_texts, max_new_tokens, config, progress))


def run_chunk_refiner(
    backend,
    texts: Sequence[str],
    count_tokens: TokenCounter,
    window_tokens: int,
    max_new_tokens: int = 96,
    config: ExecutorConfig = ExecutorConfig(),
    progress=None,
) -> list[ChunkRun]:
    """Window every document, generate one program per window (all windows of all documents
    in one batched call), and execute each document's programs once. Strict, as above."""
    return _strict(
        chunk_stage(backend, texts, count_tokens, window_tokens, max_new_tokens, config, progress)
    )


@dataclass
class DocumentRefinement:
    """One document through both stages: what ran, and the error that stopped it, if any."""

    doc_program: str | None = None
    doc_result: ExecutionResult | None = None
    chunk: ChunkRun | None = None
    error: DocumentError | None = None
    issues: list[ProgramIssue] = field(
        default_factory=list
    )  # executor errors of the stages that ran


def refine_documents(
    doc_backend,
    chunk_backend,
    texts: Sequence,
    *,
    doc_max_tokens: int,
    window_tokens: int,
    doc_max_new_tokens: int,
    chunk_max_new_tokens: int,
    count_tokens: TokenCounter,
    config: ExecutorConfig = ExecutorConfig(),
    is_probe: bool = False,
) -> list[DocumentRefinement]:
    """Both stages over ``texts``, one ``DocumentRefinement`` per text, in order. A document
    whose stage raises gets its ``error``; the others are refined. When a stage fails every
    document it was given (every document, or every one that reached the chunk stage), an
    ordinary probe document goes through both stages, and its failure is raised: the refiner is
    broken, not the documents."""
    checked = _each(texts, "input", check_text)
    shown = _each(checked, "truncate", lambda t: doc_backend.truncate(t, doc_max_tokens))
    docs = doc_stage(doc_backend, shown, doc_max_new_tokens, config)
    out = [
        DocumentRefinement(error=d)
        if isinstance(d, DocumentError)
        else DocumentRefinement(doc_program=d[0], doc_result=d[1])
        for d in docs
    ]
    # the probe document goes through both stages, whatever the document stage says
    to_chunk = [
        i
        for i, r in enumerate(out)
        if r.error is None and (is_probe or r.doc_result is None or not r.doc_result.dropped)
    ]
    runs = chunk_stage(
        chunk_backend,
        [checked[i] for i in to_chunk],
        count_tokens,
        window_tokens,
        chunk_max_new_tokens,
        config,
    )
    for i, run in zip(to_chunk, runs):
        if isinstance(run, DocumentError):
            out[i].error = run
        else:
            out[i].chunk = run
    for r in out:
        r.issues = (r.doc_result.errors if r.doc_result else []) + (
            r.chunk.result.errors if r.chunk else []
        )
    failed_all = (out and all(isinstance(d, DocumentError) for d in docs)) or (
        runs and all(isinstance(r, DocumentError) for r in runs)
    )
    if failed_all and not is_probe:
        check = refine_documents(
            doc_backend,
            chunk_backend,
            [PROBE_TEXT],
            doc_max_tokens=doc_max_tokens,
            window_tokens=window_tokens,
            doc_max_new_tokens=doc_max_new_tokens,
            chunk_max_new_tokens=chunk_max_new_tokens,
            count_tokens=count_tokens,
            config=config,
            is_probe=True,
        )
        if check[0].error:
            raise DocumentFailed(check[0].error)
    return out


# --- one row per document -------------------------------------------------------------------------
ERROR_REASON = "refine_error"


@dataclass(frozen=True)
class RefinedRow:
    """What became of one document: the columns of a refined shard after doc_id, shard and
    refiner_version (``refine.ROW_SCHEMA``), JSON-encoded where a column holds a list."""

    text: str
    kept: bool
    status: str  # kept | dropped | error
    reason: str | None
    error: str | None
    doc_program: str | None
    chunk_programs: str
    windows: str
    edits: str
    errors: str
    program_ignored: bool
    windows_ignored: int
    lines_removed: int
    n_chars_before: int
    n_chars_after: int
    n_tokens_before: int
    n_tokens_after: int

    def to_dict(self) -> dict:
        return asdict(self)


def refined_row(text: str, ref: DocumentRefinement, count: TokenCounter) -> RefinedRow:
    """The row of a document both stages went through (kept or dropped)."""
    doc_result, run = ref.doc_result, ref.chunk
    assert doc_result is not None and ref.doc_program is not None  # both stages ran
    refined = check_text(run.result.text if run else text)  # never a text the writers reject
    dropped = doc_result.dropped or (run is not None and run.result.dropped)
    reason = doc_result.reason if doc_result.dropped else (run.result.reason if run else None)
    tokens_before, tokens_after = count([text, refined])
    return RefinedRow(
        text=refined,
        kept=not dropped,
        status="dropped" if dropped else "kept",
        reason=reason,
        error=None,
        doc_program=printable(ref.doc_program),
        chunk_programs=json.dumps(run.programs if run else []),
        windows=json.dumps([[w.line_start, w.line_end] for w in run.windows] if run else []),
        edits=json.dumps([e.to_dict() for e in run.result.edits] if run else []),
        errors=json.dumps([e.to_dict() for e in ref.issues]),
        program_ignored=bool(run and run.result.ignored),
        windows_ignored=len(run.result.ignored_windows) if run else 0,
        lines_removed=sum(
            e.line_end - e.line_start + 1 for e in run.result.edits if e.kind == "remove_lines"
        )
        if run
        else 0,
        n_chars_before=len(text),
        n_chars_after=len(refined) if not dropped else 0,
        n_tokens_before=tokens_before,
        n_tokens_after=tokens_after if not dropped else 0,
    )


def error_row(text, ref: DocumentRefinement, count: TokenCounter) -> RefinedRow:
    """A document that could not be refined: not kept (nothing downstream trains on it), its raw
    text kept for the audit and a rerun, the stage and exception in ``error``."""
    shown = printable(text) if isinstance(text, str) else ""
    try:
        tokens_before = count([shown])[0]
    except Exception:  # noqa: BLE001  (the tokenizer may be what failed on this text)
        tokens_before = 0
    return RefinedRow(
        text=shown,
        kept=False,
        status="error",
        reason=ERROR_REASON,
        error=str(ref.error),
        doc_program=printable(ref.doc_program) if isinstance(ref.doc_program, str) else None,
        chunk_programs="[]",
        windows="[]",
        edits="[]",
        errors=json.dumps(
            [e.to_dict() for e in ref.issues + ([ref.error.to_issue()] if ref.error else [])]
        ),
        program_ignored=False,
        windows_ignored=0,
        lines_removed=0,
        n_chars_before=len(shown),
        n_chars_after=0,
        n_tokens_before=tokens_before,
        n_tokens_after=0,
    )


def refined_rows(
    doc_backend,
    chunk_backend,
    texts: Sequence,
    *,
    doc_max_tokens: int,
    window_tokens: int,
    doc_max_new_tokens: int,
    chunk_max_new_tokens: int,
    count_tokens: TokenCounter,
) -> list[RefinedRow]:
    """One row per text, in order: kept, dropped, or (status ``error``) a document one of whose
    stages raised, or whose row could not be made; the others are refined all the same."""
    refinements = refine_documents(
        doc_backend,
        chunk_backend,
        texts,
        doc_max_tokens=doc_max_tokens,
        window_tokens=window_tokens,
        doc_max_new_tokens=doc_max_new_tokens,
        chunk_max_new_tokens=chunk_max_new_tokens,
        count_tokens=count_tokens,
    )
    rows = []
    for text, ref in zip(texts, refinements):
        row = None
        if ref.error is None:
            try:
                row = refined_row(text, ref, count_tokens)
            except Exception as exc:  # noqa: BLE001  (this document's error, not the batch's)
                ref.error = DocumentError.of("row", exc)
        rows.append(row if row is not None else error_row(text, ref, count_tokens))
    return rows
