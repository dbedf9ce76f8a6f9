"""Chunk-level annotators: who writes the target program of a line-numbered window
(docs/methods.md#sft-synthesis).

- ``gold_program``: distant supervision, the program that removes exactly the noise lines of a
  page with gold line labels (``core.real_pairs``: the docs' layout gold). The preferred source.
- ``RuleAnnotator``: the fallback for pages without gold: boilerplate line rules in the spirit of the C4, Gopher and FineWeb line
  filters (cookie and legal notices, share/sign-in/read-more links, menus of short bullets or
  pipe-separated items, bare URLs), plus lines repeated across many documents of the same shard
  (site navigation and footers), plus a few noisy strings to ``normalize`` (Sphinx pilcrows,
  "[edit]" markers, non-breaking spaces). Cheap and deterministic.
- ``llm_annotate``: a model with one few-shot prompt per noise type (navigation; links and
  buttons; footers and references); the programs of the three prompts are merged per window.

Every program is validated with the program language before it may become a training target.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prox_assets.core.chunking import Window, split_lines
from prox_assets.core.programs import Call, parse_program

KEEP = "keep_chunk()"

_PHRASES = re.compile(
    r"cookie|javascript|privacy policy|terms of (use|service)|all rights reserved|copyright|©|"
    r"\bsign (in|up)\b|\blog ?in\b|subscribe|newsletter|share (on|this)|follow us|read more|"
    r"click here|advertisement|skip to (main )?content|back to top|previous topic|next topic|"
    r"report a bug|show source|found a bug|last updated|created using sphinx|"
    r"related articles|most popular|trending now|feedback",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*(?:[•·▪◦*\-–»›]|\d+\.)\s+")
_URL_ONLY = re.compile(r"^\s*(?:https?://|www\.)\S+\s*$", re.IGNORECASE)
_END_PUNCT = re.compile(r"[.!?:;\"')\]]\s*$")
NORMALIZE_STRINGS = {"¶": "", "[edit]": "", "\u00a0": " ", "\u200b": ""}


def _key(line: str) -> str:
    return re.sub(r"\s+", " ", line.strip().lower())


@dataclass
class RuleAnnotator:
    """Flags boilerplate lines of a shard's documents; see the module docstring."""

    repeated_lines: frozenset[str] = frozenset()
    max_words_phrase_line: int = 25
    max_words_menu_item: int = 6

    @classmethod
    def for_shard(
        cls, texts: Iterable[str], min_docs: int = 3, min_fraction: float = 0.02
    ) -> RuleAnnotator:
        """Lines (case- and space-normalised) that occur in many documents of the shard."""
        counts: Counter[str] = Counter()
        n_docs = 0
        for text in texts:
            n_docs += 1
            counts.update({_key(ln) for ln in split_lines(text) if ln.strip()})
        threshold = max(min_docs, int(min_fraction * n_docs))
        return cls(frozenset(k for k, c in counts.items() if c >= threshold))

    def line_reason(self, line: str) -> str | None:
        stripped = line.strip()
        if not stripped:
            return None
        words = stripped.split()
        if _URL_ONLY.match(line):
            return "url"
        if len(words) <= self.max_words_phrase_line and _PHRASES.search(line):
            return "boilerplate_phrase"
        if stripped.count("|") >= 2 and len(words) <= 4 * (stripped.count("|") + 1):
            return "menu_bar"
        if (
            _BULLET.match(line)
            and len(words) <= self.max_words_menu_item
            and not _END_PUNCT.search(line)
        ):
            return "menu_item"
        if (
            _key(line) in self.repeated_lines and len(words) < 40
        ):  # last: the rules above need no block
            return "repeated_in_shard"
        return None

    def annotate(self, text: str, window: Window) -> str:
        """The program for one window (global line numbers), or keep_chunk()."""
        lines = split_lines(text)
        span = range(window.line_start, window.line_end + 1)
        # a few lines past the window's edges, so a block cut by the window still counts as a block
        reasons = {
            i: self.line_reason(lines[i])
            for i in range(max(0, window.line_start - 8), min(len(lines), window.line_end + 9))
        }
        flagged = [
            reasons[i] is not None
            and (reasons[i] != "repeated_in_shard" or _in_block(reasons, lines, i))
            for i in span
        ]
        return program_for_flags(lines, flagged, window)


def _in_block(reasons: dict[int, str | None], lines: Sequence[str], i: int) -> bool:
    """A repeated line counts as boilerplate only next to another flagged line (blank lines
    skipped): menus and footers come in blocks, while a lone "Note", "See also" or
    "New in version 3.2." repeats across a docs shard inside the body."""
    for step in (-1, 1):
        j = i + step
        while j in reasons and not lines[j].strip():
            j += step
        if reasons.get(j) is not None:
            return True
    return False


def program_for_flags(lines: Sequence[str], flagged: Sequence[bool], window: Window) -> str:
    """remove_lines for the runs of flagged lines of ``window``, a normalize for each noisy
    string left in its kept lines, or keep_chunk()."""
    calls = [
        f"remove_lines(line_start={s}, line_end={e})"
        for s, e in _ranges(flagged, window.line_start, lines)
    ]
    kept_text = "\n".join(
        lines[i] for i, f in zip(range(window.line_start, window.line_end + 1), flagged) if not f
    )
    for source, target in NORMALIZE_STRINGS.items():
        if source in kept_text:
            calls.append(
                Call("normalize", (("source_str", source), ("target_str", target))).render()
            )
    return "\n".join(calls) if calls else KEEP


def gold_program(text: str, labels: Sequence[bool | None], window: Window) -> str:
    """The program a perfect refiner writes for ``window`` of a page with gold line labels."""
    span = range(window.line_start, window.line_end + 1)
    return program_for_flags(split_lines(text), [labels[i] is False for i in span], window)


def _ranges(flagged: Sequence[bool], offset: int, lines: Sequence[str]) -> list[tuple[int, int]]:
    """Runs of flagged lines; blank lines between two flagged lines join their runs."""
    out: list[list[int]] = []
    pending_blank: list[int] = []
    for j, f in enumerate(flagged):
        i = offset + j
        if f:
            if (out and pending_blank and pending_blank[0] == out[-1][1] + 1) or (
                out and out[-1][1] == i - 1
            ):
                out[-1][1] = i
            else:
                out.append([i, i])
            pending_blank = []
        elif not lines[i].strip() and out and (out[-1][1] == i - 1 or pending_blank):
            pending_blank.append(i)
        else:
            pending_blank = []
    return [(s, e) for s, e in out]


def merge_programs(programs: Iterable[str]) -> str:
    """One program from several (the LLM annotator's per-noise-type answers): the union of
    their removals and normalizations, parse errors dropped, keep_chunk() if nothing is left."""
    ranges: set[tuple[int, int]] = set()
    normalizes: list[Call] = []
    for program in programs:
        for call in parse_program(program, "chunk").calls:
            if call.name == "remove_lines":
                ranges.add((call.int_arg("line_start"), call.int_arg("line_end")))
            elif call.name == "normalize" and all(c.args != call.args for c in normalizes):
                normalizes.append(call)
    calls = [f"remove_lines(line_start={s}, line_end={e})" for s, e in sorted(ranges)]
    calls += [c.render() for c in normalizes]
    return "\n".join(calls) if calls else KEEP


def validate_chunk_program(
    program: str, text: str, window: Window, max_removal_ratio: float | None
) -> str | None:
    """None when ``program`` may be a training target for ``window``, else the reason it may not.
    ``max_removal_ratio`` caps what heuristic labels may remove; gold-derived labels have none."""
    parsed = parse_program(program, "chunk")
    if parsed.errors:
        return f"parse_error:{parsed.errors[0].kind}"
    if parsed.warnings:  # a target must be the canonical program, not a truncated or renamed one
        return f"parse_warning:{parsed.warnings[0].kind}"
    if not parsed.calls:
        return "empty_program"
    all_lines = split_lines(text)
    lines = all_lines[window.line_start : window.line_end + 1]
    window_text = "\n".join(lines)
    removed: set[int] = set()
    for call in parsed.calls:
        if call.name == "remove_lines":
            s, e = call.int_arg("line_start"), call.int_arg("line_end")
            if not (window.line_start <= s <= e <= window.line_end):
                return "lines_outside_window"
            removed.update(range(s, e + 1))
        elif call.name == "normalize" and call.str_arg("source_str") not in window_text:
            return "normalize_source_not_in_window"
    non_blank = sum(1 for ln in lines if ln.strip()) or 1
    ratio = sum(1 for i in removed if all_lines[i].strip()) / non_blank
    if max_removal_ratio is not None and ratio > max_removal_ratio:
        return "removal_ratio_above_cap"
    return None


def llm_annotate(backend, windows: Sequence[str], max_new_tokens: int = 96) -> list[str]:
    """One merged program per window from the three few-shot noise-type prompts."""
    from prox_assets.core.prompts import NOISE_TYPES, annotator_chat

    chats = [annotator_chat(kind, w) for w in windows for kind in NOISE_TYPES]
    answers = backend.generate(chats, max_new_tokens=max_new_tokens)
    k = len(NOISE_TYPES)
    return [merge_programs(answers[i * k : (i + 1) * k]) for i in range(len(windows))]


def annotate_windows(
    text: str, windows: Sequence[Window], annotator: str, rules: RuleAnnotator, backend=None
) -> list[str]:
    """One program per window of ``text`` from the ``rules`` (``annotator`` "rules"), the LLM
    ``backend`` ("llm") or both merged per window ("both")."""
    programs = [rules.annotate(text, w) for w in windows] if annotator != "llm" else []
    if backend is not None:
        llm = llm_annotate(backend, [w.text for w in windows])
        programs = llm if annotator == "llm" else [merge_programs(p) for p in zip(programs, llm)]
    return programs
