"""The trusted executor: turns parsed ProX programs into edited text, with an audit record.

Defaults follow the reference implementation, because the published numbers rest on them:

- document stage: only a clear ``drop_doc()`` (and no ``keep_doc()``) drops; anything else keeps;
- chunk stage: errors are counted (unparsable or unknown calls, out-of-range or reversed line
  ranges, empty or explosive ``normalize``); with ``max_errors`` (2) or more the whole program is
  ignored and the original text kept;
- after edits, the document is dropped when at most ``min_word_fraction`` (5%) of its words or at
  most ``min_words_kept`` (10) words remain. The rule applies only when edits changed the text:
  short documents are the document stage's call, not the chunk stage's.

The executor is total: it returns a result for every input string and program string, and text
changes only where a ``remove_lines`` or ``normalize`` of the program names it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

from prox_assets.core.chunking import split_lines
from prox_assets.core.programs import Call, Limits, ProgramIssue, parse_program


@dataclass(frozen=True)
class ExecutorConfig:
    max_errors: int = 2
    min_words_kept: int = 10
    min_word_fraction: float = 0.05
    # "window": a normalize applies to the window whose program named it (default);
    # "document": to the whole document, as the reference does.
    normalize_scope: Literal["window", "document"] = "window"
    # A normalize may not grow the text by more than this many characters.
    max_growth_chars: int = 65_536
    missing_source_is_error: bool = False
    limits: Limits = Limits()


@dataclass(frozen=True)
class Edit:
    kind: Literal["remove_lines", "normalize"]
    line_start: int = -1
    line_end: int = -1
    source: str = ""
    target: str = ""
    count: int = 0
    window: int = -1

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExecutionResult:
    text: str
    dropped: bool = False
    reason: str | None = None
    edits: list[Edit] = field(default_factory=list)
    errors: list[ProgramIssue] = field(default_factory=list)
    warnings: list[ProgramIssue] = field(default_factory=list)
    ignored: bool = False  # the program was discarded (too many errors)
    n_calls: int = 0

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "dropped": self.dropped,
            "reason": self.reason,
            "edits": [e.to_dict() for e in self.edits],
            "errors": [e.to_dict() for e in self.errors],
            "warnings": [w.to_dict() for w in self.warnings],
            "ignored": self.ignored,
            "n_calls": self.n_calls,
        }


DEFAULT_CONFIG = ExecutorConfig()


def execute_doc_program(
    text: str, program: str, config: ExecutorConfig = DEFAULT_CONFIG
) -> ExecutionResult:
    """Run a document-stage program: keep or drop the whole document."""
    parsed = parse_program(program, "doc", config.limits)
    result = ExecutionResult(text=text, errors=list(parsed.errors), n_calls=len(parsed.calls))
    if parsed.fatal or len(parsed.errors) >= config.max_errors:
        result.ignored = True
        return result
    names = {c.name for c in parsed.calls}
    if "drop_doc" in names and "keep_doc" in names:
        result.warnings.append(ProgramIssue("conflict", "both keep_doc() and drop_doc(): kept"))
    elif "drop_doc" in names:
        result.dropped, result.reason = True, "drop_doc"
    return result


def execute_chunk_program(
    text: str, program: str, config: ExecutorConfig = DEFAULT_CONFIG
) -> ExecutionResult:
    """Run one chunk-stage program against the whole document (a single window)."""
    n_lines = text.count("\n") + 1  # == len(split_lines(text)), without building the list
    return execute_chunk_programs(text, [(0, n_lines - 1, program)], config)


def execute_chunk_programs(
    text: str,
    window_programs: Sequence[tuple[int, int, str]],
    config: ExecutorConfig = DEFAULT_CONFIG,
) -> ExecutionResult:
    """Run the chunk-stage programs of a document's windows, once, against the original text.

    ``window_programs`` holds ``(line_start, line_end, program)`` per window (inclusive,
    document-global line numbers, as the chunker produced them).
    """
    lines = split_lines(text)
    n_lines = len(lines)
    result = ExecutionResult(text=text)
    errors, warnings = result.errors, result.warnings

    windows = [(s, e) for s, e, _ in window_programs]
    scope = config.normalize_scope
    if scope == "window" and not _windows_valid(windows, n_lines):
        warnings.append(ProgramIssue("bad_windows", "windows overlap or leave range: document scope"))
        scope = "document"

    ranges: set[tuple[int, int]] = set()
    normalizes: dict[int, list[Call]] = {}  # window index (or -1 for document) -> calls
    fatal = False
    for w, (_, _, program) in enumerate(window_programs):
        parsed = parse_program(program, "chunk", config.limits)
        errors.extend(parsed.errors)
        fatal |= parsed.fatal
        result.n_calls += len(parsed.calls)
        for call in parsed.calls:
            if call.name == "remove_lines":
                start, end = call.arg("line_start"), call.arg("line_end")
                if not (0 <= start < n_lines and 0 <= end < n_lines):
                    errors.append(
                        ProgramIssue(
                            "line_out_of_range",
                            f"remove_lines({start}, {end}) outside 0..{n_lines - 1}",
                            call.line,
                        )
                    )
                elif start > end:
                    errors.append(
                        ProgramIssue("reversed_range", f"remove_lines({start}, {end})", call.line)
                    )
                else:
                    ranges.add((start, end))
            elif call.name == "normalize":
                if call.arg("source_str") == "":
                    errors.append(ProgramIssue("empty_source", "normalize() with empty source_str"))
                    continue
                key = w if scope == "window" else -1
                bucket = normalizes.setdefault(key, [])
                if all(c.args != call.args for c in bucket):  # duplicate calls are applied once
                    bucket.append(call)

    if fatal or len(errors) >= config.max_errors:
        result.ignored = True
        return result

    merged = _merge_ranges(ranges)
    result.edits.extend(Edit("remove_lines", line_start=s, line_end=e) for s, e in merged)
    kept = _kept_spans(merged, n_lines)

    if not merged and not normalizes:
        refined = text  # nothing to do: the common keep_chunk() case
    elif scope == "window":
        segments = []
        covered = 0
        for w, (start, end) in sorted(enumerate(windows), key=lambda x: x[1]):
            if start > covered:  # lines no window covered pass through untouched
                segments.append(_surviving(lines, kept, covered, start - 1))
            segment = _surviving(lines, kept, start, end)
            if segment is not None:
                segment = _apply_normalizes(segment, normalizes.get(w, ()), w, result, config)
            segments.append(segment)
            covered = end + 1
        if covered < n_lines:
            segments.append(_surviving(lines, kept, covered, n_lines - 1))
        refined = "\n".join(s for s in segments if s is not None)
    else:
        refined = _surviving(lines, kept, 0, n_lines - 1) or ""
        refined = _apply_normalizes(refined, normalizes.get(-1, ()), -1, result, config)

    if len(errors) >= config.max_errors:  # normalize errors found while applying
        result.ignored, result.edits = True, []
        return result

    result.text = refined
    if refined != text:
        result.dropped, result.reason = _drop_rule(text, refined, config)
    return result


def _has_at_most_words(text: str, k: int) -> bool:
    # split(None, k) stops after k words, so this costs a scan of the first k words only.
    return len(text.split(None, k)) <= k


def _drop_rule(original: str, refined: str, config: ExecutorConfig) -> tuple[bool, str | None]:
    """Drop when at most ``min_words_kept`` words, or at most ``min_word_fraction`` of the
    original's words, remain. Exact, but counts whole texts only in the rare undecided case."""
    if _has_at_most_words(refined, config.min_words_kept):
        return True, "too_few_words_after_edits"
    # The original has at most (len + 1) // 2 words, so a refined text with more words than
    # this bound's fraction is certainly kept.
    bound = int(config.min_word_fraction * ((len(original) + 1) // 2))
    if _has_at_most_words(refined, bound):
        if len(refined.split()) <= config.min_word_fraction * len(original.split()):
            return True, "too_little_text_after_edits"
    return False, None


def _windows_valid(windows: Sequence[tuple[int, int]], n_lines: int) -> bool:
    spans = sorted(windows)
    for i, (start, end) in enumerate(spans):
        if not (0 <= start <= end < n_lines):
            return False
        if i and start <= spans[i - 1][1]:
            return False
    return True


def _merge_ranges(ranges: set[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(s, e) for s, e in merged]


def _kept_spans(merged: list[tuple[int, int]], n_lines: int) -> list[tuple[int, int]]:
    """The inclusive line spans between the merged removed ranges."""
    spans, nxt = [], 0
    for start, end in merged:
        if start > nxt:
            spans.append((nxt, start - 1))
        nxt = end + 1
    if nxt < n_lines:
        spans.append((nxt, n_lines - 1))
    return spans


def _surviving(lines: list[str], kept: list[tuple[int, int]], start: int, end: int) -> str | None:
    """The lines start..end that survive removal, joined; None when none survive."""
    parts: list[str] = []
    for s, e in kept:
        lo, hi = max(s, start), min(e, end)
        if lo <= hi:
            parts.extend(lines[lo : hi + 1])
    return "\n".join(parts) if parts else None


def _is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _apply_normalizes(
    segment: str, calls: Sequence[Call], window: int, result: ExecutionResult, config: ExecutorConfig
) -> str:
    for call in calls:
        source, target = call.arg("source_str"), call.arg("target_str")
        if not _is_valid_unicode(source) or not _is_valid_unicode(target):
            # e.g. "\ud800": a lone surrogate cannot be encoded, so it would fail every writer downstream
            result.errors.append(ProgramIssue("invalid_unicode", "normalize with a lone surrogate", call.line))
            continue
        count = segment.count(source)
        if count == 0:
            issue = ProgramIssue("source_not_found", f"normalize source {source[:60]!r} not found")
            (result.errors if config.missing_source_is_error else result.warnings).append(issue)
            continue
        growth = count * (len(target) - len(source))
        if growth > config.max_growth_chars:
            result.errors.append(
                ProgramIssue("normalize_growth", f"would add {growth} chars", call.line)
            )
            continue
        segment = segment.replace(source, target)
        result.edits.append(
            Edit("normalize", source=source, target=target, count=count, window=window)
        )
    return segment
