"""The chunker: [NNN] numbering, greedy packing by tokens, over-long lines."""

import itertools

import pytest

from prox_assets.core.chunking import (
    chunk_document,
    hf_token_counter,
    number_line,
    whitespace_token_counter,
)
from prox_assets.core.executor import execute_chunk_programs


def test_numbering_is_global_zero_based_three_digits():
    assert number_line(0, "x") == "[000]x"
    assert number_line(42, " y") == "[042] y"
    assert number_line(1234, "z") == "[1234]z"


def test_greedy_packing_and_global_numbers():
    text = "\n".join(f"line number {i} " + "w" * 40 for i in range(30))
    windows = chunk_document(text, whitespace_token_counter, max_tokens=80)
    assert len(windows) > 3
    assert windows[0].line_start == 0 and windows[-1].line_end == 29
    for prev, nxt in itertools.pairwise(windows):
        assert nxt.line_start == prev.line_end + 1
    second = windows[1]
    assert second.text.split("\n")[1].startswith(
        f"[{second.line_start:03d}]line number {second.line_start} "
    )
    assert all(w.n_tokens <= 80 for w in windows)
    # greedy: adding the next line would have overflowed the window
    costs = whitespace_token_counter([f"[{i:03d}]" + text.split("\n")[i] for i in range(30)])
    first = windows[0]
    used = sum(c + 1 for c in costs[first.line_start : first.line_end + 1])
    assert (
        used + costs[first.line_end + 1] + 1 > 80 - whitespace_token_counter(["[doc]\n\n[/doc]"])[0]
    )


def test_overlong_line_gets_its_own_truncated_window_and_stays_removable():
    long_line = "spam " * 500
    text = "\n".join(["intro line", long_line, "after line one", "after line two"])
    windows = chunk_document(text, whitespace_token_counter, max_tokens=60)
    alone = [w for w in windows if 1 in w.truncated_lines]
    assert len(alone) == 1 and alone[0].line_start == alone[0].line_end == 1
    assert alone[0].n_tokens <= 60 and alone[0].text.split("\n")[1].endswith(" …")
    programs = [
        (w.line_start, w.line_end, "remove_lines(1, 1)" if w is alone[0] else "keep_chunk()")
        for w in windows
    ]
    r = execute_chunk_programs(text, programs)
    assert r.text == "intro line\nafter line one\nafter line two"


def test_empty_document_is_one_window():
    windows = chunk_document("", whitespace_token_counter)
    assert [(w.line_start, w.line_end) for w in windows] == [(0, 0)]


def test_too_small_budget_is_rejected():
    with pytest.raises(ValueError):
        chunk_document("x", whitespace_token_counter, max_tokens=3)


def test_with_a_real_tokenizer(tiny_tokenizer):
    text = "\n".join(f"Sentence {i} about rivers and rain." for i in range(200))
    count = hf_token_counter(tiny_tokenizer)
    windows = chunk_document(text, count, max_tokens=256)
    assert len(windows) > 1
    for w in windows:
        assert (
            len(tiny_tokenizer(w.text, add_special_tokens=False)["input_ids"]) <= 256 + 8
        )  # BPE merges across lines
