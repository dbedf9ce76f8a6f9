"""The trusted executor: turns parsed ProX programs into edited text, with an audit record.

Defaults follow the reference implementation, because the published numbers rest on them
(docs/methods.md#executor-semantics):

- document stage: only a clear ``drop_doc()`` (and no ``keep_doc()``) drops; anything else keeps;
- chunk stage: errors are counted per window (unparsable or unknown
  calls, out-of-range or reversed line ranges, a ``remove_lines`` naming lines outside its own
  window, empty or explosive ``normalize``, a lone surrogate, a missing source when
  ``missing_source_is_error``). A window whose program has ``max_errors`` (2) or more, or a fatal
  parse, is ignored: none of its calls apply, and the other windows' programs still do. Errors
  found only while applying (a ``normalize`` that would grow the text too much or whose source is
  missing) count too; a window they push to ``max_errors`` is taken out and the others applied
  again from the original text, so an ignored window never changes the text. ``ignored_windows``
  lists the ignored windows; ``ignored`` says every window with calls was ignored (nothing
  changed). *A departure from the reference*: ProX joins a document's chunk programs and runs
  them as one (``apply_chunk_refining.py`` ``merge_chunks`` -> ``execute_meta_operations``), so its
  error count is per document and two errors anywhere leave the whole document unchanged; here
  one window's bad program costs that window only. Windows that overlap or leave the document fall back to document scope: line ranges
  are checked against the document and ``normalize`` applies to the whole document. Parser
  warnings (a truncated final call, a renamed ``remove_lines`` argument) are reported, not counted;
- each error and warning of the chunk stage carries the index of the window it came from;
- after edits, the document is dropped when at most ``min_word_fraction`` (5%) of its words or at
  most ``min_words_kept`` (10) words remain. The rule applies only when edits changed the text:
  short documents are the document stage's call, not the chunk stage's.

The executor is total: it returns a result for every input string and program string, and text
changes only where a ``remove_lines`` or ``normalize`` of the program names it.

Bounds the reference does not have (departures, for untrusted output only): ``normalize`` grows a
document by at most ``max_growth_chars`` in all (each window by its share in window scope; the
reference caps nothing, and a per-call cap let a program multiply its document), and the
characters all ``normalize`` calls of a document scan are capped (``max_normalize_work_chars``);
past that, the chunk stage changes nothing and reports a ``work_budget`` error.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

from prox_assets.core.chunking import split_lines
from prox_assets.core.programs import Limits, ProgramIssue, parse_program


@dataclass(frozen=True)
class ExecutorConfig:
    max_errors: int = 2
    min_words_kept: int = 10
    min_word_fraction: float = 0.05
    # "window": a normalize applies to the window whose program named it (default);
    # "document": to the whole document, as the reference does.
    normalize_scope: Literal["window", "document"] = "window"
    # normalize may grow a *document* by at most this many characters in all (each of its n
    # windows by max_growth_chars // n in window scope). Per call, as before, let 512 calls of
    # each of a few windows turn 87 KB into 125 MB.
    max_growth_chars: int = 65_536
    # Characters normalize may scan for one document, over all windows and roll-back passes;
    # past it the chunk stage changes nothing (a ``work_budget`` error). About a second of work.
    max_normalize_work_chars: int = 256 * 1024 * 1024
    missing_source_is_error: bool = False
    limits: Limits = Limits()


# slots, not frozen: a frozen dataclass sets each of its seven fields through object.__setattr__,
# which made building the edits a tenth of a typical document's execution time.
@dataclass(slots=True)
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
    # Every window whose program had calls was ignored (too many errors): nothing changed.
    ignored: bool = False
    # Indices into window_programs of the windows whose programs were ignored.
    ignored_windows: list[int] = field(default_factory=list)
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
            "ignored_windows": list(self.ignored_windows),
            "n_calls": self.n_calls,
        }


DEFAULT_CONFIG = ExecutorConfig()


def execute_doc_program(
    text: str, program: str, config: ExecutorConfig = DEFAULT_CONFIG
) -> ExecutionResult:
    """Run a document-stage program: keep or drop the whole document."""
    parsed = parse_program(program, "doc", config.limits)
    result = ExecutionResult(
        text=text,
        errors=list(parsed.errors),
        warnings=list(parsed.warnings),
        n_calls=len(parsed.calls),
    )
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
    lines = split_lines(text)
    return _execute_windows(text, lines, [(0, len(lines) - 1, program)], config)


def execute_chunk_programs(
    text: str,
    window_programs: Sequence[tuple[int, int, str]],
    config: ExecutorConfig = DEFAULT_CONFIG,
) -> ExecutionResult:
    """Run the chunk-stage programs of a document's windows, once, against the original text.

    ``window_programs`` holds ``(line_start, line_end, program)`` per window (inclusive,
    document-global line numbers, as the chunker produced them). Errors are counted per window:
    a window with ``max_errors`` or more (or a fatal parse) is ignored, the others still apply.
    """
    return _execute_windows(text, split_lines(text), window_programs, config)


def _execute_windows(
    text: str,
    lines: list[str],
    window_programs: Sequence[tuple[int, int, str]],
    config: ExecutorConfig,
) -> ExecutionResult:
    """execute_chunk_programs, with the text's lines split once by the caller."""
    n_lines = len(lines)
    result = ExecutionResult(text=text)

    spans = [(s, e) for s, e, _ in window_programs]
    windows_ok = _windows_valid(spans, n_lines)
    scope = config.normalize_scope
    if not windows_ok:
        result.warnings.append(
            ProgramIssue(
                "bad_windows",
                "windows overlap or leave range: line ranges checked against the document, "
                "normalize in document scope",
            )
        )
        scope = "document"

    max_errors = config.max_errors
    plans, active, ignored = [], [], set()
    for w, (s, e, program) in enumerate(window_programs):
        plan = _plan_window(w, s, e, program, n_lines, windows_ok, config, result)
        plans.append(plan)
        if plan.fatal or len(plan.errors) >= max_errors:
            ignored.add(w)
        else:
            active.append(w)

    # Errors found while applying (normalize growth, missing source...) count toward their
    # window too. A window they push to max_errors is taken out and the rest applied again from
    # the original text, until no window fails: an ignored window never changes the text.
    rolled_back: dict[int, _Applied] = {}
    work = _Work(config.max_normalize_work_chars)  # one budget for every pass of the loop
    while True:
        try:
            refined, merged, norm_edits, applied = _apply(
                text, lines, spans, plans, active, scope, config, work
            )
        except _OverBudget as exc:
            return _over_budget(text, plans, result, str(exc))
        failed = [
            w
            for w in active
            if w in applied and len(plans[w].errors) + len(applied[w].errors) >= max_errors
        ]
        if not failed:
            break
        if scope == "document":  # one window's normalize can fail another's: take out one at a time
            failed = failed[:1]
        for w in failed:
            rolled_back[w] = applied[w]
        ignored.update(failed)
        active = [w for w in active if w not in rolled_back]

    errors, warnings = result.errors, result.warnings
    for w, plan in enumerate(plans):
        result.n_calls += plan.n_calls
        errors += plan.errors
        late = rolled_back.get(w) or applied.get(w)
        if late is not None:
            errors += late.errors
            warnings += late.warnings
    result.ignored_windows = sorted(ignored)
    result.ignored = bool(ignored) and all(plans[w].n_calls == 0 for w in active)
    result.edits = [Edit("remove_lines", line_start=s, line_end=e) for s, e in merged] + norm_edits
    result.text = refined
    if refined != text:
        result.dropped, result.reason = _drop_rule(text, refined, config)
    return result


class _OverBudget(Exception):
    """normalize scanned more than ``max_normalize_work_chars`` for one document."""


@dataclass(slots=True)
class _Work:
    left: int

    def spend(self, chars: int) -> None:
        self.left -= chars
        if self.left < 0:
            raise _OverBudget("normalize would scan more than max_normalize_work_chars")


def _over_budget(
    text: str, plans: list[_WindowPlan], result: ExecutionResult, why: str
) -> ExecutionResult:
    """The chunk stage changes nothing: a program that asks for unbounded work is not applied at
    all (the reference has no such bound; this departs from it only for such programs)."""
    for plan in plans:
        result.n_calls += plan.n_calls
        result.errors += plan.errors
    result.errors.append(ProgramIssue("work_budget", why))
    result.ignored_windows = [w for w, plan in enumerate(plans) if plan.n_calls]
    result.ignored = True
    result.text, result.edits = text, []
    return result


@dataclass(slots=True)
class _WindowPlan:
    """What one window's program asks for, after the checks that need no text."""

    start: int
    end: int
    errors: list[ProgramIssue] = field(default_factory=list)
    ranges: list[tuple[int, int]] = field(default_factory=list)
    # (window, program line, source, target), as _apply_normalizes takes them
    normalizes: list[tuple[int, int, str, str]] = field(default_factory=list)
    fatal: bool = False
    n_calls: int = 0


@dataclass(slots=True)
class _Applied:
    """Issues found while applying one window's normalizes."""

    errors: list[ProgramIssue] = field(default_factory=list)
    warnings: list[ProgramIssue] = field(default_factory=list)


def _plan_window(
    w: int,
    start: int,
    end: int,
    program: str,
    n_lines: int,
    windows_ok: bool,
    config: ExecutorConfig,
    result: ExecutionResult,
) -> _WindowPlan:
    parsed = parse_program(program, "chunk", config.limits)
    plan = _WindowPlan(start, end, fatal=parsed.fatal, n_calls=len(parsed.calls))
    if parsed.errors:
        plan.errors.extend(replace(issue, window=w) for issue in parsed.errors)
    if parsed.warnings:
        result.warnings.extend(replace(issue, window=w) for issue in parsed.warnings)
    # With overlapping or out-of-range windows a window's own range means little: the document's.
    lo, hi = (start, end) if windows_ok else (0, n_lines - 1)
    seen: set[tuple] = set()
    for call in parsed.calls:
        name = call.name
        if name == "remove_lines":
            first, last = call.int_arg("line_start"), call.int_arg("line_end")
            if not (0 <= first < n_lines and 0 <= last < n_lines):
                kind, msg = (
                    "line_out_of_range",
                    f"remove_lines({first}, {last}) outside 0..{n_lines - 1}",
                )
            elif first > last:
                kind, msg = "reversed_range", f"remove_lines({first}, {last})"
            elif not (lo <= first and last <= hi):
                kind, msg = (
                    "line_outside_window",
                    f"remove_lines({first}, {last}) outside window {lo}..{hi}",
                )
            else:
                plan.ranges.append((first, last))
                continue
            plan.errors.append(ProgramIssue(kind, msg, call.line, w))
        elif name == "normalize":
            source, target = call.str_arg("source_str"), call.str_arg("target_str")
            if source == "":
                plan.errors.append(
                    ProgramIssue("empty_source", "normalize() with empty source_str", call.line, w)
                )
            elif call.args in seen:
                continue  # duplicate calls are applied once
            elif not (_is_valid_unicode(source) and _is_valid_unicode(target)):
                # e.g. "\ud800": a lone surrogate cannot be encoded, so it would fail every writer downstream
                plan.errors.append(
                    ProgramIssue("invalid_unicode", "normalize with a lone surrogate", call.line, w)
                )
            else:
                plan.normalizes.append((w, call.line, source, target))
            seen.add(call.args)
    return plan


def _apply(
    text: str,
    lines: list[str],
    spans: list[tuple[int, int]],
    plans: list[_WindowPlan],
    active: list[int],
    scope: str,
    config: ExecutorConfig,
    work: _Work,
) -> tuple[str, list[tuple[int, int]], list[Edit], dict[int, _Applied]]:
    """The text after the active windows' edits, with the issues found per window (only the
    windows that had any are keys). Raises ``_OverBudget`` past the work budget."""
    applied: dict[int, _Applied] = {}
    edits: list[Edit] = []
    ranges = [r for w in active for r in plans[w].ranges]
    if not ranges and not any(plans[w].normalizes for w in active):
        return text, [], edits, applied  # nothing to do: the common keep_chunk() case
    n_lines = len(lines)
    merged = _merge_ranges(ranges)
    kept = _kept_spans(merged, n_lines)
    kept_ends = [e for _, e in kept]
    if scope == "window":
        # Each window has its share of the document's growth budget, whatever the others do, so
        # that a window's verdict never depends on another's (the roll-back relies on it).
        growth = config.max_growth_chars // max(1, len(spans))
        active_set = set(active)
        segments = []
        covered = 0
        for w, (start, end) in sorted(enumerate(spans), key=lambda x: x[1]):
            if start > covered:  # lines no window covered pass through untouched
                segments.append(_surviving(lines, kept, kept_ends, covered, start - 1))
            segment = _surviving(lines, kept, kept_ends, start, end)
            if segment is not None and w in active_set and plans[w].normalizes:
                segment = _apply_normalizes(
                    segment, plans[w].normalizes, w, applied, edits, config, growth, work
                )
            segments.append(segment)
            covered = end + 1
        if covered < n_lines:
            segments.append(_surviving(lines, kept, kept_ends, covered, n_lines - 1))
        return "\n".join([s for s in segments if s is not None]), merged, edits, applied
    calls, seen = [], set()
    for w in active:  # in window order; a call two windows make is applied once, for the first
        for call in plans[w].normalizes:
            if call[2:] not in seen:
                seen.add(call[2:])
                calls.append(call)
    refined = _surviving(lines, kept, kept_ends, 0, n_lines - 1) or ""
    refined = _apply_normalizes(
        refined, calls, -1, applied, edits, config, config.max_growth_chars, work
    )
    return refined, merged, edits, applied


def _drop_rule(original: str, refined: str, config: ExecutorConfig) -> tuple[bool, str | None]:
    """Drop when at most ``min_words_kept`` words, or at most ``min_word_fraction`` of the
    original's words, remain. Exact, but counts whole texts only in the rare undecided case."""
    # The original has at most (len + 1) // 2 words, so a refined text with more words than
    # this bound's fraction is certainly kept.
    bound = int(config.min_word_fraction * ((len(original) + 1) // 2))
    # One split stopped after k words answers both questions: its length is min(words, k + 1).
    head = len(refined.split(None, max(config.min_words_kept, bound, 0)))
    if head <= config.min_words_kept:
        return True, "too_few_words_after_edits"
    if head <= bound and len(refined.split()) <= config.min_word_fraction * len(original.split()):
        return True, "too_little_text_after_edits"
    return False, None


def _windows_valid(windows: Sequence[tuple[int, int]], n_lines: int) -> bool:
    if len(windows) == 1:  # execute_chunk_program's whole-document window, mostly
        start, end = windows[0]
        return 0 <= start <= end < n_lines
    spans = sorted(windows)
    for i, (start, end) in enumerate(spans):
        if not (0 <= start <= end < n_lines):
            return False
        if i and start <= spans[i - 1][1]:
            return False
    return True


def _merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):  # duplicates merge like overlaps
        if merged and start <= merged[-1][1] + 1:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


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


def _surviving(
    lines: list[str], kept: list[tuple[int, int]], kept_ends: list[int], start: int, end: int
) -> str | None:
    """The lines start..end that survive removal, joined; None when none survive. ``kept`` is
    sorted and disjoint and ``kept_ends`` its ends: bisection finds the first span that reaches
    ``start``, so that each window costs the spans it meets, not all of them."""
    i = bisect_left(kept_ends, start)
    if i == len(kept) or kept[i][0] > end:
        return None
    if kept[i][0] <= start and end <= kept[i][1]:
        return "\n".join(lines[start : end + 1])  # one slice, no list of parts to build
    parts: list[str] = []
    while i < len(kept) and kept[i][0] <= end:
        s, e = kept[i]
        parts += lines[max(s, start) : min(e, end) + 1]
        i += 1
    return "\n".join(parts)


def _is_valid_unicode(text: str) -> bool:
    if text.isascii():  # the common case, without an encoding pass
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _apply_normalizes(
    segment: str,
    calls: Sequence[tuple[int, int, str, str]],
    edit_window: int,
    applied: dict[int, _Applied],
    edits: list[Edit],
    config: ExecutorConfig,
    max_growth: int,
    work: _Work,
) -> str:
    """Apply (window, program line, source, target) calls in order; issues go to their window.
    The segment grows by at most ``max_growth`` characters over all the calls."""
    grown = 0
    for w, line, source, target in calls:
        work.spend(len(segment))  # each call scans the segment (count or replace) once or twice
        shrink = len(source) - len(target)
        if (
            shrink > 0
        ):  # cannot grow: replace at once, the count follows from the lengths (one pass)
            replaced = segment.replace(source, target)
            count = (len(segment) - len(replaced)) // shrink
        else:
            replaced, count = None, segment.count(source)
        if count == 0:
            issues = applied.setdefault(w, _Applied())
            issue = ProgramIssue(
                "source_not_found", f"normalize source {source[:60]!r} not found", line, w
            )
            (issues.errors if config.missing_source_is_error else issues.warnings).append(issue)
            continue
        growth = count * (len(target) - len(source))
        if grown + growth > max_growth:
            issues = applied.setdefault(w, _Applied())
            issues.errors.append(
                ProgramIssue(
                    "normalize_growth",
                    f"would add {growth} chars ({grown} added before; limit {max_growth})",
                    line,
                    w,
                )
            )
            continue
        if replaced is None:
            work.spend(len(segment))
            replaced = segment.replace(source, target)
        grown += max(0, growth)
        segment = replaced
        edits.append(
            Edit("normalize", source=source, target=target, count=count, window=edit_window)
        )
    return segment
