"""Errors are counted per window, as ProX counts them per chunk: a bad window is ignored alone."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prox_assets.core.chunking import chunk_document, whitespace_token_counter
from prox_assets.core.executor import ExecutorConfig, execute_chunk_program, execute_chunk_programs

# 12 lines of 8 words, so that removals never trigger the drop rule by accident.
LINES = [f"line{i} " + " ".join(f"w{i}_{k}" for k in range(7)) for i in range(12)]
TEXT = "\n".join(LINES)
W0, W1, W2 = (0, 3), (4, 7), (8, 11)


def run(programs, config=ExecutorConfig(), spans=(W0, W1, W2)):
    return execute_chunk_programs(TEXT, [(s, e, p) for (s, e), p in zip(spans, programs)], config)


def test_errors_do_not_accumulate_across_windows():
    # one error per window: before, 2 errors in the document ignored every program
    r = run(["remove_lines(0, 0)\nbogus(", "remove_lines(4, 4)\nalso bogus(", "keep_chunk()"])
    assert not r.ignored and r.ignored_windows == []
    assert r.text.split("\n") == LINES[1:4] + LINES[5:]
    assert [(e.kind, e.window) for e in r.errors] == [("syntax", 0), ("syntax", 1)]


def test_a_window_with_too_many_errors_is_ignored_alone():
    r = run(["remove_lines(0, 0)", "remove_lines(4, 4)\nbogus(\njunk(", "remove_lines(11, 11)"])
    assert r.ignored_windows == [1] and not r.ignored
    assert r.text.split("\n") == LINES[1:11]  # line 4 kept: its window was ignored
    assert [(e.line_start, e.line_end) for e in r.edits] == [(0, 0), (11, 11)]
    assert {e.window for e in r.errors} == {1}
    d = r.to_dict()
    assert d["ignored_windows"] == [1] and d["errors"][0]["window"] == 1


def test_fatal_parse_ignores_only_its_window():
    from prox_assets.core.programs import Limits

    config = ExecutorConfig(limits=Limits(max_calls=3))
    r = run(["remove_lines(0, 0)", "keep_chunk()\n" * 5, "keep_chunk()"], config)
    assert r.ignored_windows == [1] and not r.ignored and r.text.split("\n") == LINES[1:]


def test_every_window_with_calls_ignored_means_ignored():
    r = run(["bogus(\njunk(", "remove_lines(4, 4)\nx(\ny(", ""])  # the empty program has no calls
    assert r.ignored and r.ignored_windows == [0, 1] and r.text == TEXT and r.edits == []
    single = execute_chunk_program(TEXT, "remove_lines(0, 1)\nbogus(\njunk(")
    assert single.ignored and single.ignored_windows == [0] and single.text == TEXT


def test_remove_lines_outside_its_own_window_is_an_error_of_that_window():
    r = run(["remove_lines(5, 6)", "remove_lines(3, 4)", "remove_lines(8, 8)"])
    assert [(e.kind, e.window) for e in r.errors] == [
        ("line_outside_window", 0),
        ("line_outside_window", 1),
    ]
    assert r.text.split("\n") == LINES[:8] + LINES[9:]  # only window 2's removal applied
    # the document-wide kinds keep precedence
    r = run(["remove_lines(50, 60)", "remove_lines(7, 5)", "keep_chunk()"])
    assert [(e.kind, e.window) for e in r.errors] == [
        ("line_out_of_range", 0),
        ("reversed_range", 1),
    ]
    # two lines outside the window: that window is ignored
    r = run(
        [
            "remove_lines(0, 0)\nremove_lines(5, 5)\nremove_lines(9, 9)",
            "keep_chunk()",
            "keep_chunk()",
        ]
    )
    assert r.ignored_windows == [0] and r.text == TEXT


def test_overlapping_windows_check_ranges_against_the_document():
    spans = [(0, 5), (4, 11)]  # overlap: document scope, as before
    r = run(["remove_lines(0, 0)\nremove_lines(9, 9)", "remove_lines(1, 1)"], spans=spans)
    assert [w.kind for w in r.warnings] == ["bad_windows"] and r.errors == []
    assert r.text.split("\n") == LINES[2:9] + LINES[10:]
    # errors still count per window
    r = run(["remove_lines(0, 0)", "remove_lines(1, 1)\nbogus(\njunk("], spans=spans)
    assert r.ignored_windows == [1] and r.text.split("\n") == LINES[1:]


def test_normalize_errors_while_applying_roll_back_their_window():
    big = "x" * 200
    config = ExecutorConfig(max_growth_chars=100)
    r = run(
        [
            "remove_lines(0, 0)",
            f'remove_lines(4, 4)\nnormalize("w5_1", "{big}")\nbogus(',
            'normalize("w9_1", "N")',
        ],
        config,
    )
    assert r.ignored_windows == [1] and not r.ignored
    assert [(e.kind, e.window) for e in r.errors] == [("syntax", 1), ("normalize_growth", 1)]
    out = r.text.split("\n")
    assert out[:7] == LINES[1:8]  # window 1 changed nothing: line 4 kept, no normalize
    assert out[7] == LINES[8] and out[8] == LINES[9].replace("w9_1", "N")
    assert [e.kind for e in r.edits] == ["remove_lines", "normalize"] and r.edits[1].window == 2


def test_missing_source_as_error_counts_toward_its_window():
    config = ExecutorConfig(missing_source_is_error=True)
    r = run(
        [
            "remove_lines(0, 0)",
            'normalize("absent", "")\nremove_lines(5, 5)\nbogus(',
            'normalize("w8_0", "Z")',
        ],
        config,
    )
    assert r.ignored_windows == [1]
    assert r.text.split("\n") == LINES[1:8] + [LINES[8].replace("w8_0", "Z")] + LINES[9:]
    # a source in another window is missing from this one, since normalize is per window
    r = run(['normalize("w8_0", "Z")\nbogus(', "keep_chunk()", "keep_chunk()"], config)
    assert r.ignored_windows == [0] and r.text == TEXT


def test_document_scope_roll_back_reapplies_the_other_windows():
    config = ExecutorConfig(normalize_scope="document", max_growth_chars=100)
    big = "y" * 200
    # window 1's normalize would grow every line ("line" is in all of them): window 1 is rolled back
    r = run(
        [
            'normalize("w2_3", "T")',
            f'normalize("line", "{big}")\nbogus(',
            'normalize("w2_3", "T")\nremove_lines(8, 8)',
        ],
        config,
    )
    assert r.ignored_windows == [1]
    out = r.text.split("\n")
    assert out[2] == LINES[2].replace("w2_3", "T") and len(out) == 11 and LINES[8] not in out
    assert [e.count for e in r.edits if e.kind == "normalize"] == [1]  # the duplicate applied once


def test_invalid_unicode_counts_toward_its_window():
    r = run(
        [
            "remove_lines(0, 0)",
            'normalize("w5_1", "\\ud800")\nremove_lines(6, 6)\nbogus(',
            "keep_chunk()",
        ]
    )
    assert r.ignored_windows == [1] and r.text.split("\n") == LINES[1:]
    assert [e.kind for e in r.errors] == ["syntax", "invalid_unicode"]  # parse errors first
    r.text.encode("utf-8")


def test_parse_warnings_carry_their_window():
    r = run(
        ["keep_chunk()", "remove_lines(start=4, end=4)", "remove_lines(8, 8)\nremove_lines(9, 1"]
    )
    assert [(w.kind, w.window) for w in r.warnings] == [
        ("renamed_argument", 1),
        ("renamed_argument", 1),
        ("truncated_call", 2),
    ]
    assert r.text.split("\n") == LINES[:4] + LINES[5:8] + LINES[9:]


# --- properties --------------------------------------------------------------------------------
lines_st = st.lists(
    st.sampled_from(["alpha beta", "gamma", "", "delta alpha", "x y z", "alpha"]),
    min_size=1,
    max_size=25,
)
stmt_st = st.one_of(
    st.tuples(st.integers(-2, 27), st.integers(-2, 27)).map(
        lambda t: f"remove_lines({t[0]}, {t[1]})"
    ),
    st.sampled_from(
        [
            'normalize("alpha", "A")',
            'normalize("gamma", "' + "g" * 40 + '")',
            'normalize("zzz", "")',
            "keep_chunk()",
            "bogus(",
            'normalize("", "x")',
            "remove_lines(start=1, end=2)",
            "remove_lines(3, 4",
        ]
    ),
)
program_st = st.lists(stmt_st, max_size=4).map("\n".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines_st.map("\n".join),
    st.integers(12, 40),
    st.data(),
    st.sampled_from(["window", "document"]),
    st.booleans(),
)
def test_ignored_windows_change_nothing(text, max_tokens, data, scope, missing_is_error):
    """The result is the one of the same run with the ignored windows' programs left out, and
    every window's verdict follows its own error count."""
    windows = chunk_document(text, whitespace_token_counter, max_tokens=max_tokens)
    spans = [(w.line_start, w.line_end) for w in windows]
    if data.draw(st.booleans()) and len(spans) > 1:  # sometimes overlapping windows
        spans[1] = (max(0, spans[1][0] - 1), spans[1][1])
    progs = [data.draw(program_st) for _ in spans]
    config = ExecutorConfig(
        normalize_scope=scope,
        max_growth_chars=30,
        min_words_kept=0,
        min_word_fraction=0,
        missing_source_is_error=missing_is_error,
    )
    r = execute_chunk_programs(text, [(s, e, p) for (s, e), p in zip(spans, progs)], config)
    errors_of = {w: sum(e.window == w for e in r.errors) for w in range(len(spans))}
    for w in range(len(spans)):
        assert (errors_of[w] >= config.max_errors) == (w in r.ignored_windows)
    without = [
        (s, e, "" if w in r.ignored_windows else p)
        for w, ((s, e), p) in enumerate(zip(spans, progs))
    ]
    again = execute_chunk_programs(text, without, config)
    assert again.text == r.text and again.ignored_windows == []
    if r.ignored:
        assert r.text == text and r.edits == []
