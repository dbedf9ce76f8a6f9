"""Line numbering and window packing for the chunk-level refiner
(docs/methods.md#line-numbering-and-windows).

A document's lines are numbered ``[NNN]`` (0-based, global across the document, at least three
digits, no space after ``]``) and packed greedily, in order and without overlap, into windows of
at most ``max_tokens`` tokens of the refiner's own tokenizer, each wrapped as
``[doc]\\n…\\n[/doc]``. Lines are ``text.split("\\n")`` everywhere in this project, so that
joining them back gives exactly the original text.

A line too long for any window gets a window of its own and is shown truncated (a prefix that
fits, then `` …``); it stays addressable by its number, so the refiner can still remove it, and a
``normalize`` of text in the visible prefix still applies to the full line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

TokenCounter = Callable[[Sequence[str]], list[int]]

DOC_OPEN, DOC_CLOSE = "[doc]", "[/doc]"
TRUNCATION_MARK = " …"

# The input sizes of the refiners, in tokens of their tokenizer: the one default of every place
# that sizes a window or a document (sft_programs' config, a refiner evaluated on an SFT set that
# predates the setting, benchmarks on the base model). The paper's windows are ~1500 tokens;
# shorter ones train faster on CPUs (sft_programs config ``window_tokens`` raises them).
DEFAULT_WINDOW_TOKENS = 384
DEFAULT_DOC_MAX_TOKENS = 384  # the document refiner sees this many tokens of a document


def split_lines(text: str) -> list[str]:
    return text.split("\n")


def number_line(index: int, line: str) -> str:
    return f"[{index:03d}]{line}"


_NUMBERED_CONTENT = re.compile(r"^\[(\d+)\].*\S", re.MULTILINE)


def content_line_numbers(window_text: str) -> set[int]:
    """The numbers of the non-blank lines a window shows (the inverse of ``number_line``)."""
    return {int(m.group(1)) for m in _NUMBERED_CONTENT.finditer(window_text)}


@dataclass(frozen=True)
class Window:
    index: int
    line_start: int  # inclusive, document-global
    line_end: int  # inclusive, document-global
    text: str  # what the refiner sees: [doc]\n[NNN]line\n…\n[/doc]
    n_tokens: int
    truncated_lines: tuple[int, ...] = ()


def hf_token_counter(tokenizer) -> TokenCounter:
    """Count tokens with a Hugging Face tokenizer (batched, no special tokens)."""

    def count(texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(x) for x in ids]

    return count


def whitespace_token_counter(texts: Sequence[str]) -> list[int]:
    """A tokenizer-free stand-in for tests and benchmarks: one token per 4 characters."""
    return [len(t) // 4 + 1 for t in texts]


def _truncate_to_fit(numbered: str, budget: int, count: TokenCounter) -> tuple[str, int]:
    """Longest prefix of ``numbered`` (plus the mark) that fits ``budget`` tokens; binary search."""
    lo, hi = 0, len(numbered)
    best = (numbered[:0] + TRUNCATION_MARK, count([TRUNCATION_MARK])[0])
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = numbered[:mid] + TRUNCATION_MARK
        n = count([candidate])[0]
        if n <= budget:
            best = (candidate, n)
            lo = mid + 1
        else:
            hi = mid - 1
    return best


def chunk_document(
    text: str, count_tokens: TokenCounter, max_tokens: int = DEFAULT_WINDOW_TOKENS
) -> list[Window]:
    """Pack the numbered lines of ``text`` into windows of at most ``max_tokens`` tokens."""
    lines = split_lines(text)
    numbered = [number_line(i, line) for i, line in enumerate(lines)]
    overhead = count_tokens([f"{DOC_OPEN}\n\n{DOC_CLOSE}"])[0]
    budget = max_tokens - overhead
    if budget < 8:
        raise ValueError(f"max_tokens={max_tokens} leaves no room for lines")
    # +1 per line for the newline that joins it to the next.
    costs = [c + 1 for c in count_tokens(numbered)]

    windows: list[Window] = []
    shown: list[str] = []
    truncated: list[int] = []
    start, used = 0, 0

    def close(end: int) -> None:
        body = "\n".join(shown)
        windows.append(
            Window(
                index=len(windows),
                line_start=start,
                line_end=end,
                text=f"{DOC_OPEN}\n{body}\n{DOC_CLOSE}",
                n_tokens=used + overhead,
                truncated_lines=tuple(truncated),
            )
        )

    for i, cost in enumerate(costs):
        if shown and used + cost > budget:
            close(i - 1)
            shown, start, used, truncated = [], i, 0, []
        if cost > budget:  # alone in its window, shown truncated
            shown_line, n = _truncate_to_fit(numbered[i], budget - 1, count_tokens)
            shown.append(shown_line)
            used = n + 1
            truncated.append(i)
            close(i)
            shown, start, used, truncated = [], i + 1, 0, []
            continue
        shown.append(numbered[i])
        used += cost
    if shown:
        close(len(lines) - 1)
    return windows


def truncate_to_tokens(text: str, tokenizer, max_tokens: int) -> str:
    """The first ``max_tokens`` tokens of ``text`` (what a refiner with that budget sees)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])
